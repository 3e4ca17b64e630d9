using System.Buffers.Binary;
using System.Collections.Concurrent;
using System.Text;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Options;
using Switchboard.Server.Diagnostics;
using Switchboard.Server.Storage;

namespace Switchboard.Server.Channels;

/// <summary>Result of a subscribe: where the channel stands and whether the requested gap was recovered.</summary>
public readonly record struct SubscribeResult(ChannelPosition Position, bool? Recovered, IReadOnlyList<ChannelBroadcast> Missed);

/// <summary>
/// Channel fan-out for this node. A publish is appended to the store (which assigns the offset), delivered to local
/// subscribers in offset order, then announced once on the bus for other nodes. Each channel has a gate so that
/// append, dispatch and subscribe-with-recovery are ordered: a subscriber sees history and live messages without a
/// gap or a duplicate. Messages from other nodes are dispatched in offset order; a gap (a lost or late bus message)
/// is filled from the store.
/// </summary>
public sealed partial class ChannelHub : IHostedService, IDisposable
{
    private const string BusPrefix = "ch:";
    private readonly ConcurrentDictionary<string, ChannelState> _channels = new(StringComparer.Ordinal);
    private readonly IChannelStore _store;
    private readonly IMessageBus _bus;
    private readonly ChannelOptions _options;
    private readonly LimitsOptions _limits;
    private readonly SwitchboardMetrics _metrics;
    private readonly ILogger _logger;
    private readonly TimeProvider _time;
    private IDisposable? _busSubscription;
    private ITimer? _sweep;

    public ChannelHub(IChannelStore store, IMessageBus bus, IOptions<SwitchboardOptions> options, SwitchboardMetrics metrics, ILogger<ChannelHub> logger, TimeProvider time)
    {
        _store = store;
        _bus = bus;
        _options = options.Value.Channels;
        _limits = options.Value.Limits;
        _metrics = metrics;
        _logger = logger;
        _time = time;
    }

    public Task StartAsync(CancellationToken cancellationToken)
    {
        _busSubscription = _bus.Subscribe(BusPrefix + "*", OnBusMessageAsync);
        _sweep = _time.CreateTimer(_ => _ = SweepAsync(), null, TimeSpan.FromMinutes(1), TimeSpan.FromMinutes(1));
        return Task.CompletedTask;
    }

    public Task StopAsync(CancellationToken cancellationToken)
    {
        _busSubscription?.Dispose();
        _sweep?.Dispose();
        return Task.CompletedTask;
    }

    public void Dispose()
    {
        _busSubscription?.Dispose();
        _sweep?.Dispose();
    }

    /// <summary>Validates a channel name: 1..N printable ASCII characters without spaces or wildcards.</summary>
    public bool IsValidName(string? channel, out string error)
    {
        error = "";
        if (string.IsNullOrEmpty(channel))
        {
            error = "channel name is required";
            return false;
        }
        if (channel.Length > _options.MaxChannelNameLength)
        {
            error = $"channel name longer than {_options.MaxChannelNameLength} characters";
            return false;
        }
        foreach (var c in channel)
        {
            if (c <= ' ' || c > '~' || c == '*')
            {
                error = "channel names use printable ASCII without spaces or '*'";
                return false;
            }
        }
        return true;
    }

    // Returns the live state of a channel with its gate held. The sweep may remove an idle state while a caller waits
    // for its gate; such a state is marked Removed and the caller looks the channel up again.
    private async ValueTask<ChannelState> AcquireAsync(string channel, CancellationToken cancellationToken)
    {
        while (true)
        {
            var state = _channels.GetOrAdd(channel, static c => new ChannelState(c));
            await state.Gate.WaitAsync(cancellationToken);
            if (!state.Removed)
                return state;
            state.Gate.Release();
        }
    }

    /// <summary>Publishes JSON <paramref name="data"/> (already validated and compact) to a channel.</summary>
    public async ValueTask<ChannelPosition> PublishAsync(string channel, ReadOnlyMemory<byte> data, string? excludeConnection, CancellationToken cancellationToken)
    {
        // The append runs outside the channel gate so concurrent publishes share a store commit (group commit);
        // the store assigns offsets, and dispatch below happens in offset order under the gate.
        var appended = await _store.AppendAsync(channel, data, _options.HistorySize, cancellationToken);
        // Stored: from here on the publisher going away must not stop delivery.
        var offset = appended.Message.Offset;
        var state = await AcquireAsync(channel, CancellationToken.None);
        try
        {
            state.Touch(_time.GetTimestamp());
            if (state.Epoch != appended.Epoch || offset > state.LastDispatched)
            {
                // Earlier offsets still missing here (another node's publish, or a concurrent local one whose
                // continuation has not run yet) are read from the store first, so subscribers see offset order.
                await CatchUpLockedAsync(state, appended.Epoch, offset - 1, CancellationToken.None);
                if (state.Epoch != appended.Epoch || offset > state.LastDispatched)
                {
                    Dispatch(state, new ChannelBroadcast(channel, offset, appended.Epoch, appended.Message.Data, excludeConnection));
                    state.LastDispatched = offset;
                    state.Epoch = appended.Epoch;
                }
            }
        }
        finally
        {
            state.Gate.Release();
        }
        _metrics.Published();
        // Tell other nodes; they fetch from their own subscribers' point of view (see OnBusMessageAsync).
        try
        {
            await _bus.PublishAsync(BusPrefix + channel, EncodeBus(appended.Message.Offset, appended.Epoch, data, excludeConnection), CancellationToken.None);
        }
        catch (Exception ex)
        {
            // Stored and delivered locally; other nodes catch up from the store on their next message or bus reconnect.
            Log.BusPublishFailed(_logger, ex, channel, appended.Message.Offset);
        }
        return new ChannelPosition(appended.Message.Offset, appended.Epoch);
    }

    /// <summary>
    /// Subscribes under the channel gate: computes the position, recovers what the subscriber missed since
    /// <paramref name="since"/> (if given), queues it, then adds the subscriber, so live messages follow without a gap.
    /// </summary>
    public async ValueTask<SubscribeResult> SubscribeAsync(string channel, IChannelSubscriber subscriber, Protocol.StreamPosition? since,
        Action<SubscribeResult> beforeLive, CancellationToken cancellationToken)
    {
        var state = await AcquireAsync(channel, cancellationToken);
        try
        {
            await EnsureInitializedLockedAsync(state, cancellationToken);
            var position = new ChannelPosition(state.LastDispatched, state.Epoch!);
            bool? recovered = null;
            IReadOnlyList<ChannelBroadcast> missed = [];
            if (since is not null)
            {
                (recovered, missed) = await RecoverLockedAsync(channel, since, position, cancellationToken);
            }
            var result = new SubscribeResult(position, recovered, missed);
            beforeLive(result);
            state.Add(subscriber);
            state.Touch(_time.GetTimestamp());
            return result;
        }
        finally
        {
            state.Gate.Release();
        }
    }

    public void Unsubscribe(string channel, IChannelSubscriber subscriber)
    {
        if (_channels.TryGetValue(channel, out var state))
        {
            state.Remove(subscriber);
        }
    }

    /// <summary>History after an offset, as the HTTP API returns it.</summary>
    public async ValueTask<(ChannelPosition Position, bool Recovered, IReadOnlyList<StoredMessage> Messages)> HistoryAsync(string channel, long? since, string? epoch, int limit, CancellationToken cancellationToken)
    {
        var after = since ?? 0;
        var history = await _store.ReadAsync(channel, after, limit, cancellationToken);
        var recovered = history.Complete && (epoch is null || epoch == history.Position.Epoch);
        return (history.Position, recovered, history.Messages);
    }

    private async ValueTask<(bool Recovered, IReadOnlyList<ChannelBroadcast> Missed)> RecoverLockedAsync(string channel, Protocol.StreamPosition since, ChannelPosition position, CancellationToken cancellationToken)
    {
        if (since.Epoch != position.Epoch || since.Offset > position.Offset || since.Offset < 0)
            return (false, []);
        if (since.Offset == position.Offset)
            return (true, []);
        var wanted = position.Offset - since.Offset;
        if (wanted > _options.HistorySize)
            return (false, []);
        var history = await _store.ReadAsync(channel, since.Offset, (int)wanted, cancellationToken);
        if (history.Position.Epoch != position.Epoch)
            return (false, []);
        var list = new List<ChannelBroadcast>((int)wanted);
        var expected = since.Offset + 1;
        long bytes = 0;
        foreach (var m in history.Messages)
        {
            if (m.Offset > position.Offset)
                break;
            if (m.Offset != expected)
                return (false, []); // trimmed in between: never a silent gap
            bytes += m.Data.Length + 64;
            if (bytes > _limits.MaxQueuedBytes / 2 || list.Count >= _limits.MaxQueuedMessages / 2)
                return (false, []); // would overflow the connection's queue on every attempt: reload instead
            list.Add(new ChannelBroadcast(channel, m.Offset, position.Epoch, m.Data, null));
            expected++;
        }
        return expected == position.Offset + 1 ? (true, list) : (false, []);
    }

    private async ValueTask EnsureInitializedLockedAsync(ChannelState state, CancellationToken cancellationToken)
    {
        if (state.Epoch is not null)
            return;
        var position = await _store.GetPositionAsync(state.Name, cancellationToken);
        state.Epoch = position.Epoch;
        state.LastDispatched = position.Offset;
    }

    // Dispatches anything between what this node last dispatched and `upTo` (published by other nodes and not yet seen here).
    private async ValueTask CatchUpLockedAsync(ChannelState state, string epoch, long upTo, CancellationToken cancellationToken)
    {
        if (state.Epoch is null || state.Epoch != epoch)
        {
            if (state.Epoch is not null && state.HasSubscribers)
            {
                // History was reset under live subscribers: their offsets mean nothing now. Make them resubscribe.
                Log.EpochChanged(_logger, state.Name, state.Epoch, epoch);
                foreach (var s in state.Snapshot())
                    (s as IRecoverableSubscriber)?.Resync(state.Name);
            }
            // First use on this node, or history was reset: nothing to catch up, start from here.
            state.Epoch = epoch;
            state.LastDispatched = Math.Max(upTo, 0);
            return;
        }
        while (state.LastDispatched < upTo)
        {
            if (!state.HasSubscribers)
            {
                state.LastDispatched = upTo;
                return;
            }
            var history = await _store.ReadAsync(state.Name, state.LastDispatched, (int)Math.Min(upTo - state.LastDispatched, 1000), cancellationToken);
            if (history.Messages.Count == 0 || history.Messages[0].Offset != state.LastDispatched + 1)
            {
                // The gap is no longer in history: subscribers cannot be made whole. Close them so they resubscribe and learn recovered:false.
                Log.GapNotRecoverable(_logger, state.Name, state.LastDispatched, upTo);
                foreach (var s in state.Snapshot())
                    (s as IRecoverableSubscriber)?.Resync(state.Name);
                state.LastDispatched = upTo;
                return;
            }
            foreach (var m in history.Messages)
            {
                if (m.Offset > upTo)
                    break;
                Dispatch(state, new ChannelBroadcast(state.Name, m.Offset, epoch, m.Data, null));
                state.LastDispatched = m.Offset;
            }
        }
    }

    private void Dispatch(ChannelState state, ChannelBroadcast broadcast)
    {
        var subscribers = state.Snapshot();
        var exclude = broadcast.ExcludeConnection;
        // Idle subscribers' senders start together, one thread-pool work item per core instead of one per subscriber:
        // bench/run.sh --scenarios b, five alternating pairs, median 284k vs 265k deliveries/s at 100 subscribers.
        // Inside a store's DeliveryBatch (a group commit's completions) they start once for the whole batch.
        var starts = Connections.SenderStarts.For(subscribers.Length);
        try
        {
            foreach (var s in subscribers)
            {
                if (exclude is not null && s.Id == exclude)
                    continue;
                s.Deliver(broadcast, starts);
            }
        }
        finally
        {
            starts.Complete(); // every sender that was asked for starts (now or at the batch's end), whatever happened above
        }
    }

    private async ValueTask OnBusMessageAsync(BusMessage message, CancellationToken cancellationToken)
    {
        if (message.SourceNode == _bus.NodeId)
            return;
        var channel = message.Topic[BusPrefix.Length..];
        if (!_channels.TryGetValue(channel, out var state))
            return; // no local subscriber: a later one initializes from the store
        var (offset, epoch, data, exclude) = DecodeBus(message.Payload);
        await state.Gate.WaitAsync(cancellationToken);
        try
        {
            if (state.Removed)
                return;
            if (!state.HasSubscribers)
            {
                // Nobody to deliver to: forget the position so the next subscriber initializes from the store.
                state.Epoch = null;
                return;
            }
            if (state.Epoch == epoch && offset <= state.LastDispatched)
                return; // already dispatched (caught up from the store)
            await CatchUpLockedAsync(state, epoch, offset - 1, cancellationToken);
            if (state.Epoch == epoch && offset <= state.LastDispatched)
                return;
            Dispatch(state, new ChannelBroadcast(channel, offset, epoch, data, exclude));
            state.LastDispatched = offset;
        }
        finally
        {
            state.Gate.Release();
        }
    }

    /// <summary>Called by a bus after it reconnects: every channel with local subscribers catches up from the store.</summary>
    public async Task CatchUpAllAsync(CancellationToken cancellationToken)
    {
        foreach (var state in _channels.Values)
        {
            if (!state.HasSubscribers)
                continue;
            await state.Gate.WaitAsync(cancellationToken);
            try
            {
                var position = await _store.GetPositionAsync(state.Name, cancellationToken);
                await CatchUpLockedAsync(state, position.Epoch, position.Offset, cancellationToken);
            }
            finally
            {
                state.Gate.Release();
            }
        }
    }

    private async Task SweepAsync()
    {
        try
        {
            var removed = await _store.TrimOlderThanAsync(_time.GetUtcNow() - _options.HistoryTtl, CancellationToken.None);
            if (removed > 0)
                Log.Trimmed(_logger, removed);
            var now = _time.GetTimestamp();
            foreach (var (name, state) in _channels)
            {
                if (!state.HasSubscribers && _time.GetElapsedTime(state.LastUsed, now) > TimeSpan.FromMinutes(5) && state.Gate.Wait(0))
                {
                    // Removed under its gate; a publisher that still holds this state object only dispatches to nobody.
                    if (!state.HasSubscribers)
                    {
                        state.Removed = true;
                        _channels.TryRemove(new KeyValuePair<string, ChannelState>(name, state));
                    }
                    state.Gate.Release();
                }
            }
        }
        catch (Exception ex)
        {
            Log.SweepFailed(_logger, ex);
        }
    }

    internal static byte[] EncodeBus(long offset, string epoch, ReadOnlyMemory<byte> data, string? exclude)
    {
        var epochBytes = Encoding.UTF8.GetBytes(epoch);
        var excludeBytes = Encoding.UTF8.GetBytes(exclude ?? "");
        var buffer = new byte[8 + 1 + epochBytes.Length + 1 + excludeBytes.Length + data.Length];
        BinaryPrimitives.WriteInt64BigEndian(buffer, offset);
        buffer[8] = (byte)epochBytes.Length;
        epochBytes.CopyTo(buffer, 9);
        buffer[9 + epochBytes.Length] = (byte)excludeBytes.Length;
        excludeBytes.CopyTo(buffer, 10 + epochBytes.Length);
        data.Span.CopyTo(buffer.AsSpan(10 + epochBytes.Length + excludeBytes.Length));
        return buffer;
    }

    internal static (long Offset, string Epoch, ReadOnlyMemory<byte> Data, string? Exclude) DecodeBus(ReadOnlyMemory<byte> payload)
    {
        var span = payload.Span;
        var offset = BinaryPrimitives.ReadInt64BigEndian(span);
        int epochLength = span[8];
        var epoch = Encoding.UTF8.GetString(span.Slice(9, epochLength));
        int excludeLength = span[9 + epochLength];
        var exclude = excludeLength == 0 ? null : Encoding.UTF8.GetString(span.Slice(10 + epochLength, excludeLength));
        return (offset, epoch, payload[(10 + epochLength + excludeLength)..], exclude);
    }

    private sealed class ChannelState(string name)
    {
        public string Name { get; } = name;
        public SemaphoreSlim Gate { get; } = new(1, 1);
        // Subscribe/unsubscribe are O(1); dispatch iterates an array snapshot rebuilt only after a change,
        // so a subscribe storm on one channel costs no array copies.
        private readonly HashSet<IChannelSubscriber> _subscribers = new(ReferenceEqualityComparer.Instance);
        private IChannelSubscriber[]? _snapshot = [];
        private readonly Lock _subscribersGate = new();

        public bool HasSubscribers
        {
            get
            {
                lock (_subscribersGate)
                    return _subscribers.Count > 0;
            }
        }

        public void Add(IChannelSubscriber subscriber)
        {
            lock (_subscribersGate)
            {
                if (_subscribers.Add(subscriber))
                    _snapshot = null;
            }
        }

        public void Remove(IChannelSubscriber subscriber)
        {
            lock (_subscribersGate)
            {
                if (_subscribers.Remove(subscriber))
                    _snapshot = null;
            }
        }

        public IChannelSubscriber[] Snapshot()
        {
            var snapshot = Volatile.Read(ref _snapshot);
            if (snapshot is not null)
                return snapshot;
            lock (_subscribersGate)
                return _snapshot ??= [.. _subscribers];
        }
        public string? Epoch;
        public long LastDispatched;
        public long LastUsed;
        public bool Removed;

        public void Touch(long now) => Volatile.Write(ref LastUsed, now);
    }

    private static partial class Log
    {
        [LoggerMessage(2001, LogLevel.Warning, "Channel {Channel}: messages {From}..{To} are no longer in history; subscribers are asked to resubscribe.")]
        public static partial void GapNotRecoverable(ILogger logger, string channel, long from, long to);

        [LoggerMessage(2002, LogLevel.Debug, "Trimmed {Count} channel messages past their age limit.")]
        public static partial void Trimmed(ILogger logger, int count);

        [LoggerMessage(2004, LogLevel.Warning, "Channel {Channel}: publishing offset {Offset} on the bus failed; other nodes will catch up from the store.")]
        public static partial void BusPublishFailed(ILogger logger, Exception exception, string channel, long offset);

        [LoggerMessage(2005, LogLevel.Warning, "Channel {Channel}: epoch changed from {Old} to {New}; subscribers are asked to resubscribe.")]
        public static partial void EpochChanged(ILogger logger, string channel, string old, string @new);

        [LoggerMessage(2003, LogLevel.Error, "Channel sweep failed.")]
        public static partial void SweepFailed(ILogger logger, Exception exception);
    }
}

/// <summary>A subscriber that can be told its stream has an unrecoverable gap (it closes so the client resubscribes).</summary>
public interface IRecoverableSubscriber
{
    void Resync(string channel);
}
