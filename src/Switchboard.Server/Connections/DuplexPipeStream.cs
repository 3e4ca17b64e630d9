using System.Buffers;
using System.IO.Pipelines;

namespace Switchboard.Server.Connections;

/// <summary>
/// The stream a WebSocket reads and writes when it was accepted on the connection itself (<see cref="WsFastUpgrade"/>):
/// reads copy out of the transport's input pipe, writes go into its output pipe. A zero-byte read waits for data without
/// taking a buffer (the transport itself waits for readability before renting one), so an idle socket holds none.
/// Disposing wakes a pending read or flush; it does not close the connection (the connection middleware decides
/// between a graceful end and an abort).
/// </summary>
internal sealed class DuplexPipeStream(IDuplexPipe transport) : Stream
{
    private readonly PipeReader _input = transport.Input;
    private readonly PipeWriter _output = transport.Output;
    // Serializes every write to the output pipe: the WebSocket's own (control frames, close) through WriteAsync and
    // WsConnection's batches through WriteFramesAsync; a holder keeps it until its flush completed.
    private readonly SemaphoreSlim _writeGate = new(1, 1);
    private volatile bool _disposed;
    private bool _closeWritten; // under the gate

    public override bool CanRead => true;
    public override bool CanWrite => true;
    public override bool CanSeek => false;

    public override async ValueTask<int> ReadAsync(Memory<byte> destination, CancellationToken cancellationToken = default)
    {
        while (true)
        {
            ObjectDisposedException.ThrowIf(_disposed, this);
            var result = await _input.ReadAsync(cancellationToken);
            var buffer = result.Buffer;
            if (result.IsCanceled)
            {
                _input.AdvanceTo(buffer.Start);
                ObjectDisposedException.ThrowIf(_disposed, this);
                continue;
            }
            if (buffer.IsEmpty && result.IsCompleted)
            {
                _input.AdvanceTo(buffer.End);
                return 0; // the peer closed the connection
            }
            if (destination.IsEmpty)
            {
                _input.AdvanceTo(buffer.Start); // data is there; consume and examine nothing, so the next read returns at once
                return 0;
            }
            var count = (int)Math.Min(buffer.Length, destination.Length);
            var slice = buffer.Slice(0, count);
            slice.CopyTo(destination.Span);
            _input.AdvanceTo(slice.End);
            return count;
        }
    }

    public override Task<int> ReadAsync(byte[] buffer, int offset, int count, CancellationToken cancellationToken) =>
        ReadAsync(buffer.AsMemory(offset, count), cancellationToken).AsTask();

    public override async ValueTask WriteAsync(ReadOnlyMemory<byte> source, CancellationToken cancellationToken = default)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        await _writeGate.WaitAsync(cancellationToken);
        try
        {
            ObjectDisposedException.ThrowIf(_disposed, this);
            // The WebSocket writes one whole frame per call. A close frame of its own (the peer sent invalid data)
            // must be the last frame on the wire: batches stop here.
            if (IsCloseFrame(source.Span))
                _closeWritten = true;
            var result = await _output.WriteAsync(source, cancellationToken);
            if (result.IsCanceled)
                throw new ObjectDisposedException(nameof(DuplexPipeStream));
            if (result.IsCompleted)
                throw new IOException("the connection was closed");
        }
        finally
        {
            _writeGate.Release();
        }
    }

    /// <summary>
    /// Writes frames into the output pipe with <paramref name="write"/> under the write gate, then flushes once: a burst
    /// of messages leaves in one send. Returns what <paramref name="write"/> returned (the number of frames), once
    /// flushed. Throws <see cref="IOException"/> when the connection is gone.
    /// </summary>
    public async ValueTask<int> WriteFramesAsync<TState>(TState state, Func<TState, PipeWriter, int> write)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        await _writeGate.WaitAsync();
        try
        {
            ObjectDisposedException.ThrowIf(_disposed, this);
            if (_closeWritten)
                throw new IOException("the WebSocket sent its close frame");
            int written;
            try
            {
                written = write(state, _output);
            }
            catch (InvalidOperationException ex)
            {
                throw new IOException("the connection was closed", ex); // the transport completed the pipe
            }
            var result = await _output.FlushAsync();
            if (result.IsCanceled || result.IsCompleted)
                throw new IOException("the connection was closed");
            return written;
        }
        finally
        {
            _writeGate.Release();
        }
    }

    // An unmasked server close frame, complete in this buffer: FIN + opcode 8, a 7-bit length that covers the rest.
    private static bool IsCloseFrame(ReadOnlySpan<byte> frame) =>
        frame.Length >= 2 && frame[0] == 0x88 && (frame[1] & 0x80) == 0 && frame[1] == frame.Length - 2;

    public override Task WriteAsync(byte[] buffer, int offset, int count, CancellationToken cancellationToken) =>
        WriteAsync(buffer.AsMemory(offset, count), cancellationToken).AsTask();

    public override async Task FlushAsync(CancellationToken cancellationToken)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        await _writeGate.WaitAsync(cancellationToken);
        try
        {
            var result = await _output.FlushAsync(cancellationToken);
            if (result.IsCanceled)
                throw new ObjectDisposedException(nameof(DuplexPipeStream));
        }
        finally
        {
            _writeGate.Release();
        }
    }

    public override void Flush() => throw new NotSupportedException("synchronous I/O is not supported");
    public override int Read(byte[] buffer, int offset, int count) => throw new NotSupportedException("synchronous I/O is not supported");
    public override void Write(byte[] buffer, int offset, int count) => throw new NotSupportedException("synchronous I/O is not supported");
    public override long Length => throw new NotSupportedException();
    public override long Position { get => throw new NotSupportedException(); set => throw new NotSupportedException(); }
    public override long Seek(long offset, SeekOrigin origin) => throw new NotSupportedException();
    public override void SetLength(long value) => throw new NotSupportedException();

    protected override void Dispose(bool disposing)
    {
        if (disposing && !_disposed)
        {
            _disposed = true;
            _input.CancelPendingRead();
            _output.CancelPendingFlush();
        }
        base.Dispose(disposing);
    }
}
