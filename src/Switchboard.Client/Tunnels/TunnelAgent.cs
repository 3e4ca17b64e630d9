using System.Buffers;
using System.Buffers.Binary;
using System.Collections.Concurrent;
using System.Diagnostics;
using System.Net;
using System.Net.WebSockets;
using System.Security.Cryptography;
using Switchboard.Protocol;
using Switchboard.Protocol.Tunnels;

namespace Switchboard.Client.Tunnels;

/// <summary>
/// The agent: keeps one WebSocket to the gateway, forwards each stream to the local server with its own
/// <see cref="HttpClient"/> request (or WebSocket), and reconnects with exponential backoff and jitter, keeping its name.
/// </summary>
public sealed class TunnelAgent : IAsyncDisposable
{
    private readonly TunnelAgentOptions _options;
    private readonly HttpMessageInvoker _http;
    private readonly CancellationTokenSource _disposed = new();
    private AgentConnection? _current;
    private string? _assignedName;
    private int _disposeCalled;

    public TunnelAgent(TunnelAgentOptions options)
    {
        _options = options;
        var handler = new SocketsHttpHandler
        {
            AllowAutoRedirect = false, // redirects go back to the public client untouched
            AutomaticDecompression = DecompressionMethods.None,
            UseCookies = false,
            UseProxy = false,
            ConnectTimeout = ConnectTimeout,
            MaxConnectionsPerServer = int.MaxValue,
            PooledConnectionIdleTimeout = TimeSpan.FromSeconds(30),
            // Data-path requests wait for the gateway's 100 Continue before sending the body, so a refusal leaves the
            // body here to go over the WebSocket; the default 1 s would send it to a gateway that is merely slow.
            Expect100ContinueTimeout = ContinueTimeout,
        };
        ZeroCopy = options.ZeroCopy && options.LocalTarget.Scheme == Uri.UriSchemeHttp && DataPathRequest.IsSupported(options.Server);
        if (ZeroCopy)
            handler.ConnectCallback = LocalServerStream.ConnectAsync; // local connections that can hand a body's tail over
        _http = new HttpMessageInvoker(handler);
    }

    internal static readonly TimeSpan ConnectTimeout = TimeSpan.FromSeconds(10);

    internal static readonly TimeSpan ContinueTimeout = TimeSpan.FromSeconds(10);

    /// <summary>
    /// True when data-path bodies go by zero copy (docs/tunnels.md, "Zero copy"): <see cref="TunnelAgentOptions.ZeroCopy"/>
    /// is on, the system is Linux, and both the local server and the gateway are plain <c>http</c>.
    /// </summary>
    public bool ZeroCopy { get; }

    /// <summary>Raised after every successful handshake (first connect and reconnects).</summary>
    public event Action<TunnelHelloAck>? Connected;

    /// <summary>Raised when a connection ends; the argument says why and the delay before the next attempt.</summary>
    public event Action<string, TimeSpan>? Disconnected;

    public event Action<TunnelRequestCompleted>? RequestCompleted;

    /// <summary>The last hello-ack (name and URLs).</summary>
    public TunnelHelloAck? Current { get; private set; }

    public TunnelAgentOptions Options => _options;

    internal HttpMessageInvoker Http => _http;

    /// <summary>Connects once and completes when the gateway accepted the agent; the connection then runs in the background until it ends.</summary>
    public async Task<(TunnelHelloAck Ack, Task<int> Completion)> ConnectAsync(CancellationToken cancellationToken)
    {
        var connection = new AgentConnection(this);
        var ack = await connection.OpenAsync(_assignedName ?? _options.Subdomain, cancellationToken);
        _assignedName = ack.Name;
        Current = ack;
        _current = connection;
        Connected?.Invoke(ack);
        return (ack, connection.RunAsync(_disposed.Token));
    }

    /// <summary>
    /// Connects once (throwing <see cref="TunnelRefusedException"/> or a network error if that fails), then keeps
    /// serving and reconnecting in the background until disposed. Returns the first hello-ack and the background task.
    /// </summary>
    public async Task<(TunnelHelloAck Ack, Task Running)> StartAsync(CancellationToken cancellationToken)
    {
        var (ack, completion) = await ConnectAsync(cancellationToken);
        return (ack, LoopAsync(completion, _disposed.Token));
    }

    /// <summary>Runs until cancelled: connects, serves, reconnects with backoff. Throws <see cref="TunnelRefusedException"/> when the gateway refuses for good.</summary>
    public async Task RunAsync(CancellationToken cancellationToken)
    {
        using var linked = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken, _disposed.Token);
        await LoopAsync(null, linked.Token);
    }

    private async Task LoopAsync(Task<int>? running, CancellationToken token)
    {
        var attempt = 0;
        while (!token.IsCancellationRequested)
        {
            string reason;
            var retryNow = false;
            try
            {
                if (running is null)
                {
                    (_, running) = await ConnectAsync(token);
                    attempt = 0;
                }
                var code = await running.WaitAsync(token); // cancelled while connected: DisposeAsync closes the tunnel
                if (code is CloseCodes.ResourceClosed or CloseCodes.Unauthorized or CloseCodes.Forbidden or CloseCodes.NotFound)
                    throw new TunnelRefusedException(code, code == CloseCodes.ResourceClosed
                        ? "another agent took over this tunnel" : $"the gateway closed the tunnel ({code})");
                reason = $"connection closed ({code})";
                retryNow = code == CloseCodes.Stale;
            }
            catch (TunnelRefusedException ex) when (CloseCodes.ShouldReconnect(ex.Code) || ex.Code == 1006)
            {
                reason = ex.Message;
            }
            catch (Exception ex) when (ex is WebSocketException or HttpRequestException or IOException or TimeoutException ||
                                       ex is OperationCanceledException && !token.IsCancellationRequested)
            {
                reason = ex.Message;
            }
            catch (OperationCanceledException)
            {
                return;
            }
            running = null;
            if (token.IsCancellationRequested)
                return;
            var delay = retryNow ? TimeSpan.Zero : Backoff(attempt++);
            Disconnected?.Invoke(reason, delay);
            try
            {
                await Task.Delay(delay, token);
            }
            catch (OperationCanceledException)
            {
                return;
            }
        }
    }

    /// <summary>
    /// Exponential backoff with equal jitter: uniform in [ceiling/2, ceiling], ceiling = min(max, min * 2^attempt). Half
    /// fixed keeps a minimum delay; half random spreads a fleet of agents reconnecting after a gateway restart.
    /// </summary>
    private TimeSpan Backoff(int attempt)
    {
        var ceiling = Math.Min(_options.MaxBackoff.TotalMilliseconds, _options.MinBackoff.TotalMilliseconds * Math.Pow(2, Math.Min(attempt, 20)));
        var ms = ceiling / 2 + Random.Shared.NextDouble() * ceiling / 2;
        return TimeSpan.FromMilliseconds(ms);
    }

    /// <summary>Drops the current connection abruptly, as if the network or the process died (for tests and diagnostics).</summary>
    public void DropConnection() => _current?.Abort();

    internal void OnRequestCompleted(TunnelRequestCompleted completed) => RequestCompleted?.Invoke(completed);

    private long _dataPathBodies;
    private long _dataPathRefusals;

    /// <summary>Response bodies sent on the gateway's data path (docs/tunnels.md, "Data path") since the agent started.</summary>
    public long DataPathBodies => Interlocked.Read(ref _dataPathBodies);

    /// <summary>Data-path requests the gateway (or a proxy before it) refused; those bodies went over the WebSocket.</summary>
    public long DataPathRefusals => Interlocked.Read(ref _dataPathRefusals);

    internal void CountDataPath(bool sent) => Interlocked.Increment(ref sent ? ref _dataPathBodies : ref _dataPathRefusals);

    private long _splicedBytes;

    /// <summary>Response-body bytes that went from the local server's socket to the gateway's without a copy through the agent.</summary>
    public long SplicedBytes => Interlocked.Read(ref _splicedBytes);

    internal void CountSpliced(long bytes) => Interlocked.Add(ref _splicedBytes, bytes);

    public async ValueTask DisposeAsync()
    {
        if (Interlocked.Exchange(ref _disposeCalled, 1) != 0)
            return;
        // Close first: cancelling _disposed cancels the connection's pending receive, which aborts the WebSocket, and
        // the gateway would see a dropped connection (1006) instead of "agent stopped" (1000).
        if (_current is { } c)
            await c.CloseAsync();
        await _disposed.CancelAsync();
        _http.Dispose();
        _disposed.Dispose();
    }
}

/// <summary>One WebSocket to the gateway and the streams on it.</summary>
internal sealed class AgentConnection(TunnelAgent agent)
{
    private const int ConnectionAckThreshold = 64 * 1024;
    private readonly ClientWebSocket _socket = new();
    private readonly SemaphoreSlim _sendLock = new(1, 1);
    private readonly ConcurrentDictionary<uint, AgentStream> _streams = new();
    private readonly CancellationTokenSource _closed = new();
    private int _window = TunnelProtocol.DefaultStreamWindow;
    private int _connectionUnacked;
    private long _lastReceived = Stopwatch.GetTimestamp();
    private const int MaxDataRefusals = 3;
    private TunnelHelloAck? _dataOffer;
    private int _dataRefusals;

    public TunnelAgentOptions Options => agent.Options;

    public async Task<TunnelHelloAck> OpenAsync(string? name, CancellationToken cancellationToken)
    {
        _socket.Options.KeepAliveInterval = TimeSpan.Zero; // the protocol's own ping frames keep the connection alive
        var uri = new UriBuilder(new Uri(Options.Server, "tunnel/connect"));
        uri.Scheme = uri.Scheme == "https" ? "wss" : "ws";
        using var timeout = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
        timeout.CancelAfter(TimeSpan.FromSeconds(15));
        await _socket.ConnectAsync(uri.Uri, agent.Http, timeout.Token);
        var hello = new TunnelHello(TunnelProtocol.Version, Options.Token, name, Options.Buffered, Options.HostHeader, Options.BasicAuth,
            Options.AllowCidrs, Options.LocalTarget.ToString());
        await SendAsync(hello.Encode(), timeout.Token);
        var buffer = new ArrayBufferWriter<byte>(1024);
        while (true)
        {
            buffer.ResetWrittenCount();
            var type = await ReceiveMessageAsync(buffer, timeout.Token);
            if (type == WebSocketMessageType.Close)
                throw new TunnelRefusedException((int?)_socket.CloseStatus ?? 1006, _socket.CloseStatusDescription ?? "the gateway closed the connection");
            // A keepalive ping may come before the ack when the handshake is slow: answer it and wait on.
            if (buffer.WrittenCount >= TunnelProtocol.HeaderSize && TunnelProtocol.TypeOf(buffer.WrittenSpan) == TunnelFrameType.Ping)
            {
                await SendAsync(TunnelProtocol.Frame(TunnelFrameType.Pong, 0, TunnelProtocol.PayloadOf(buffer.WrittenSpan)), timeout.Token);
                continue;
            }
            break;
        }
        var frame = buffer.WrittenSpan;
        if (TunnelProtocol.TypeOf(frame) == TunnelFrameType.Error)
        {
            var (code, message) = TunnelProtocol.ReadError(TunnelProtocol.PayloadOf(frame));
            _socket.Abort();
            throw new TunnelRefusedException(code, message);
        }
        if (TunnelProtocol.TypeOf(frame) != TunnelFrameType.HelloAck)
            throw new TunnelRefusedException(CloseCodes.PolicyViolation, "unexpected first frame from the gateway");
        var ack = TunnelHelloAck.Decode(TunnelProtocol.PayloadOf(frame));
        _window = ack.StreamWindow;
        if (ack.OffersDataPath)
            _dataOffer = ack;
        // The idle clock starts with the acknowledged connection, not with the connect attempt: a slow handshake
        // must not shorten the first idle window.
        Volatile.Write(ref _lastReceived, Stopwatch.GetTimestamp());
        return ack;
    }

    /// <summary>Serves until the connection ends; returns the close code.</summary>
    public async Task<int> RunAsync(CancellationToken cancellationToken)
    {
        using var linked = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken, _closed.Token);
        var keepalive = KeepaliveAsync(linked.Token);
        var buffer = new ArrayBufferWriter<byte>(TunnelProtocol.MaxDataPayload + 64);
        try
        {
            while (true)
            {
                buffer.ResetWrittenCount();
                var type = await ReceiveMessageAsync(buffer, linked.Token);
                if (type == WebSocketMessageType.Close)
                {
                    try
                    {
                        using var timeout = new CancellationTokenSource(TimeSpan.FromSeconds(2));
                        await _sendLock.WaitAsync(timeout.Token);
                        try
                        {
                            await _socket.CloseOutputAsync(WebSocketCloseStatus.NormalClosure, "", timeout.Token);
                        }
                        finally
                        {
                            _sendLock.Release();
                        }
                    }
                    catch (Exception ex) when (ex is WebSocketException or OperationCanceledException or IOException)
                    {
                    }
                    return (int?)_socket.CloseStatus ?? 1006;
                }
                Volatile.Write(ref _lastReceived, Stopwatch.GetTimestamp());
                await HandleAsync(buffer.WrittenMemory);
            }
        }
        catch (Exception ex) when (ex is WebSocketException or IOException or OperationCanceledException or ObjectDisposedException)
        {
            return 1006;
        }
        catch (Exception ex) when (ex is FormatException or InvalidDataException)
        {
            // The gateway broke the protocol (malformed frame, window overrun): drop the connection and start over.
            _socket.Abort();
            return CloseCodes.PolicyViolation;
        }
        finally
        {
            await _closed.CancelAsync();
            var gone = new TunnelStreamAbortedException("the gateway connection ended");
            foreach (var s in _streams.Values)
                s.Fail(gone);
            _socket.Abort();
            try
            {
                await keepalive;
            }
            catch (OperationCanceledException)
            {
            }
        }
    }

    public void Abort()
    {
        _socket.Abort();
        _closed.Cancel();
    }

    public async Task CloseAsync()
    {
        var locked = false;
        try
        {
            locked = await _sendLock.WaitAsync(TimeSpan.FromSeconds(2), CancellationToken.None);
            using var timeout = new CancellationTokenSource(TimeSpan.FromSeconds(2));
            if (locked)
                await _socket.CloseOutputAsync(WebSocketCloseStatus.NormalClosure, "agent stopped", timeout.Token);
        }
        catch (Exception ex) when (ex is WebSocketException or IOException or OperationCanceledException or ObjectDisposedException)
        {
        }
        finally
        {
            if (locked)
                _sendLock.Release();
        }
        Abort();
    }

    private async Task KeepaliveAsync(CancellationToken cancellationToken)
    {
        using var timer = new PeriodicTimer(Options.PingInterval < Options.IdleTimeout ? Options.PingInterval : Options.IdleTimeout);
        while (await timer.WaitForNextTickAsync(cancellationToken))
        {
            if (Stopwatch.GetElapsedTime(Volatile.Read(ref _lastReceived)) > Options.IdleTimeout)
            {
                Abort(); // nothing from the gateway: the connection is dead, reconnect
                return;
            }
            var ping = new byte[TunnelProtocol.HeaderSize + 8];
            ping[0] = (byte)TunnelFrameType.Ping;
            BinaryPrimitives.WriteInt64BigEndian(ping.AsSpan(TunnelProtocol.HeaderSize), Stopwatch.GetTimestamp());
            await TrySendAsync(ping, cancellationToken);
        }
    }

    private async Task<WebSocketMessageType> ReceiveMessageAsync(ArrayBufferWriter<byte> buffer, CancellationToken cancellationToken)
    {
        while (true)
        {
            var result = await _socket.ReceiveAsync(buffer.GetMemory(16 * 1024), cancellationToken);
            if (result.MessageType == WebSocketMessageType.Close)
                return WebSocketMessageType.Close;
            buffer.Advance(result.Count);
            if (buffer.WrittenCount > 16 * 1024 * 1024)
                throw new FormatException("frame too large");
            if (result.EndOfMessage)
                return result.MessageType;
        }
    }

    private async ValueTask HandleAsync(ReadOnlyMemory<byte> frame)
    {
        if (frame.Length < TunnelProtocol.HeaderSize)
            throw new FormatException("short frame");
        var kind = TunnelProtocol.TypeOf(frame.Span);
        var id = TunnelProtocol.StreamOf(frame.Span);
        var payload = frame[TunnelProtocol.HeaderSize..];
        switch (kind)
        {
            case TunnelFrameType.Ping:
                await TrySendAsync(TunnelProtocol.Frame(TunnelFrameType.Pong, 0, payload.Span), CancellationToken.None);
                return;
            case TunnelFrameType.Pong:
                return;
            case TunnelFrameType.RequestHead:
            {
                var head = TunnelRequestHead.Decode(payload.Span);
                var stream = new AgentStream(this, id, head, _window);
                _streams[id] = stream;
                _ = stream.RunAsync();
                return;
            }
        }
        if (!_streams.TryGetValue(id, out var s))
            return;
        switch (kind)
        {
            case TunnelFrameType.RequestBody:
                s.Inbound.Write(payload.Span);
                await AckConnectionAsync(payload.Length);
                break;
            case TunnelFrameType.RequestEnd:
                s.Inbound.Complete();
                break;
            case TunnelFrameType.WsMessage:
                s.Inbound.WriteRecord(payload.Span[0], payload.Span[1..]);
                await AckConnectionAsync(payload.Length - 1 + InboundBuffer.RecordOverhead);
                break;
            case TunnelFrameType.WsClose:
                s.Inbound.WriteRecord(InboundBuffer.CloseFlag, payload.Span);
                s.Inbound.Complete();
                break;
            case TunnelFrameType.WindowUpdate:
                s.SendWindow.Grant(TunnelProtocol.ReadWindowUpdate(payload.Span));
                break;
            case TunnelFrameType.Abort:
                s.Fail(new TunnelStreamAbortedException("aborted by the gateway: " + new TunnelReader(payload.Span).String()));
                break;
        }
    }

    // The connection window is credit for bytes in transit: returned as soon as they sit in a stream buffer.
    private ValueTask AckConnectionAsync(int bytes)
    {
        _connectionUnacked += bytes;
        if (_connectionUnacked < ConnectionAckThreshold)
            return ValueTask.CompletedTask;
        var n = _connectionUnacked;
        _connectionUnacked = 0;
        return new ValueTask(TrySendAsync(TunnelProtocol.WindowUpdate(0, n), CancellationToken.None));
    }

    internal void Remove(AgentStream stream) => _streams.TryRemove(stream.Id, out _);

    /// <summary>
    /// Where a response body of <paramref name="length"/> bytes may go on the data path, or null: the gateway did not
    /// offer it, the body is too small, or the gateway (or a proxy in front of it) refused it three times in a row on
    /// this connection, so the round trip a refusal costs is not paid on every request.
    /// </summary>
    internal Uri? DataPathFor(uint stream, long length)
    {
        var offer = _dataOffer;
        if (offer is null || length < offer.DataMinBytes || Volatile.Read(ref _dataRefusals) >= MaxDataRefusals)
            return null;
        return new Uri(Options.Server, $"{offer.DataPath.TrimStart('/')}/{Uri.EscapeDataString(offer.Name)}/{stream}");
    }

    internal string DataKey => _dataOffer?.DataKey ?? "";

    /// <summary>
    /// Counts a data-path outcome. Refusals specific to one stream (404, 409) do not count against the connection; a
    /// failure after the body started (<paramref name="lostStream"/>) turns the data path off for the connection at once.
    /// </summary>
    internal void DataPathOutcome(bool sent, int status, bool lostStream = false)
    {
        agent.CountDataPath(sent);
        if (sent)
            Volatile.Write(ref _dataRefusals, 0);
        else if (lostStream)
            Volatile.Write(ref _dataRefusals, MaxDataRefusals);
        else if (status is not (404 or 409))
            Interlocked.Increment(ref _dataRefusals);
    }

    internal void Completed(TunnelRequestCompleted completed) => agent.OnRequestCompleted(completed);

    internal HttpMessageInvoker Http => agent.Http;

    internal bool ZeroCopy => agent.ZeroCopy;

    internal void CountSpliced(long bytes) => agent.CountSpliced(bytes);

    /// <summary>
    /// Sends one frame; frames of all streams are serialized on the socket. <paramref name="cancellationToken"/> (a
    /// stream's) cancels only the wait for the socket: a send that has started always finishes, because cancelling a
    /// WebSocket send aborts the whole WebSocket, and with it every other stream of the tunnel. Only the connection's own
    /// end stops a started send.
    /// </summary>
    internal async Task SendAsync(ReadOnlyMemory<byte> frame, CancellationToken cancellationToken)
    {
        await _sendLock.WaitAsync(cancellationToken);
        try
        {
            await _socket.SendAsync(frame, WebSocketMessageType.Binary, true, _closed.Token);
        }
        finally
        {
            _sendLock.Release();
        }
    }

    /// <summary>Like <see cref="SendAsync"/> but a dead connection is not an error (the read loop notices it).</summary>
    internal async Task<bool> TrySendAsync(ReadOnlyMemory<byte> frame, CancellationToken cancellationToken)
    {
        try
        {
            await SendAsync(frame, cancellationToken);
            return true;
        }
        catch (Exception ex) when (ex is WebSocketException or IOException or OperationCanceledException or ObjectDisposedException)
        {
            return false;
        }
    }

    internal CancellationToken ClosedToken => _closed.Token;

    internal static byte[] RandomPing() => RandomNumberGenerator.GetBytes(8);
}
