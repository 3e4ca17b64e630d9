using System.Net.Http;
using System.Net.Sockets;
using System.Runtime.InteropServices;
using Switchboard.Transport;

namespace Switchboard.Client.Tunnels;

/// <summary>
/// A connection to the local server (made by the agent's <see cref="SocketsHttpHandler.ConnectCallback"/>) that can hand
/// the rest of a response body to the gateway's data connection without copying it (docs/tunnels.md, "Zero copy").
/// <para>
/// <see cref="SocketsHttpHandler"/> reads a body of known length from its own buffer while that holds bytes, and then
/// directly into the caller's buffer. A read that arrives here with the buffer of the <see cref="BodyHandoff"/> in
/// force therefore proves that the handler holds none of the body: all that is left is in this socket. The read then
/// splices all of it but the last byte to the data connection, and reads that byte normally, so the handler sees a
/// read complete and the sender sees how far the body got. The handler's own count is now behind the socket, so the
/// connection is spent: later reads end it, and the handler does not reuse it.
/// </para>
/// </summary>
internal sealed class LocalServerStream(Socket socket) : NetworkStream(socket, ownsSocket: true)
{
    /// <summary>
    /// Splices running at once in this process, each holding a thread and a pipe of up to 1 MiB (the gateway's
    /// <c>ZeroCopyTransfers</c> default). Past it, bodies are copied: the kernel's per-user pipe budget would otherwise
    /// shrink new pipes to a page.
    /// </summary>
    internal const int MaxSplices = 64;

    private static readonly SemaphoreSlim Slots = new(MaxSplices, MaxSplices);

    private bool _spent;

    /// <summary>Connects like the handler's default (dual-mode socket, no Nagle) and wraps the socket.</summary>
    public static async ValueTask<Stream> ConnectAsync(SocketsHttpConnectionContext context, CancellationToken cancellationToken)
    {
        var socket = Socket.OSSupportsIPv6
            ? new Socket(SocketType.Stream, ProtocolType.Tcp)
            : new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        socket.NoDelay = true;
        try
        {
            await socket.ConnectAsync(context.DnsEndPoint, cancellationToken);
            return new LocalServerStream(socket);
        }
        catch
        {
            socket.Dispose();
            throw;
        }
    }

    public override ValueTask<int> ReadAsync(Memory<byte> buffer, CancellationToken cancellationToken = default)
    {
        if (_spent)
            return ValueTask.FromResult(0);
        if (BodyHandoff.Current is { } handoff && handoff.Wants(buffer))
            return TakeOverAsync(handoff, buffer, cancellationToken);
        return base.ReadAsync(buffer, cancellationToken);
    }

    public override Task<int> ReadAsync(byte[] buffer, int offset, int count, CancellationToken cancellationToken) =>
        ReadAsync(buffer.AsMemory(offset, count), cancellationToken).AsTask();

    public override int Read(Span<byte> buffer) => _spent ? 0 : base.Read(buffer);

    public override int Read(byte[] buffer, int offset, int count) => Read(buffer.AsSpan(offset, count));

    private async ValueTask<int> TakeOverAsync(BodyHandoff handoff, Memory<byte> buffer, CancellationToken cancellationToken)
    {
        if (!Slots.Wait(0, CancellationToken.None))
            return await base.ReadAsync(buffer, cancellationToken); // every splice slot taken: copy
        try
        {
            using var pipe = SplicePipe.TryCreate();
            if (pipe is null)
                return await base.ReadAsync(buffer, cancellationToken); // no pipe to be had (descriptor limit): copy
            _spent = true;
            var count = handoff.Remaining - 1;
            // The stream's own token: the handler passes none down to its connection's reads, and cancels by disposing
            // this stream, which waits for the splice thread to let go of the socket.
            var stream = handoff.CancellationToken;
            // No stall limit, as for a copied body: a public client may pause a download, and the gateway decides when
            // to give up on it (its abort cancels this stream).
            var (outcome, moved) = await Task.Factory.StartNew(() =>
            {
                var result = pipe.Move(Socket, handoff.Destination, count, Timeout.InfiniteTimeSpan, stream, out var bytes);
                return (result, bytes);
            }, CancellationToken.None, TaskCreationOptions.LongRunning, TaskScheduler.Default);
            handoff.Spliced(moved);
            if (outcome != SpliceOutcome.Completed)
            {
                stream.ThrowIfCancellationRequested();
                throw new IOException(outcome == SpliceOutcome.SourceFailed
                    ? $"the local server's body ended {handoff.Remaining} bytes early"
                    : "the gateway's data connection closed");
            }
        }
        finally
        {
            Slots.Release();
        }
        return await base.ReadAsync(buffer[..1], cancellationToken);
    }
}

/// <summary>
/// The body read in progress of one data-path request that writes to a socket of its own: set (async-locally) by the
/// sender around its reads, so that the <see cref="LocalServerStream"/> serving that response recognises the read and
/// knows where the rest of the body goes.
/// </summary>
internal sealed class BodyHandoff(byte[] buffer, Socket destination, long length, CancellationToken cancellationToken)
{
    /// <summary>Below this many bytes left a splice is not worth a pipe and a thread.</summary>
    private const int MinSpliceBytes = 64 * 1024;

    private static readonly AsyncLocal<BodyHandoff?> s_current = new();

    public static BodyHandoff? Current
    {
        get => s_current.Value;
        set => s_current.Value = value;
    }

    public Socket Destination => destination;

    /// <summary>The stream's token: cancels a splice under way.</summary>
    public CancellationToken CancellationToken => cancellationToken;

    /// <summary>Bytes of the body already handed to <see cref="Destination"/>, by the sender's writes and by splices.</summary>
    public long Written { get; private set; }

    /// <summary>Bytes moved by splices.</summary>
    public long SplicedBytes { get; private set; }

    public long Remaining => length - Written;

    /// <summary>The length of the read the sender is about to make into <paramref name="buffer"/>.</summary>
    public int Requested { get; set; }

    /// <summary>True for the sender's own read, made directly into its buffer, with enough of the body left.</summary>
    public bool Wants(Memory<byte> read) =>
        MemoryMarshal.TryGetArray<byte>(read, out var segment) && ReferenceEquals(segment.Array, buffer) && segment.Offset == 0 &&
        read.Length == Requested && Remaining > MinSpliceBytes;

    public void Wrote(int count) => Written += count;

    public void Spliced(long count)
    {
        Written += count;
        SplicedBytes += count;
    }
}
