using System.Buffers;
using System.Diagnostics;
using System.Net.Http.Headers;
using System.Net.WebSockets;
using System.Text;

namespace Switchboard.Bench;

/// <summary>How to subscribe to and publish on one server under test.</summary>
internal abstract class Target(ServerProcess server) : IAsyncDisposable
{
    private readonly HttpClient _http = new(new SocketsHttpHandler
    {
        MaxConnectionsPerServer = 16,
        PooledConnectionLifetime = Timeout.InfiniteTimeSpan,
    })
    { Timeout = TimeSpan.FromSeconds(30) };

    public ServerProcess Server { get; } = server;
    public string Name => Server.Name;
    public abstract Uri WebSocketUri { get; }

    /// <summary>Where subscriber number <paramref name="index"/> connects (a cluster spreads them over its nodes).</summary>
    public virtual Uri WebSocketUriFor(int index) => WebSocketUri;

    /// <summary>CPU time of every server process of the target.</summary>
    public virtual TimeSpan CpuTime() => Server.CpuTime();

    /// <summary>Sends what the protocol needs after the upgrade (subscribe) and returns once the subscription is live.</summary>
    public abstract Task SubscribeAsync(ClientWebSocket socket, byte[] scratch, CancellationToken cancellationToken);

    protected abstract HttpRequestMessage PublishRequest(long timestamp, long sequence);

    /// <summary>Publishes one message carrying <paramref name="timestamp"/> (Stopwatch ticks) and returns whether the server accepted it.</summary>
    public async Task<bool> PublishAsync(long timestamp, long sequence, CancellationToken cancellationToken)
    {
        using var request = PublishRequest(timestamp, sequence);
        using var response = await _http.SendAsync(request, HttpCompletionOption.ResponseContentRead, cancellationToken);
        return response.IsSuccessStatusCode;
    }

    protected static ByteArrayContent Json(string json)
    {
        var content = new ByteArrayContent(Encoding.UTF8.GetBytes(json));
        content.Headers.ContentType = new MediaTypeHeaderValue("application/json");
        return content;
    }

    protected static async Task<string> ReceiveTextAsync(ClientWebSocket socket, byte[] scratch, CancellationToken cancellationToken)
    {
        var length = 0;
        ValueWebSocketReceiveResult r;
        do
        {
            r = await socket.ReceiveAsync(scratch.AsMemory(length), cancellationToken);
            if (r.MessageType == WebSocketMessageType.Close)
                throw new WebSocketException($"closed by server: {socket.CloseStatus} {socket.CloseStatusDescription}");
            length += r.Count;
        }
        while (!r.EndOfMessage);
        return Encoding.UTF8.GetString(scratch, 0, length);
    }

    public virtual async ValueTask DisposeAsync()
    {
        _http.Dispose();
        await Server.DisposeAsync();
    }
}

/// <summary>Switchboard: JWT in the query string, one <c>subscribe</c>, publish with the API key over HTTP.</summary>
internal class SwitchboardTarget(ServerProcess server, string token, string apiKey, string channel) : Target(server)
{
    private readonly byte[] _subscribe = Encoding.UTF8.GetBytes($$"""{"type":"subscribe","channel":"{{channel}}"}""");

    public override Uri WebSocketUri => WebSocketUriOf(Server);

    protected Uri WebSocketUriOf(ServerProcess server) => new($"ws://127.0.0.1:{server.Port}/api/v1/ws?token={Uri.EscapeDataString(token)}");

    public override async Task SubscribeAsync(ClientWebSocket socket, byte[] scratch, CancellationToken cancellationToken)
    {
        await socket.SendAsync(_subscribe, WebSocketMessageType.Text, true, cancellationToken);
        while (true)
        {
            var text = await ReceiveTextAsync(socket, scratch, cancellationToken);
            if (text.Contains("\"type\":\"subscribed\"", StringComparison.Ordinal))
                return;
            if (text.Contains("\"type\":\"error\"", StringComparison.Ordinal))
                throw new InvalidOperationException("subscribe failed: " + text);
        }
    }

    protected override HttpRequestMessage PublishRequest(long timestamp, long sequence)
    {
        var request = new HttpRequestMessage(HttpMethod.Post, new Uri(Server.Http, $"/api/v1/channels/{channel}/messages"))
        {
            Content = Json($$$"""{"data":{"t":{{{timestamp}}},"n":{{{sequence}}}}}"""),
        };
        request.Headers.Authorization = new AuthenticationHeaderValue("Bearer", apiKey);
        return request;
    }
}

/// <summary>The raw Kestrel broadcast server: no auth, no subscribe, POST /publish.</summary>
internal sealed class RawTarget(ServerProcess server) : Target(server)
{
    private static readonly byte[] Subscribe = "{\"type\":\"subscribe\"}"u8.ToArray();

    public override Uri WebSocketUri => new($"ws://127.0.0.1:{Server.Port}/ws");

    public override async Task SubscribeAsync(ClientWebSocket socket, byte[] scratch, CancellationToken cancellationToken)
    {
        await socket.SendAsync(Subscribe, WebSocketMessageType.Text, true, cancellationToken);
        var text = await ReceiveTextAsync(socket, scratch, cancellationToken);
        if (!text.Contains("\"subscribed\"", StringComparison.Ordinal))
            throw new InvalidOperationException("unexpected reply: " + text);
    }

    protected override HttpRequestMessage PublishRequest(long timestamp, long sequence) =>
        new(HttpMethod.Post, new Uri(Server.Http, "/publish")) { Content = Json($$"""{"t":{{timestamp}},"n":{{sequence}}}""") };
}

/// <summary>Latency histogram with 10 µs buckets up to 5 s (thread-safe increments).</summary>
internal sealed class Histogram
{
    private const long BucketTicksDivisor = 10; // µs per bucket
    private readonly long[] _buckets = new long[500_001];
    private long _count;

    public long Count => Interlocked.Read(ref _count);

    public void Record(long elapsedStopwatchTicks)
    {
        var micros = elapsedStopwatchTicks * 1_000_000 / Stopwatch.Frequency;
        var bucket = Math.Clamp(micros / BucketTicksDivisor, 0, _buckets.Length - 1);
        Interlocked.Increment(ref _buckets[bucket]);
        Interlocked.Increment(ref _count);
    }

    /// <summary>Percentile in milliseconds (upper edge of the bucket).</summary>
    public double Percentile(double p)
    {
        var total = Count;
        if (total == 0)
            return double.NaN;
        var rank = (long)Math.Ceiling(total * p / 100.0);
        long seen = 0;
        for (var i = 0; i < _buckets.Length; i++)
        {
            seen += _buckets[i];
            if (seen >= rank)
                return (i + 1) * BucketTicksDivisor / 1000.0;
        }
        return double.PositiveInfinity;
    }

    /// <summary>Mean in milliseconds (bucket midpoints).</summary>
    public double Mean()
    {
        var total = Count;
        if (total == 0)
            return double.NaN;
        double sum = 0;
        for (var i = 0; i < _buckets.Length; i++)
            sum += _buckets[i] * (i + 0.5);
        return sum / total * BucketTicksDivisor / 1000.0;
    }

    public double Max()
    {
        for (var i = _buckets.Length - 1; i >= 0; i--)
        {
            if (_buckets[i] > 0)
                return (i + 1) * BucketTicksDivisor / 1000.0;
        }
        return double.NaN;
    }
}

/// <summary>A counter striped over padded slots, so a million increments a second from many sockets do not fight over one cache line.</summary>
internal sealed class StripedCounter
{
    private const int Stride = 16; // 128 bytes between slots
    private readonly long[] _slots = new long[Stride * 32];

    public void Add(int stripe, long value) => Interlocked.Add(ref _slots[(stripe & 31) * Stride], value);

    public long Sum()
    {
        long total = 0;
        for (var i = 0; i < 32; i++)
            total += Interlocked.Read(ref _slots[i * Stride]);
        return total;
    }
}

/// <summary>One subscriber socket: counts deliveries, records latency from the embedded timestamp, answers pings.</summary>
internal sealed class Subscriber(int index, ClientWebSocket socket, Fleet fleet)
{
    private static readonly byte[] Pong = "{\"type\":\"pong\"}"u8.ToArray();

    public ClientWebSocket Socket { get; } = socket;

    public async Task ReceiveLoopAsync(CancellationToken cancellationToken)
    {
        byte[]? buffer = null;
        try
        {
            while (true)
            {
                // Zero-byte read first, so idle sockets of the client hold no buffer either.
                var peek = await Socket.ReceiveAsync(Memory<byte>.Empty, cancellationToken);
                if (peek.MessageType == WebSocketMessageType.Close)
                {
                    fleet.Closed(Socket.CloseStatus, Socket.CloseStatusDescription);
                    return;
                }
                buffer ??= ArrayPool<byte>.Shared.Rent(4096);
                var length = 0;
                ValueWebSocketReceiveResult r;
                do
                {
                    if (length == buffer.Length)
                    {
                        var bigger = ArrayPool<byte>.Shared.Rent(buffer.Length * 2);
                        buffer.AsSpan(0, length).CopyTo(bigger);
                        ArrayPool<byte>.Shared.Return(buffer);
                        buffer = bigger;
                    }
                    r = await Socket.ReceiveAsync(buffer.AsMemory(length), cancellationToken);
                    if (r.MessageType == WebSocketMessageType.Close)
                    {
                        fleet.Closed(Socket.CloseStatus, Socket.CloseStatusDescription);
                        return;
                    }
                    length += r.Count;
                }
                while (!r.EndOfMessage);
                OnMessage(buffer.AsSpan(0, length), out var ping);
                if (ping)
                    await Socket.SendAsync(Pong, WebSocketMessageType.Text, true, cancellationToken);
                if (fleet.ReleaseIdleBuffers)
                {
                    ArrayPool<byte>.Shared.Return(buffer);
                    buffer = null;
                }
            }
        }
        catch (OperationCanceledException)
        {
        }
        catch (Exception ex) when (ex is WebSocketException or IOException or ObjectDisposedException)
        {
            if (!cancellationToken.IsCancellationRequested)
                fleet.Failed(ex);
        }
        finally
        {
            if (buffer is not null)
                ArrayPool<byte>.Shared.Return(buffer);
        }
    }

    private void OnMessage(ReadOnlySpan<byte> message, out bool ping)
    {
        ping = false;
        var t = message.IndexOf("\"t\":"u8);
        if (t < 0)
        {
            ping = message.IndexOf("\"type\":\"ping\""u8) >= 0;
            return;
        }
        fleet.Deliveries.Add(index, 1);
        if (fleet.Latency is { } histogram && System.Buffers.Text.Utf8Parser.TryParse(message[(t + 4)..], out long sent, out _))
        {
            var elapsed = Stopwatch.GetTimestamp() - sent;
            histogram.Record(elapsed);
            if (fleet.Groups is { } groups)
                groups[index % groups.Length].Record(elapsed);
        }
    }
}

/// <summary>N subscriber sockets to one target.</summary>
internal sealed class Fleet : IAsyncDisposable
{
    private readonly List<Subscriber> _subscribers = [];
    private readonly List<Task> _loops = [];
    private readonly CancellationTokenSource _stop = new();
    private long _errors;
    private long _closes;

    public StripedCounter Deliveries { get; } = new();
    public Histogram? Latency { get; set; }

    /// <summary>Latency per group of subscribers (subscriber index modulo the count): per node of a cluster.</summary>
    public Histogram[]? Groups { get; set; }
    public bool ReleaseIdleBuffers { get; init; }
    public long Errors => Interlocked.Read(ref _errors);
    public long Closes => Interlocked.Read(ref _closes);
    public int Count => _subscribers.Count;
    public string? LastError { get; private set; }

    public void Failed(Exception ex)
    {
        Interlocked.Increment(ref _errors);
        LastError = ex.Message;
    }

    public void Closed(WebSocketCloseStatus? status, string? description)
    {
        Interlocked.Increment(ref _closes);
        LastError = $"closed {(int?)status} {description}";
    }

    /// <summary>Opens <paramref name="count"/> sockets, <paramref name="parallel"/> at a time, each subscribed before this returns.</summary>
    public async Task ConnectAsync(Target target, int count, int parallel, CancellationToken cancellationToken)
    {
        using var gate = new SemaphoreSlim(parallel);
        var tasks = new List<Task<Subscriber?>>(count);
        for (var i = 0; i < count; i++)
        {
            await gate.WaitAsync(cancellationToken);
            var index = _subscribers.Count + i;
            tasks.Add(Task.Run(async () =>
            {
                try
                {
                    return await ConnectOneAsync(target, index, cancellationToken);
                }
                finally
                {
                    gate.Release();
                }
            }, cancellationToken));
        }
        foreach (var t in tasks)
        {
            var s = await t;
            if (s is null)
                continue;
            _subscribers.Add(s);
            _loops.Add(s.ReceiveLoopAsync(_stop.Token));
        }
    }

    private async Task<Subscriber?> ConnectOneAsync(Target target, int index, CancellationToken cancellationToken)
    {
        for (var attempt = 0; attempt < 3; attempt++)
        {
            var socket = new ClientWebSocket();
            socket.Options.KeepAliveInterval = TimeSpan.Zero;
            try
            {
                await socket.ConnectAsync(target.WebSocketUriFor(index), cancellationToken);
                var scratch = ArrayPool<byte>.Shared.Rent(4096);
                try
                {
                    await target.SubscribeAsync(socket, scratch, cancellationToken);
                }
                finally
                {
                    ArrayPool<byte>.Shared.Return(scratch);
                }
                return new Subscriber(index, socket, this);
            }
            catch (Exception ex) when (ex is WebSocketException or IOException or InvalidOperationException or HttpRequestException)
            {
                socket.Dispose();
                Failed(ex);
                await Task.Delay(100, cancellationToken);
            }
        }
        return null;
    }

    public async ValueTask DisposeAsync()
    {
        await _stop.CancelAsync();
        foreach (var s in _subscribers)
            s.Socket.Abort();
        try
        {
            await Task.WhenAll(_loops).WaitAsync(TimeSpan.FromSeconds(10));
        }
        catch (TimeoutException)
        {
        }
        foreach (var s in _subscribers)
            s.Socket.Dispose();
        _stop.Dispose();
    }
}
