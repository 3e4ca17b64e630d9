using System.Collections.Immutable;
using System.Globalization;
using System.Text;
using System.Threading.Channels;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Options;
using Npgsql;
using NpgsqlTypes;
using Switchboard.Server;
using Switchboard.Server.Nodes;
using Switchboard.Server.Storage;

namespace Switchboard.Storage.Postgres;

/// <summary>
/// Node-to-node fan-out over PostgreSQL LISTEN/NOTIFY. Every node LISTENs on one shared channel with one dedicated
/// connection. A publish becomes exactly one NOTIFY (whatever the number of subscribers and nodes), sent by a single
/// writer in batches (one transaction per batch), so messages of one node arrive everywhere in the order it sent them.
/// Payloads whose encoding exceeds <see cref="PostgresBusOptions.InlineLimit"/> are stored in <c>bus_payloads</c> and
/// the NOTIFY carries only their id. When the listening connection drops, the bus reconnects with backoff and then runs
/// every <see cref="IBusCatchUp"/>, so subscribers re-read from the store what was published while it was deaf.
/// </summary>
/// <remarks>
/// Wire format of a notification (text, since NOTIFY payloads are text):
/// <c>i{ticks};{nodeLength};{node}{topicLength};{topic}{base64 payload}</c> inline, or <c>t{id}</c> for a stored payload.
/// <c>ticks</c> is the publisher's UTC clock, used for the bus lag histogram.
/// </remarks>
public sealed partial class PostgresBus : IMessageBus, IHostedService, IAsyncDisposable
{
    public static readonly PostgresMigration[] Migrations =
    [
        new("bus-001", """
            CREATE TABLE bus_payloads (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, source_node text NOT NULL, topic text NOT NULL,
                payload bytea NOT NULL, published_ticks bigint NOT NULL, created_at timestamptz NOT NULL DEFAULT now());
            CREATE INDEX ix_bus_payloads_created ON bus_payloads (created_at);
            """),
    ];

    private readonly PostgresDatabase _db;
    private readonly PostgresBusOptions _options;
    private readonly BusMetrics _metrics;
    private readonly IServiceProvider _services;
    private readonly ILogger _logger;
    private readonly TimeProvider _time;
    private readonly Channel<Outgoing> _outgoing;
    private readonly Channel<string?> _incoming; // null = run the catch-up hooks
    private readonly CancellationTokenSource _stopping = new();
    private readonly TaskCompletionSource _listening = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private readonly Lock _gate = new();
    private ImmutableArray<Subscription> _subscriptions = [];
    private Task _listener = Task.CompletedTask;
    private Task _writer = Task.CompletedTask;
    private Task _dispatcher = Task.CompletedTask;
    private Task _cleaner = Task.CompletedTask;
    private int _started;
    private int _stopped;

    public PostgresBus(PostgresDatabase db, IOptions<SwitchboardOptions> options, IOptions<PostgresBusOptions> busOptions, BusMetrics metrics,
        IServiceProvider services, ILogger<PostgresBus> logger, TimeProvider time)
    {
        _db = db;
        _options = busOptions.Value;
        _metrics = metrics;
        _services = services;
        _logger = logger;
        _time = time;
        NodeId = options.Value.NodeId;
        _outgoing = Channel.CreateBounded<Outgoing>(new BoundedChannelOptions(_options.SendQueueCapacity) { SingleReader = true, FullMode = BoundedChannelFullMode.Wait });
        _incoming = Channel.CreateBounded<string?>(new BoundedChannelOptions(_options.ReceiveQueueCapacity) { SingleReader = true, SingleWriter = true, FullMode = BoundedChannelFullMode.Wait });
    }

    public string NodeId { get; }

    private volatile bool _isListening;
    private volatile int _listenerProcessId;
    private int _reconnects;

    /// <summary>True while the listening connection is up.</summary>
    public bool IsListening => _isListening;

    /// <summary>Times the listening connection was re-established after a drop.</summary>
    public int Reconnects => Volatile.Read(ref _reconnects);

    /// <summary>Backend process id of the listening connection (0 when down), for diagnostics and fault tests.</summary>
    public int ListenerProcessId => _listenerProcessId;

    public ValueTask PublishAsync(string topic, ReadOnlyMemory<byte> payload, CancellationToken cancellationToken)
    {
        var item = new Outgoing(topic, payload.ToArray(), _time.GetUtcNow().UtcTicks);
        return _outgoing.Writer.TryWrite(item) ? ValueTask.CompletedTask : _outgoing.Writer.WriteAsync(item, cancellationToken);
    }

    public IDisposable Subscribe(string topic, Func<BusMessage, CancellationToken, ValueTask> handler)
    {
        var prefix = topic.EndsWith('*');
        var entry = new Subscription(prefix ? topic[..^1] : topic, prefix, handler);
        lock (_gate)
            _subscriptions = _subscriptions.Add(entry);
        return new Unsubscriber(this, entry);
    }

    /// <summary>Starts listening; completes once the first LISTEN succeeded, so nothing published after start-up is missed.</summary>
    public async Task StartAsync(CancellationToken cancellationToken)
    {
        if (Interlocked.Exchange(ref _started, 1) == 1)
            return;
        var stop = _stopping.Token;
        _listener = Task.Run(() => ListenLoopAsync(stop), CancellationToken.None);
        _writer = Task.Run(() => WriteLoopAsync(stop), CancellationToken.None);
        _dispatcher = Task.Run(() => DispatchLoopAsync(stop), CancellationToken.None);
        _cleaner = Task.Run(() => CleanLoopAsync(stop), CancellationToken.None);
        await _listening.Task.WaitAsync(cancellationToken);
    }

    /// <summary>Flushes what is queued for sending (bounded by <paramref name="cancellationToken"/>), then stops.</summary>
    public async Task StopAsync(CancellationToken cancellationToken)
    {
        if (Interlocked.Exchange(ref _stopped, 1) == 1)
            return;
        _outgoing.Writer.TryComplete();
        try
        {
            await _writer.WaitAsync(TimeSpan.FromSeconds(5), cancellationToken);
        }
        catch (Exception ex) when (ex is TimeoutException or OperationCanceledException)
        {
        }
        await _stopping.CancelAsync();
        _incoming.Writer.TryComplete();
        try
        {
            await Task.WhenAll(_listener, _writer, _dispatcher, _cleaner).WaitAsync(TimeSpan.FromSeconds(5), CancellationToken.None);
        }
        catch (Exception ex) when (ex is TimeoutException or OperationCanceledException)
        {
        }
    }

    /// <summary>Stops the bus if still running. Idempotent: the bus is registered under several service types.</summary>
    public async ValueTask DisposeAsync() => await StopAsync(CancellationToken.None);

    private async Task ListenLoopAsync(CancellationToken stop)
    {
        var delay = _options.ReconnectMinDelay;
        var everListened = false;
        var received = new List<string>();
        while (!stop.IsCancellationRequested)
        {
            try
            {
                await using var connection = _db.DataSource.CreateConnection();
                connection.Notification += (_, e) => received.Add(e.Payload);
                await connection.OpenAsync(stop);
                await PostgresDatabase.ExecAsync(connection, "LISTEN " + QuoteIdentifier(_options.Channel), stop);
                _listenerProcessId = connection.ProcessID;
                _isListening = true;
                delay = _options.ReconnectMinDelay;
                if (everListened)
                {
                    Interlocked.Increment(ref _reconnects);
                    _metrics.Reconnected();
                    Log.Reconnected(_logger, _options.Channel);
                    // Everything published while deaf is in the store: subscribers catch up after LISTEN is back.
                    await _incoming.Writer.WriteAsync(null, stop);
                }
                everListened = true;
                _listening.TrySetResult();
                while (!stop.IsCancellationRequested)
                {
                    if (!await connection.WaitAsync(_options.ListenProbeInterval, stop))
                        await PostgresDatabase.ExecAsync(connection, "SELECT 1", stop);
                    foreach (var payload in received)
                        await _incoming.Writer.WriteAsync(payload, stop);
                    received.Clear();
                }
            }
            catch (OperationCanceledException) when (stop.IsCancellationRequested)
            {
                break;
            }
            catch (Exception ex)
            {
                _isListening = false;
                _listenerProcessId = 0;
                // Notifications read before the failure are still delivered.
                foreach (var payload in received)
                    _incoming.Writer.TryWrite(payload);
                received.Clear();
                Log.ListenFailed(_logger, ex, delay.TotalMilliseconds);
                try
                {
                    await Task.Delay(delay, _time, stop);
                }
                catch (OperationCanceledException)
                {
                    break;
                }
                delay = TimeSpan.FromTicks(Math.Min(delay.Ticks * 2, _options.ReconnectMaxDelay.Ticks));
            }
        }
        _isListening = false;
        _listening.TrySetCanceled(CancellationToken.None);
    }

    private async Task WriteLoopAsync(CancellationToken stop)
    {
        var batch = new List<Outgoing>(_options.MaxBatch);
        var reader = _outgoing.Reader;
        try
        {
            while (await reader.WaitToReadAsync(stop))
            {
                while (batch.Count < _options.MaxBatch && reader.TryRead(out var item))
                    batch.Add(item);
                for (var attempt = 1; ; attempt++)
                {
                    try
                    {
                        await SendAsync(batch, stop);
                        break;
                    }
                    catch (Exception ex) when (ex is not OperationCanceledException || !stop.IsCancellationRequested)
                    {
                        if (attempt >= _options.SendAttempts)
                        {
                            Log.SendDropped(_logger, ex, batch.Count);
                            break;
                        }
                        Log.SendRetry(_logger, ex, attempt);
                        await Task.Delay(_options.ReconnectMinDelay * attempt, _time, stop);
                    }
                }
                batch.Clear();
            }
        }
        catch (OperationCanceledException) when (stop.IsCancellationRequested)
        {
        }
    }

    private async Task SendAsync(List<Outgoing> items, CancellationToken cancellationToken)
    {
        await using var connection = await _db.OpenAsync(cancellationToken);
        await using var batch = new NpgsqlBatch(connection);
        var viaTable = new bool[items.Count];
        for (var i = 0; i < items.Count; i++)
        {
            var item = items[i];
            var inline = EncodeInline(item.Ticks, NodeId, item.Topic, item.Payload);
            // The NOTIFY limit is in bytes; base64 and ASCII names are one byte per character, other names may not be.
            if (inline.Length <= _options.InlineLimit && (inline.Length * 3 <= _options.InlineLimit || Encoding.UTF8.GetByteCount(inline) <= _options.InlineLimit))
            {
                batch.BatchCommands.Add(new NpgsqlBatchCommand("SELECT pg_notify($1, $2)") { Parameters = { new() { Value = _options.Channel }, new() { Value = inline } } });
            }
            else
            {
                viaTable[i] = true;
                batch.BatchCommands.Add(new NpgsqlBatchCommand("""
                    WITH r AS (INSERT INTO bus_payloads (source_node, topic, payload, published_ticks) VALUES ($2, $3, $4, $5) RETURNING id)
                    SELECT pg_notify($1, 't' || r.id) FROM r
                    """)
                {
                    Parameters =
                    {
                        new() { Value = _options.Channel },
                        new() { Value = NodeId },
                        new() { Value = item.Topic },
                        new() { Value = item.Payload, NpgsqlDbType = NpgsqlDbType.Bytea },
                        new() { Value = item.Ticks },
                    },
                });
            }
        }
        // A batch runs as one implicit transaction: its notifications are delivered together, in order.
        await batch.ExecuteNonQueryAsync(cancellationToken);
        foreach (var t in viaTable)
            _metrics.Sent(t);
    }

    private async Task DispatchLoopAsync(CancellationToken stop)
    {
        try
        {
            await foreach (var payload in _incoming.Reader.ReadAllAsync(stop))
            {
                try
                {
                    if (payload is null)
                    {
                        await RunCatchUpAsync(stop);
                        continue;
                    }
                    var message = await DecodeAsync(payload, stop);
                    if (message is null)
                        continue;
                    var (msg, ticks) = message.Value;
                    _metrics.Received(msg.SourceNode == NodeId, TimeSpan.FromTicks(_time.GetUtcNow().UtcTicks - ticks));
                    foreach (var s in _subscriptions)
                    {
                        if (s.Prefix ? msg.Topic.StartsWith(s.Topic, StringComparison.Ordinal) : msg.Topic == s.Topic)
                        {
                            try
                            {
                                await s.Handler(msg, stop);
                            }
                            catch (Exception ex) when (ex is not OperationCanceledException || !stop.IsCancellationRequested)
                            {
                                Log.HandlerFailed(_logger, ex, msg.Topic);
                            }
                        }
                    }
                }
                catch (Exception ex) when (ex is not OperationCanceledException || !stop.IsCancellationRequested)
                {
                    Log.DispatchFailed(_logger, ex);
                }
            }
        }
        catch (OperationCanceledException) when (stop.IsCancellationRequested)
        {
        }
    }

    private async Task RunCatchUpAsync(CancellationToken cancellationToken)
    {
        // Resolved lazily: catch-up participants (the channel hub) themselves depend on the bus.
        foreach (var hook in _services.GetServices<IBusCatchUp>())
        {
            try
            {
                await hook.CatchUpAsync(cancellationToken);
            }
            catch (Exception ex) when (ex is not OperationCanceledException || !cancellationToken.IsCancellationRequested)
            {
                Log.CatchUpFailed(_logger, ex, hook.GetType().Name);
            }
        }
    }

    private async Task<(BusMessage Message, long Ticks)?> DecodeAsync(string text, CancellationToken cancellationToken)
    {
        if (text.Length > 1 && text[0] == 't' && long.TryParse(text.AsSpan(1), NumberStyles.None, CultureInfo.InvariantCulture, out var id))
        {
            await using var connection = await _db.OpenAsync(cancellationToken);
            await using var q = new NpgsqlCommand("SELECT source_node, topic, payload, published_ticks FROM bus_payloads WHERE id = $1", connection) { Parameters = { new() { Value = id } } };
            await using var r = await q.ExecuteReaderAsync(cancellationToken);
            if (!await r.ReadAsync(cancellationToken))
            {
                Log.PayloadGone(_logger, id);
                return null;
            }
            return (new BusMessage(r.GetString(1), r.GetString(0), r.GetFieldValue<byte[]>(2)), r.GetInt64(3));
        }
        if (TryDecodeInline(text, out var message, out var ticks))
            return (message, ticks);
        Log.Malformed(_logger, text.Length);
        return null;
    }

    private async Task CleanLoopAsync(CancellationToken stop)
    {
        var period = TimeSpan.FromTicks(Math.Max(_options.PayloadRetention.Ticks / 2, TimeSpan.FromSeconds(1).Ticks));
        while (!stop.IsCancellationRequested)
        {
            try
            {
                await Task.Delay(period, _time, stop);
                await using var connection = await _db.OpenAsync(stop);
                await using var cmd = new NpgsqlCommand("DELETE FROM bus_payloads WHERE created_at < now() - $1", connection) { Parameters = { new() { Value = _options.PayloadRetention } } };
                await cmd.ExecuteNonQueryAsync(stop);
            }
            catch (OperationCanceledException) when (stop.IsCancellationRequested)
            {
                break;
            }
            catch (Exception ex)
            {
                Log.CleanFailed(_logger, ex);
            }
        }
    }

    internal static string EncodeInline(long ticks, string node, string topic, ReadOnlySpan<byte> payload)
    {
        var sb = new StringBuilder(32 + node.Length + topic.Length + ((payload.Length + 2) / 3 * 4));
        sb.Append('i').Append(ticks.ToString(CultureInfo.InvariantCulture)).Append(';')
          .Append(node.Length.ToString(CultureInfo.InvariantCulture)).Append(';').Append(node)
          .Append(topic.Length.ToString(CultureInfo.InvariantCulture)).Append(';').Append(topic)
          .Append(Convert.ToBase64String(payload));
        return sb.ToString();
    }

    internal static bool TryDecodeInline(string text, out BusMessage message, out long ticks)
    {
        message = default;
        ticks = 0;
        if (text.Length < 2 || text[0] != 'i')
            return false;
        var span = text.AsSpan(1);
        if (!TakeNumber(ref span, out ticks) || !TakeNumber(ref span, out var nodeLength) || nodeLength > span.Length)
            return false;
        var node = span[..(int)nodeLength].ToString();
        span = span[(int)nodeLength..];
        if (!TakeNumber(ref span, out var topicLength) || topicLength > span.Length)
            return false;
        var topic = span[..(int)topicLength].ToString();
        span = span[(int)topicLength..];
        var bytes = new byte[span.Length / 4 * 3];
        if (!Convert.TryFromBase64Chars(span, bytes, out var written))
            return false;
        message = new BusMessage(topic, node, bytes.AsMemory(0, written));
        return true;

        static bool TakeNumber(ref ReadOnlySpan<char> s, out long value)
        {
            var end = s.IndexOf(';');
            value = 0;
            if (end <= 0 || !long.TryParse(s[..end], NumberStyles.None, CultureInfo.InvariantCulture, out value))
                return false;
            s = s[(end + 1)..];
            return true;
        }
    }

    private static string QuoteIdentifier(string name) => "\"" + name.Replace("\"", "\"\"", StringComparison.Ordinal) + "\"";

    private sealed record Outgoing(string Topic, byte[] Payload, long Ticks);

    private sealed record Subscription(string Topic, bool Prefix, Func<BusMessage, CancellationToken, ValueTask> Handler);

    private sealed class Unsubscriber(PostgresBus bus, Subscription entry) : IDisposable
    {
        public void Dispose()
        {
            lock (bus._gate)
                bus._subscriptions = bus._subscriptions.Remove(entry);
        }
    }

    private static partial class Log
    {
        [LoggerMessage(5101, LogLevel.Warning, "Bus listening connection failed; reconnecting in {DelayMs} ms.")]
        public static partial void ListenFailed(ILogger logger, Exception exception, double delayMs);

        [LoggerMessage(5102, LogLevel.Information, "Bus listening again on {Channel}; subscribers catch up from the store.")]
        public static partial void Reconnected(ILogger logger, string channel);

        [LoggerMessage(5103, LogLevel.Warning, "Bus send failed (attempt {Attempt}); retrying.")]
        public static partial void SendRetry(ILogger logger, Exception exception, int attempt);

        [LoggerMessage(5104, LogLevel.Error, "Bus send failed; {Count} notifications dropped (other nodes recover from the store on their next message or reconnect).")]
        public static partial void SendDropped(ILogger logger, Exception exception, int count);

        [LoggerMessage(5105, LogLevel.Error, "Bus handler failed for topic {Topic}.")]
        public static partial void HandlerFailed(ILogger logger, Exception exception, string topic);

        [LoggerMessage(5106, LogLevel.Error, "Bus dispatch failed.")]
        public static partial void DispatchFailed(ILogger logger, Exception exception);

        [LoggerMessage(5107, LogLevel.Error, "Bus catch-up {Hook} failed.")]
        public static partial void CatchUpFailed(ILogger logger, Exception exception, string hook);

        [LoggerMessage(5108, LogLevel.Warning, "Bus payload {Id} was already cleaned up; message skipped.")]
        public static partial void PayloadGone(ILogger logger, long id);

        [LoggerMessage(5109, LogLevel.Warning, "Malformed bus notification ({Length} characters) ignored.")]
        public static partial void Malformed(ILogger logger, int length);

        [LoggerMessage(5110, LogLevel.Warning, "Cleaning bus payloads failed.")]
        public static partial void CleanFailed(ILogger logger, Exception exception);
    }
}
