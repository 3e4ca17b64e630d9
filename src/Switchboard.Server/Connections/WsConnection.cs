using System.Buffers;
using System.Diagnostics;
using System.IO.Pipelines;
using System.Net;
using System.Net.WebSockets;
using System.Text.Json;
using System.Text.Json.Serialization.Metadata;
using Microsoft.Extensions.Logging;
using Switchboard.Protocol;
using Switchboard.Server.Auth;
using Switchboard.Server.Diagnostics;

namespace Switchboard.Server.Connections;

/// <summary>Handles one complete inbound message. The memory is only valid until the returned task completes.</summary>
public delegate ValueTask MessageHandler(WsConnection connection, ReadOnlyMemory<byte> message, WebSocketMessageType type, CancellationToken cancellationToken);

/// <summary>
/// One WebSocket connection: a read loop (zero-byte reads while idle, messages bounded by size), one sender at a
/// time, and one way to close. There is no writer loop waiting while idle: <see cref="TrySend"/> queues the frame
/// (bounded) and, when no sender is active, schedules one on the thread pool (the connection is its own work item,
/// so scheduling allocates nothing). The sender drains the queue synchronously while sends complete synchronously
/// (a WebSocket send into Kestrel's output pipe does until the peer applies backpressure) and continues
/// asynchronously only when one did not; then it ends. The broadcasting thread never writes to sockets itself, so a
/// fan-out to many connections spreads over every core. An idle connection holds no writer task or buffer. A consumer whose queue overflows is closed with
/// <see cref="CloseCodes.SlowConsumer"/> instead of buffering without bound. Transport only: it knows nothing of
/// channels, rooms or tunnels.
/// </summary>
public sealed partial class WsConnection : IThreadPoolWorkItem
{
    private static readonly ReadOnlyMemory<byte> DefaultPing = """{"type":"ping"}"""u8.ToArray();

    private readonly WebSocket _socket;
    private readonly Lock _sendLock = new();
    // Guarded by _sendLock: frames waiting while a send is in flight (allocated on first use), whether a sender is
    // active, whether the close frame was handled, whether a send failed, and who waits for the sender to finish.
    private Queue<OutboundFrame>? _pending;
    private bool _sending;
    private bool _closeFrameDone;
    private bool _closeArmed; // a close was requested and its code and reason are set
    private bool _sendFailed;
    private TaskCompletionSource? _senderIdle;
    private readonly ConnectionSettings _settings;
    private readonly SwitchboardMetrics _metrics;
    private readonly ILogger _logger;
    private readonly TimeProvider _time;
    private readonly ConnectionManager? _manager;
    // Created by the first Close: bounds the close (and the drain before it) by aborting the socket when it fires.
    private CancellationTokenSource? _sendCancellation;
    private readonly TaskCompletionSource _completed = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private long _queuedBytes;
    private long _lastSeen;
    private long _lastPing;
    private int _closeRequested;
    private int _closeCode = CloseCodes.Normal;
    private string _closeReason = "";
    private int _finished;
    private int _receiveHint = 4096;
    private uint _sentFrames; // only the active sender touches it
    private DuplexPipeStream? _direct;

    internal WsConnection(WebSocket socket, string endpoint, Grants grants, IPAddress? remoteIp, ConnectionSettings settings,
        SwitchboardMetrics metrics, ILogger logger, TimeProvider time, ConnectionManager? manager = null)
    {
        _manager = manager;
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

    /// <summary>Bytes waiting behind the send in flight (0 while sends keep up).</summary>
    internal long QueuedBytes => Volatile.Read(ref _queuedBytes);

    /// <summary>
    /// Sends or queues a frame. Never blocks. Returns false when the connection is closing or its queue is full; in the
    /// latter case the connection is closed with <see cref="CloseCodes.SlowConsumer"/>.
    /// </summary>
    public bool TrySend(in OutboundFrame frame)
    {
        if (!TryEnqueue(frame, out var startSender))
            return false;
        if (startSender)
            StartSender();
        return true;
    }

    /// <summary>
    /// Queues a frame like <see cref="TrySend"/> but leaves starting the sender to the caller: when
    /// <paramref name="startSender"/> comes back true the caller must call <see cref="StartSender"/> (soon, on any
    /// thread), or the connection sends nothing more. Lets a fan-out start many connections' senders in a few
    /// thread-pool work items instead of one each.
    /// </summary>
    internal bool TryEnqueue(in OutboundFrame frame, out bool startSender)
    {
        startSender = false;
        if (_closeRequested != 0)
            return false;
        long overflowBytes;
        lock (_sendLock)
        {
            if (_sendFailed || _closeRequested != 0)
                return false;
            var queue = _pending ??= new Queue<OutboundFrame>();
            var bytes = _queuedBytes + frame.Payload.Length;
            if (queue.Count >= _settings.MaxQueuedMessages || bytes > _settings.MaxQueuedBytes)
            {
                overflowBytes = bytes;
            }
            else
            {
                queue.Enqueue(frame);
                Volatile.Write(ref _queuedBytes, bytes);
                if (_sending)
                    return true; // the active sender takes it
                _sending = true;
                overflowBytes = -1;
            }
        }
        if (overflowBytes >= 0)
        {
            if (_closeRequested == 0)
            {
                _metrics.SlowConsumer(Endpoint);
                Log.SlowConsumer(_logger, Id, Endpoint, overflowBytes);
                Close(CloseCodes.SlowConsumer, "slow consumer: outbound queue full", drain: false);
            }
            return false;
        }
        startSender = true;
        return true;
    }

    /// <summary>Starts the sender after <see cref="TryEnqueue"/> asked for it.</summary>
    internal void StartSender()
    {
        if (_settings.InlineWrites)
            ((IThreadPoolWorkItem)this).Execute(); // interactive: write on the producer's thread, no hop per frame
        else
            ThreadPool.UnsafeQueueUserWorkItem(this, preferLocal: false);
    }

    /// <summary>Runs the sender on the calling thread (a fan-out work item), after <see cref="TryEnqueue"/> asked for it.</summary>
    internal void RunSender()
    {
        try
        {
            ((IThreadPoolWorkItem)this).Execute();
        }
        catch (Exception ex)
        {
            OnSendFailed(ex, 0); // this connection is done; the fan-out goes on with the next one
        }
    }

    // The scheduled sender.
    void IThreadPoolWorkItem.Execute()
    {
        if (TryTakeNext(out var frame, 0))
            SendFrom(frame);
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
        // When the close does not complete within its timeout, abort the socket so reads and sends end.
        var cancellation = new CancellationTokenSource();
        cancellation.Token.Register(static s => ((WebSocket)s!).Abort(), _socket);
        Volatile.Write(ref _sendCancellation, cancellation);
        if (Volatile.Read(ref _finished) != 0)
            cancellation.Dispose(); // Finish ran before the source was published: nothing left to bound
        _closeCode = code;
        _closeReason = TruncateUtf8(reason, 123); // RFC 6455: the close reason is at most 123 bytes of UTF-8
        var startClose = false;
        lock (_sendLock)
        {
            _closeArmed = true;
            if (!drain && _pending is { Count: > 0 })
            {
                _pending.Clear();
                Volatile.Write(ref _queuedBytes, 0);
            }
            if (!_sending && !_closeFrameDone)
            {
                _sending = true; // no send in flight: the close frame goes now; otherwise the active sender sends it
                startClose = true;
            }
        }
        if (startClose)
            _ = SendCloseFrameAsync();
        try
        {
            cancellation.CancelAfter(_settings.CloseTimeout);
        }
        catch (ObjectDisposedException)
        {
        }
    }

    /// <summary>For a connection refused after the upgrade (bad token, limits): send the close frame and end.</summary>
    internal async Task RejectAsync(int code, string reason)
    {
        Close(code, reason, drain: false); // sends the close frame (bounded by the close timeout)
        try
        {
            await SenderIdleAsync();
            // Wait briefly for the peer's close frame so the TCP connection ends cleanly.
            using var timeout = new CancellationTokenSource(_settings.CloseTimeout);
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

    /// <summary>
    /// Runs the connection until it ends: reads messages and hands each to <paramref name="handler"/> (with
    /// <paramref name="cancellationToken"/>); exceptions of the handler close the connection (1008 or 1011). Idle reads
    /// are not registered with the token: they end when the socket closes or is aborted. One async frame per idle
    /// connection (the read loop and its cleanup), since every frame is memory held by every idle connection.
    /// </summary>
    public async Task RunAsync(MessageHandler handler, CancellationToken cancellationToken)
    {
        var max = _settings.MaxMessageBytes;
        try
        {
            while (true)
            {
                // Zero-byte read: an idle connection holds no receive buffer.
                var peek = await _socket.ReceiveAsync(Memory<byte>.Empty, CancellationToken.None);
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

                    // Exactly the last length (a message that fills the buffer still ends it): a 256 KiB tunnel frame rents
                    // from the 256 KiB pool bucket, not the 512 KiB one.
                    _receiveHint = Math.Clamp(length, 4096, Math.Min(max + 1, 1024 * 1024));
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
        finally
        {
            // The read side is over: the peer closed, we closed, or the socket failed. Make sure the sender finishes.
            Close(_closeCode, _closeReason, drain: false);
            await SenderIdleAsync();
            Finish();
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

    /// <summary>
    /// For a connection accepted on the transport (<see cref="WsFastUpgrade"/>): the sender encodes queued messages
    /// straight into the transport's output pipe and flushes once per batch, so a burst to one connection leaves in one
    /// send system call instead of one per message. Control frames and the close handshake stay with the WebSocket.
    /// </summary>
    internal void UseDirectWrites(DuplexPipeStream stream) => Volatile.Write(ref _direct, stream);

    // The sender: writes `frame`, then whatever queued up meanwhile, synchronously while sends complete synchronously.
    private void SendFrom(OutboundFrame frame)
    {
        if (Volatile.Read(ref _direct) is { } direct)
        {
            _ = SendBatchesAsync(direct, frame);
            return;
        }
        var sent = 0;
        while (true)
        {
            ValueTask send;
            try
            {
                // No token per send (registering one costs an allocation per message): a close that does not finish
                // in time aborts the socket through _sendCancellation's registration instead.
                send = _socket.SendAsync(frame.Payload, frame.Type, endOfMessage: true, CancellationToken.None);
            }
            catch (Exception ex)
            {
                OnSendFailed(ex, sent);
                return;
            }
            if (!send.IsCompletedSuccessfully)
            {
                if (sent > 0)
                    _metrics.MessagesSent(Endpoint, sent);
                _ = ContinueSendingAsync(send, frame);
                return;
            }
            OnSent(frame);
            sent++;
            if (!TryTakeNext(out frame, sent))
                return;
        }
    }

    // The asynchronous continuation of the sender after a send that did not complete at once (backpressure).
    private async Task ContinueSendingAsync(ValueTask pending, OutboundFrame frame)
    {
        var sent = 0;
        try
        {
            await pending;
            while (true)
            {
                OnSent(frame);
                sent++;
                if (!TryTakeNext(out frame, sent))
                    return;
                await _socket.SendAsync(frame.Payload, frame.Type, endOfMessage: true, CancellationToken.None);
            }
        }
        catch (Exception ex)
        {
            OnSendFailed(ex, sent);
        }
    }

    // Batched sender (direct connections): `frame` and whatever is queued, up to MaxBatchBytes per flush, then the next
    // batch, until the queue is empty. Completes synchronously (no allocation) while flushes do.
    private async Task SendBatchesAsync(DuplexPipeStream direct, OutboundFrame frame)
    {
        var sent = 0;
        try
        {
            while (true)
            {
                // Counted once flushed; the frame is not kept once written (an idle connection holds no payload).
                sent += await direct.WriteFramesAsync((connection: this, frame), static (s, writer) => s.connection.WriteBatch(writer, s.frame));
                if (!TryTakeNext(out frame, sent))
                    return;
            }
        }
        catch (Exception ex)
        {
            OnSendFailed(ex, sent);
        }
    }

    // Writes `frame` and whatever is queued, until the queue is empty or MaxBatchBytes are written; returns the count.
    private int WriteBatch(PipeWriter writer, OutboundFrame frame)
    {
        var bytes = 0L;
        var count = 0;
        do
        {
            bytes += WsFrameWriter.Write(writer, frame);
            OnSent(frame);
            count++;
        }
        while (bytes < MaxBatchBytes && TryDequeue(out frame));
        return count;
    }

    private const int MaxBatchBytes = 64 * 1024;

    // A queued frame for the active sender, without giving up the sender role when there is none.
    private bool TryDequeue(out OutboundFrame frame)
    {
        lock (_sendLock)
            return TryDequeueLocked(out frame);
    }

    // Under _sendLock.
    private bool TryDequeueLocked(out OutboundFrame frame)
    {
        if (_pending is { Count: > 0 } queue)
        {
            frame = queue.Dequeue();
            Volatile.Write(ref _queuedBytes, _queuedBytes - frame.Payload.Length);
            return true;
        }
        frame = default;
        return false;
    }

    // The delivery-latency histogram records one frame in DeliverySampleEvery per connection: recording every frame
    // (a timestamp and shared bucket counters updated from every core) cost a fifth of the fan-out throughput.
    private void OnSent(in OutboundFrame frame)
    {
        if ((++_sentFrames & (SwitchboardMetrics.DeliverySampleEvery - 1)) == 0 && _metrics.DeliveryDurationEnabled)
            _metrics.DeliveryDuration(frame.EnqueuedTimestamp);
    }

    // Next queued frame for the sender, or false after handing off: to the close frame when a close was requested,
    // else to nobody (the sender role is released; the next TrySend sends inline again).
    private bool TryTakeNext(out OutboundFrame frame, int sent)
    {
        TaskCompletionSource? idle = null;
        var startClose = false;
        lock (_sendLock)
        {
            if (TryDequeueLocked(out frame))
                return true;
            if (_closeArmed && !_closeFrameDone)
            {
                startClose = true; // keep _sending: the close frame follows the last queued frame
            }
            else
            {
                _sending = false;
                idle = _senderIdle;
                _senderIdle = null;
            }
        }
        if (sent > 0)
            _metrics.MessagesSent(Endpoint, sent);
        if (startClose)
            _ = SendCloseFrameAsync();
        idle?.TrySetResult();
        return false;
    }

    private async Task SendCloseFrameAsync()
    {
        try
        {
            if (_socket.State is WebSocketState.Open or WebSocketState.CloseReceived)
                await _socket.CloseOutputAsync((WebSocketCloseStatus)SafeCode(_closeCode), _closeReason, _sendCancellation!.Token);
        }
        catch (Exception ex) when (ex is WebSocketException or OperationCanceledException or IOException or ObjectDisposedException)
        {
            // Peer gone, or the close did not finish within the timeout.
            _socket.Abort();
        }
        catch (Exception ex)
        {
            Log.WriterFailed(_logger, ex, Id, Endpoint);
            _socket.Abort();
        }
        TaskCompletionSource? idle;
        lock (_sendLock)
        {
            _closeFrameDone = true;
            _sending = false;
            idle = _senderIdle;
            _senderIdle = null;
        }
        idle?.TrySetResult();
    }

    private void OnSendFailed(Exception ex, int sent)
    {
        if (ex is not (WebSocketException or OperationCanceledException or IOException or ObjectDisposedException))
            Log.WriterFailed(_logger, ex, Id, Endpoint);
        // Peer gone, or a close that did not finish in time aborted the socket: nothing more can be sent.
        _socket.Abort();
        if (sent > 0)
            _metrics.MessagesSent(Endpoint, sent);
        TaskCompletionSource? idle;
        lock (_sendLock)
        {
            _sendFailed = true;
            _closeFrameDone = true;
            _pending = null;
            Volatile.Write(ref _queuedBytes, 0);
            _sending = false;
            idle = _senderIdle;
            _senderIdle = null;
        }
        idle?.TrySetResult();
    }

    // Completes when no send is in flight and, once a close was requested, the close frame was handled.
    private Task SenderIdleAsync()
    {
        lock (_sendLock)
        {
            if (!_sending && (_closeFrameDone || !_closeArmed))
                return Task.CompletedTask;
            _senderIdle ??= new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
            return _senderIdle.Task;
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
        Volatile.Read(ref _sendCancellation)?.Dispose();
        _manager?.Unregister(this);
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
/// When true, the thread that queues a frame to an idle connection sends it (and whatever queues meanwhile) itself until
/// a socket send would wait, instead of scheduling the sender on the thread pool. For interactive connections with one producer thread (terminals): one wake-up less per keystroke echo.
/// </param>
internal sealed record ConnectionSettings(int MaxMessageBytes, int MaxQueuedMessages, long MaxQueuedBytes, TimeSpan CloseTimeout, bool InlineWrites = false);
