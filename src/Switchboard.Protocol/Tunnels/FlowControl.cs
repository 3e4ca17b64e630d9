using System.Buffers;
using System.Buffers.Binary;
using System.IO.Pipelines;

namespace Switchboard.Protocol.Tunnels;

/// <summary>
/// The sender's side of a flow-control window (as in HTTP/2, Kestrel's <c>StreamOutputFlowControl</c>): data may be
/// sent only while credit remains; the receiver returns credit with window updates as it consumes. Several senders
/// may wait on one window (the connection window).
/// </summary>
public sealed class FlowWindow(long initial)
{
    private readonly Lock _lock = new();
    private long _available = initial;
    private TaskCompletionSource? _waiter;
    private Exception? _closed;

    public long Available
    {
        get
        {
            lock (_lock)
                return _available;
        }
    }

    public void Grant(long increment)
    {
        TaskCompletionSource? wake;
        lock (_lock)
        {
            _available += increment;
            wake = _waiter;
            _waiter = null;
        }
        wake?.TrySetResult();
    }

    /// <summary>Fails current and future waiters (stream or connection ended).</summary>
    public void Close(Exception reason)
    {
        TaskCompletionSource? wake;
        lock (_lock)
        {
            _closed ??= reason;
            wake = _waiter;
            _waiter = null;
        }
        wake?.TrySetResult();
    }

    /// <summary>Waits for credit and takes up to <paramref name="wanted"/> bytes of it (at least 1).</summary>
    public async ValueTask<int> TakeAsync(int wanted, CancellationToken cancellationToken)
    {
        while (true)
        {
            Task wait;
            lock (_lock)
            {
                if (_closed is not null)
                    throw _closed;
                if (_available > 0)
                {
                    var take = (int)Math.Min(wanted, _available);
                    _available -= take;
                    return take;
                }
                _waiter ??= new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
                wait = _waiter.Task;
            }
            await wait.WaitAsync(cancellationToken).ConfigureAwait(false);
        }
    }
}

/// <summary>
/// The receiver's side of one stream: a pipe holding at most one window of data that arrived but was not yet
/// consumed. A peer that sends beyond the window breaks the protocol (<see cref="InvalidDataException"/>), so the
/// buffer is bounded without ever blocking the connection's read loop. WebSocket messages are stored as records
/// <c>[flags:1][length:4][data]</c>.
/// </summary>
public sealed class InboundBuffer(int window)
{
    /// <summary>Record flag: close record (data = code:2 + reason).</summary>
    public const byte CloseFlag = 4;

    /// <summary>Credit charged per WebSocket record besides its data, so empty messages cannot flood the buffer.</summary>
    public const int RecordOverhead = 5;

    private readonly Pipe _pipe = new(new PipeOptions(pauseWriterThreshold: 0, resumeWriterThreshold: 0, minimumSegmentSize: 16 * 1024, useSynchronizationContext: false));
    private readonly Lock _lock = new();
    private long _buffered;
    private bool _completed;

    public PipeReader Reader => _pipe.Reader;

    /// <summary>Total bytes received (for the request log).</summary>
    public long Received { get; private set; }

    public void Write(ReadOnlySpan<byte> data)
    {
        lock (_lock)
        {
            if (_completed)
                return; // late data after an abort
            Charge(data.Length);
            Received += data.Length;
            // One segment per bulk frame (the consumer then writes it on in one piece); small chunks share segments.
            var writer = _pipe.Writer;
            while (!data.IsEmpty)
            {
                var span = writer.GetSpan(Math.Min(data.Length, TunnelProtocol.MaxResponseDataPayload));
                var n = Math.Min(span.Length, data.Length);
                data[..n].CopyTo(span);
                writer.Advance(n);
                data = data[n..];
            }
            Flush();
        }
    }

    /// <summary>
    /// How much consumed credit a receiver collects before it sends a window update: a quarter of the window, at most
    /// 64 KiB. A bulk frame is returned at once; a stream of small chunks (SSE) is acknowledged in batches.
    /// </summary>
    public static int UpdateThreshold(int window) => Math.Clamp(window / 4, 1, 64 * 1024);

    public void WriteRecord(byte flags, ReadOnlySpan<byte> data)
    {
        lock (_lock)
        {
            if (_completed)
                return;
            Charge(data.Length + RecordOverhead);
            Received += data.Length;
            var span = _pipe.Writer.GetSpan(RecordOverhead);
            span[0] = flags;
            BinaryPrimitives.WriteInt32BigEndian(span[1..], data.Length);
            _pipe.Writer.Advance(RecordOverhead);
            _pipe.Writer.Write(data);
            Flush();
        }
    }

    public void Complete(Exception? error = null)
    {
        lock (_lock)
        {
            if (_completed)
                return;
            _completed = true;
            _pipe.Writer.Complete(error);
        }
    }

    /// <summary>The consumer took <paramref name="bytes"/> (as charged) out of the buffer.</summary>
    public void Consumed(long bytes) => Interlocked.Add(ref _buffered, -bytes);

    /// <summary>Parses one WebSocket record from <paramref name="buffer"/>.</summary>
    public static bool TryReadRecord(ref ReadOnlySequence<byte> buffer, out byte flags, out ReadOnlySequence<byte> data)
    {
        flags = 0;
        data = default;
        if (buffer.Length < RecordOverhead)
            return false;
        Span<byte> head = stackalloc byte[RecordOverhead];
        buffer.Slice(0, RecordOverhead).CopyTo(head);
        var length = BinaryPrimitives.ReadInt32BigEndian(head[1..]);
        if (buffer.Length < RecordOverhead + length)
            return false;
        flags = head[0];
        data = buffer.Slice(RecordOverhead, length);
        buffer = buffer.Slice(RecordOverhead + length);
        return true;
    }

    private void Charge(int bytes)
    {
        if (Interlocked.Add(ref _buffered, bytes) > window)
        {
            Interlocked.Add(ref _buffered, -bytes); // refused data is not buffered
            throw new InvalidDataException("peer sent more than the stream window allows");
        }
    }

    private void Flush()
    {
        // Never pauses (thresholds are 0): the window bounds the buffer instead.
        var flush = _pipe.Writer.FlushAsync();
        if (flush.IsCompleted)
            flush.GetAwaiter().GetResult();
        else
            _ = flush.AsTask();
    }
}

/// <summary>A stream was aborted by the peer or its connection ended.</summary>
public sealed class TunnelStreamAbortedException(string message) : Exception(message);
