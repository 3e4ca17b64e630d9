using System.Buffers;
using System.Diagnostics;
using System.Net;
using System.Net.WebSockets;
using System.Text.Json;
using System.Text.Json.Serialization.Metadata;
using System.Threading.Channels;
using Microsoft.Extensions.Logging;
using Switchboard.Protocol;
using Switchboard.Server.Auth;
using Switchboard.Server.Diagnostics;

namespace Switchboard.Server.Connections;

/// <summary>Handles one complete inbound message. The memory is only valid until the returned task completes.</summary>
public delegate ValueTask MessageHandler(WsConnection connection, ReadOnlyMemory<byte> message, WebSocketMessageType type, CancellationToken cancellationToken);

/// <summary>
/// One WebSocket connection: a read loop (zero-byte reads while idle, messages bounded by size), a single writer
/// loop fed by a bounded queue, and one way to close. A consumer whose queue overflows is closed with
/// <see cref="CloseCodes.SlowConsumer"/> instead of buffering without bound. Transport only: it knows nothing of
/// channels, rooms or tunnels.
/// </summary>
public sealed partial class WsConnection
{
    private static readonly ReadOnlyMemory<byte> DefaultPing = """{"type":"ping"}"""u8.ToArray();

    private readonly WebSocket _socket;
    private readonly Channel<OutboundFrame> _queue;
    private readonly ConnectionSettings _settings;
    private readonly SwitchboardMetrics _metrics;
    private readonly ILogger _logger;
    private readonly TimeProvider _time;
    private readonly CancellationTokenSource _sendCancellation = new();
    private readonly TaskCompletionSource _completed = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private long _queuedBytes;
    private long _lastSeen;
    private long _lastPing;
    private int _closeRequested;
    private volatile bool _discardQueue;
    private int _closeCode = CloseCodes.Normal;
    private string _closeReason = "";
    private int _finished;
    private int _receiveHint = 4096;

    internal WsConnection(WebSocket socket, string endpoint, Grants grants, IPAddress? remoteIp, ConnectionSettings settings,
        SwitchboardMetrics metrics, ILogger logger, TimeProvider time)
    {
        _socket = socket;
        Endpoint = endpoint;
        Grants = grants;
        RemoteIp = remoteIp;
        _settings = settings;
        _metrics = metrics;
        _logger = logger;
        _time = time;
        Id = Convert.ToHexStringLower(System.Security.Cryptography.RandomNumberGenerator.GetBytes(8));
        ConnectedAt = time.GetUtcNow();
        _lastSeen = _lastPing = time.GetTimestamp();
        // When a close does not complete within its timeout, abort the socket so both loops end.
        _sendCancellation.Token.Register(static s => ((WebSocket)s!).Abort(), socket);
        _queue = Channel.CreateBounded<OutboundFrame>(new BoundedChannelOptions(settings.MaxQueuedMessages)
        {
            SingleReader = true,
            SingleWriter = false,
            AllowSynchronousContinuations = settings.InlineWrites,
            FullMode = BoundedChannelFullMode.Wait, // never waited on: TryWrite fails instead and the consumer is closed
        });
    }

    /// <summary>Random id, unique per process; clients see it in <c>welcome</c> and may pass it as <c>excludeConnection</c>.</summary>
    public string Id { get; }

    /// <summary>The endpoint name used in metrics and logs (<c>channels</c>, <c>rooms</c>, <c>tunnel</c>, ...).</summary>
    public string Endpoint { get; }

    public Grants Grants { get; }

    public IPAddress? RemoteIp { get; }

    public DateTimeOffset ConnectedAt { get; }

    /// <summary>Frame sent by the heartbeat; features with a binary protocol replace it with their own.</summary>
    public ReadOnlyMemory<byte> PingFrame { get; set; } = DefaultPing;

    /// <summary>Message type of <see cref="PingFrame"/>.</summary>
    public WebSocketMessageType PingFrameType { get; set; } = WebSocketMessageType.Text;

    /// <summary>Completes when both loops have ended and the socket is closed or aborted.</summary>
    public Task Completion => _completed.Task;

    /// <summary>True once a close was requested (by either side, a limit, or shutdown).</summary>
    public bool IsClosing => Volatile.Read(ref _closeRequested) != 0;

    /// <summary>The close code that ended (or is ending) the connection.</summary>
    public int CloseCode => _closeCode;

    internal long QueuedBytes => Interlocked.Read(ref _queuedBytes);

    /// <summary>
    /// Queues a frame. Never blocks. Returns false when the connection is closing or its queue is full; in the latter
    /// case the connection is closed with <see cref="CloseCodes.SlowConsumer"/>.
    /// </summary>
    public bool TrySend(in OutboundFrame frame)
    {
        if (_closeRequested != 0)
            return false;
        var bytes = Interlocked.Add(ref _queuedBytes, frame.Payload.Length);
        if (bytes > _settings.MaxQueuedBytes || !_queue.Writer.TryWrite(frame))
        {
            Interlocked.Add(ref _queuedBytes, -frame.Payload.Length);
            if (_closeRequested == 0)
            {
                _metrics.SlowConsumer(Endpoint);
                Log.SlowConsumer(_logger, Id, Endpoint, bytes);
                Close(CloseCodes.SlowConsumer, "slow consumer: outbound queue full", drain: false);
            }
            return false;
        }
        return true;
    }

    /// <summary>Serializes and queues one JSON message.</summary>
    public bool TrySendJson<T>(T value, JsonTypeInfo<T> typeInfo) =>
        TrySend(OutboundFrame.Text(JsonSerializer.SerializeToUtf8Bytes(value, typeInfo)));

    /// <summary>
    /// Requests a close. With <paramref name="drain"/> the frames already queued are written first (shutdown,
    /// resource closed); without it they are dropped (slow consumer, protocol violation). Idempotent: the first
    /// request wins. The socket is aborted if the close does not finish within the drain timeout.
    /// </summary>
    public void Close(int code, string reason, bool drain = true)
    {
        if (Interlocked.CompareExchange(ref _closeRequested, 1, 0) != 0)
            return;
        _closeCode = code;
        _closeReason = TruncateUtf8(reason, 123); // RFC 6455: the close reason is at most 123 bytes of UTF-8
        _discardQueue = !drain;
        _queue.Writer.TryComplete();
        try
        {
            _sendCancellation.CancelAfter(_settings.CloseTimeout);
        }
        catch (ObjectDisposedException)
        {
        }
    }

    /// <summary>Runs the read and write loops until the connection ends. Exceptions of the handler close the connection (1008 or 1011).</summary>
    public async Task RunAsync(MessageHandler handler, CancellationToken cancellationToken)
    {
        var writer = WriteLoopAsync();
        try
        {
            await ReadLoopAsync(handler, cancellationToken);
        }
        finally
        {
            // The read side is over: the peer closed, we closed, or the socket failed. Make sure the writer finishes.
            Close(_closeCode, _closeReason, drain: false);
            await writer;
            Finish();
        }
    }

    /// <summary>For a connection refused after the upgrade (bad token, limits): send the close frame and end.</summary>
    internal async Task RejectAsync(int code, string reason)
    {
        Close(code, reason, drain: false);
        try
        {
            using var timeout = new CancellationTokenSource(_settings.CloseTimeout);
            await _socket.CloseOutputAsync((WebSocketCloseStatus)code, _closeReason, timeout.Token);
            // Wait briefly for the peer's close frame so the TCP connection ends cleanly.
            var scratch = new byte[256];
            while (_socket.State == WebSocketState.CloseSent)
            {
                var r = await _socket.ReceiveAsync(scratch.AsMemory(), timeout.Token);
                if (r.MessageType == WebSocketMessageType.Close)
                    break;
            }
        }
        catch (Exception ex) when (ex is WebSocketException or OperationCanceledException or IOException)
        {
        }
        finally
        {
            _socket.Abort();
            Finish();
        }
    }

    internal void Heartbeat(long now, TimeSpan interval, TimeSpan timeout)
    {
        if (_closeRequested != 0)
            return;
        if (_time.GetElapsedTime(Volatile.Read(ref _lastSeen), now) > timeout)
        {
            Log.Stale(_logger, Id, Endpoint);
            Close(CloseCodes.Stale, "heartbeat timeout: reconnect", drain: false);
            return;
        }
        if (_time.GetElapsedTime(Volatile.Read(ref _lastPing), now) >= interval)
        {
            Volatile.Write(ref _lastPing, now);
            TrySend(new OutboundFrame(PingFrame, PingFrameType, Stopwatch.GetTimestamp()));
        }
    }

    private async Task ReadLoopAsync(MessageHandler handler, CancellationToken cancellationToken)
    {
        var max = _settings.MaxMessageBytes;
        try
        {
            while (true)
            {
                // Zero-byte read: an idle connection holds no receive buffer.
                var peek = await _socket.ReceiveAsync(Memory<byte>.Empty, cancellationToken);
                if (peek.MessageType == WebSocketMessageType.Close)
                {
                    OnPeerClosed();
                    return;
                }
                Volatile.Write(ref _lastSeen, _time.GetTimestamp());
                // Sized from the previous message, so streams of large frames (tunnels) are read without regrowing;
                // the buffer goes back to the pool after each message, so idle connections still hold none.
                var buffer = ArrayPool<byte>.Shared.Rent(_receiveHint);
                var length = 0;
                try
                {
                    ValueWebSocketReceiveResult result;
                    do
                    {
                        if (length == buffer.Length)
                        {
                            if (buffer.Length >= max + 1)
                            {
                                await CloseTooBigAsync(max);
                                return;
                            }
                            var bigger = ArrayPool<byte>.Shared.Rent(Math.Min(buffer.Length * 2, max + 1));
                            buffer.AsSpan(0, length).CopyTo(bigger);
                            ArrayPool<byte>.Shared.Return(buffer);
                            buffer = bigger;
                        }
                        result = await _socket.ReceiveAsync(buffer.AsMemory(length), cancellationToken);
                        if (result.MessageType == WebSocketMessageType.Close)
                        {
                            OnPeerClosed();
                            return;
                        }
                        length += result.Count;
                        if (length > max)
                        {
                            await CloseTooBigAsync(max);
                            return;
                        }
                    }
                    while (!result.EndOfMessage);

                    _receiveHint = Math.Clamp(length + 1, 4096, Math.Min(max + 1, 1024 * 1024));
                    if (_closeRequested != 0)
                        continue; // keep reading until the peer answers our close, but stop handling messages
                    _metrics.MessageReceived(Endpoint);
                    await handler(this, buffer.AsMemory(0, length), result.MessageType, cancellationToken);
                }
                finally
                {
                    ArrayPool<byte>.Shared.Return(buffer);
                }
            }
        }
        catch (ProtocolViolationException ex)
        {
            Close(CloseCodes.PolicyViolation, ex.Message, drain: false);
            await DrainReadsAsync();
        }
        catch (JsonException ex)
        {
            Close(CloseCodes.PolicyViolation, "malformed message: " + ex.Message, drain: false);
            await DrainReadsAsync();
        }
        catch (Exception ex) when (ex is WebSocketException or OperationCanceledException or IOException)
        {
            // Socket gone or aborted: nothing to answer.
            if (_closeRequested == 0)
            {
                _closeCode = 1006;
                _closeReason = "connection lost";
            }
        }
        catch (Exception ex)
        {
            Log.HandlerFailed(_logger, ex, Id, Endpoint);
            Close(CloseCodes.InternalError, "internal error", drain: false);
            await DrainReadsAsync();
        }
    }

    private async Task CloseTooBigAsync(int max)
    {
        Close(CloseCodes.MessageTooBig, $"message exceeds {max} bytes", drain: false);
        await DrainReadsAsync();
    }

    private void OnPeerClosed()
    {
        var status = _socket.CloseStatus is { } s ? (int)s : CloseCodes.Normal;
        if (_closeRequested == 0)
            Close(status, _socket.CloseStatusDescription ?? "", drain: false);
    }

    // After we decided to close, wait (bounded) for the peer's close frame.
    private async Task DrainReadsAsync()
    {
        try
        {
            using var timeout = new CancellationTokenSource(_settings.CloseTimeout);
            var scratch = ArrayPool<byte>.Shared.Rent(1024);
            try
            {
                while (_socket.State is WebSocketState.Open or WebSocketState.CloseSent)
                {
                    var r = await _socket.ReceiveAsync(scratch.AsMemory(), timeout.Token);
                    if (r.MessageType == WebSocketMessageType.Close)
                        return;
                }
            }
            finally
            {
                ArrayPool<byte>.Shared.Return(scratch);
            }
        }
        catch (Exception ex) when (ex is WebSocketException or OperationCanceledException or IOException)
        {
        }
    }

    private async Task WriteLoopAsync()
    {
        await Task.Yield();
        var reader = _queue.Reader;
        var token = _sendCancellation.Token;
        try
        {
            while (await reader.WaitToReadAsync(CancellationToken.None))
            {
                var sent = 0;
                while (!_discardQueue && reader.TryRead(out var frame))
                {
                    // No token per send (registering one costs an allocation per message): a close that does not
                    // finish in time aborts the socket through _sendCancellation's registration instead.
                    await _socket.SendAsync(frame.Payload, frame.Type, endOfMessage: true, CancellationToken.None);
                    Interlocked.Add(ref _queuedBytes, -frame.Payload.Length);
                    sent++;
                    if (_metrics.DeliveryDurationEnabled)
                        _metrics.DeliveryDuration(frame.EnqueuedTimestamp);
                }
                if (sent > 0)
                    _metrics.MessagesSent(Endpoint, sent);
                if (_discardQueue)
                    break;
            }
            if (_socket.State is WebSocketState.Open or WebSocketState.CloseReceived)
                await _socket.CloseOutputAsync((WebSocketCloseStatus)SafeCode(_closeCode), _closeReason, token);
        }
        catch (Exception ex) when (ex is WebSocketException or OperationCanceledException or IOException or ObjectDisposedException)
        {
            // Peer gone, or the close did not finish within the timeout: abort below.
            _socket.Abort();
        }
        catch (Exception ex)
        {
            Log.WriterFailed(_logger, ex, Id, Endpoint);
            _socket.Abort();
        }
    }

    internal static string TruncateUtf8(string text, int maxBytes)
    {
        if (System.Text.Encoding.UTF8.GetByteCount(text) <= maxBytes)
            return text;
        var length = text.Length;
        while (length > 0 && System.Text.Encoding.UTF8.GetByteCount(text.AsSpan(0, length)) > maxBytes - 3)
            length--;
        if (length > 0 && char.IsHighSurrogate(text[length - 1]))
            length--;
        return text[..length] + "…";
    }

    private static int SafeCode(int code) => code is 1005 or 1006 or 1015 ? CloseCodes.Normal : code;

    private void Finish()
    {
        if (Interlocked.Exchange(ref _finished, 1) != 0)
            return;
        _socket.Abort();
        _socket.Dispose();
        _sendCancellation.Dispose();
        _completed.TrySetResult();
    }

    private static partial class Log
    {
        [LoggerMessage(1001, LogLevel.Information, "Connection {ConnectionId} ({Endpoint}) is a slow consumer ({QueuedBytes} bytes queued); closing with 4008.")]
        public static partial void SlowConsumer(ILogger logger, string connectionId, string endpoint, long queuedBytes);

        [LoggerMessage(1002, LogLevel.Information, "Connection {ConnectionId} ({Endpoint}) missed its heartbeat; closing with 4000.")]
        public static partial void Stale(ILogger logger, string connectionId, string endpoint);

        [LoggerMessage(1003, LogLevel.Error, "Message handler failed on connection {ConnectionId} ({Endpoint}); closing with 1011.")]
        public static partial void HandlerFailed(ILogger logger, Exception exception, string connectionId, string endpoint);

        [LoggerMessage(1004, LogLevel.Warning, "Writer failed on connection {ConnectionId} ({Endpoint}).")]
        public static partial void WriterFailed(ILogger logger, Exception exception, string connectionId, string endpoint);
    }
}

/// <summary>The limits one connection enforces, resolved from options once.</summary>
/// <param name="InlineWrites">
/// When true, the thread that queues a frame also runs the write loop until the socket send would wait (no thread-pool
/// hop per frame). For interactive connections with one producer thread (terminals): one wake-up less per keystroke echo.
/// </param>
internal sealed record ConnectionSettings(int MaxMessageBytes, int MaxQueuedMessages, long MaxQueuedBytes, TimeSpan CloseTimeout, bool InlineWrites = false);
