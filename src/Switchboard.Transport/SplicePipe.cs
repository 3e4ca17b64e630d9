using System.Net.Sockets;
using System.Runtime.InteropServices;

namespace Switchboard.Transport;

/// <summary>How a <see cref="SplicePipe.Move"/> ended.</summary>
public enum SpliceOutcome
{
    /// <summary>Every byte was handed to the destination socket.</summary>
    Completed,

    /// <summary>The source ended (EOF) or failed before the count was reached: the sender went away.</summary>
    SourceFailed,

    /// <summary>The destination failed: the receiver went away.</summary>
    DestinationFailed,

    /// <summary>No byte moved for the stall timeout: a receiver that stopped reading or a sender that stopped sending.</summary>
    Stalled,

    /// <summary>The caller cancelled.</summary>
    Canceled,
}

/// <summary>
/// A Linux pipe used to move bytes from one socket to another with <c>splice(2)</c>: the kernel moves pages from the
/// source's receive queue to the destination's send queue, and the bytes never enter user space (no copy in, no copy
/// out, two system calls per up to 1 MiB). <see cref="Move"/> blocks its thread, waiting for the source inside the splice
/// (the source is made blocking, with a receive timeout, for the move) and for the destination with <c>poll(2)</c>;
/// callers run it on a dedicated thread. Both sockets must be non-blocking, as every .NET socket used asynchronously
/// is, and the source's owner must have no operation on it during the move. While a
/// move of <see cref="MuteFrom"/> bytes or more runs, the .NET socket engine is not woken by the source's arrivals
/// (<see cref="EpollMute"/>).
/// </summary>
public sealed unsafe partial class SplicePipe : IDisposable
{
    private const int O_NONBLOCK = 0x800;
    private const int O_CLOEXEC = 0x80000;
    private const int F_GETFL = 3;
    private const int F_SETFL = 4;
    private const int F_SETPIPE_SZ = 1031;
    private const int SOL_SOCKET = 1;
    private const int SO_RCVTIMEO = 20;
    private const int SO_SNDTIMEO = 21;
    private const int F_GETPIPE_SZ = 1032;
    private const uint SPLICE_F_MOVE = 1;
    private const uint SPLICE_F_NONBLOCK = 2;
    private const short POLLIN = 0x1;
    private const short POLLOUT = 0x4;
    private const short POLLERR = 0x8;
    private const short POLLHUP = 0x10;
    private const short POLLNVAL = 0x20;
    private const int EINTR = 4;
    private const int EAGAIN = 11;
    private const int PollMilliseconds = 250;
    private const nuint SIOCOUTQ = 0x5411;

    /// <summary>Pipe capacity asked for: 1 MiB, the default unprivileged maximum (<c>/proc/sys/fs/pipe-max-size</c>).</summary>
    private const int WantedCapacity = 1024 * 1024;

    /// <summary>
    /// Moves of at least this many bytes (more in a process with many descriptors: <see cref="EpollMute.Threshold"/>)
    /// mute the .NET socket engine's epoll registration of the source for their length (<see cref="EpollMute"/>).
    /// </summary>
    internal const long MuteFrom = 4 * 1024 * 1024;

    private readonly int _read;
    private readonly int _write;
    private readonly int _capacity;
    private int _disposed;

    /// <summary>True on Linux when a pipe can be created here (checked once).</summary>
    public static bool IsSupported { get; } = OperatingSystem.IsLinux() && Probe();

    private SplicePipe(int read, int write, int capacity)
    {
        _read = read;
        _write = write;
        _capacity = capacity;
    }

    /// <summary>Bytes the pipe holds at most: what one pair of splices moves.</summary>
    public int Capacity => _capacity;

    /// <summary>A new pipe, or null when the system refuses one (no file descriptors left, not Linux).</summary>
    public static SplicePipe? TryCreate()
    {
        if (!OperatingSystem.IsLinux())
            return null;
        var fds = stackalloc int[2];
        if (pipe2(fds, O_NONBLOCK | O_CLOEXEC) != 0)
            return null;
        var capacity = fcntl(fds[1], F_SETPIPE_SZ, WantedCapacity);
        if (capacity <= 0)
            capacity = fcntl(fds[1], F_GETPIPE_SZ, 0);
        if (capacity <= 0)
            capacity = 64 * 1024;
        return new SplicePipe(fds[0], fds[1], capacity);
    }

    private static bool Probe()
    {
        try
        {
            using var pipe = TryCreate();
            return pipe is not null;
        }
        catch (Exception ex) when (ex is DllNotFoundException or EntryPointNotFoundException)
        {
            return false;
        }
    }

    /// <summary>
    /// Moves exactly <paramref name="count"/> bytes from <paramref name="source"/> to <paramref name="destination"/>.
    /// Blocks until done, failed, stalled (nothing moved for <paramref name="stall"/>; <see cref="Timeout.InfiniteTimeSpan"/>
    /// for no limit) or cancelled (checked at least every 250 ms). A source reset by its peer while the move waits for the
    /// destination still hands over what it had received. <paramref name="moved"/> counts bytes handed to the destination. The sockets stay referenced
    /// while this runs, so closing them elsewhere cannot hand their descriptor numbers to another connection meanwhile.
    /// </summary>
    public SpliceOutcome Move(Socket source, Socket destination, long count, TimeSpan stall, CancellationToken cancellationToken, out long moved)
    {
        moved = 0;
        SafeHandle? src = null, dst = null;
        bool srcRef = false, dstRef = false;
        try
        {
            try
            {
                src = source.SafeHandle;
                src.DangerousAddRef(ref srcRef);
            }
            catch (ObjectDisposedException)
            {
                return SpliceOutcome.SourceFailed; // closed before the move started
            }
            try
            {
                dst = destination.SafeHandle;
                dst.DangerousAddRef(ref dstRef);
            }
            catch (ObjectDisposedException)
            {
                return SpliceOutcome.DestinationFailed;
            }
            var fd = (int)src.DangerousGetHandle();
            EpollMute.Registration registration = default;
            var muted = count >= MuteFrom && EpollMute.TryMute(fd, count, out registration);
            var waits = TryWaitInKernel(fd, out var saved);
            try
            {
                return Move(source, src, dst, count, stall, waits, cancellationToken, ref moved);
            }
            finally
            {
                if (waits)
                    StopWaitingInKernel(fd, saved);
                // Not for a socket its owner disposed meanwhile: the engine has let go of it and may have given its key
                // to another socket, which the restored mask would send spurious events (harmless to the engine, and
                // still possible if the dispose comes between the check and the restore). The kernel keeps the
                // registration while the move holds the descriptor, so the restore itself does not fail.
                if (muted && !IsDisposed(source))
                    EpollMute.Restore(fd, registration);
            }
        }
        finally
        {
            if (dstRef)
                dst!.DangerousRelease();
            if (srcRef)
                src!.DangerousRelease();
        }
    }

    /// <summary>
    /// Makes reads of <paramref name="fd"/> wait in the kernel, at most a poll interval (blocking, with that receive
    /// timeout), for the length of a move; false, with nothing changed, when that fails. The owner of the socket has no
    /// operation on it meanwhile: Kestrel's reader is parked on its full input pipe, and the agent's HTTP handler sends
    /// the whole request before it reads the response (the gateway strips <c>Expect</c> from forwarded requests, so
    /// the handler never answers a response early while still sending). Should one come anyway, the send timeout set
    /// too bounds how long it can block its thread. Disposing the socket still ends a waiting splice at once: .NET
    /// disconnects a socket closed while in use.
    /// </summary>
    private static bool TryWaitInKernel(int fd, out SourceState saved)
    {
        saved = default;
        var flags = fcntl(fd, F_GETFL, 0);
        if (flags < 0)
            return false;
        TimeVal receive, send;
        var length = sizeof(TimeVal);
        if (getsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &receive, &length) != 0)
            return false;
        length = sizeof(TimeVal);
        if (getsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &send, &length) != 0)
            return false;
        saved = new SourceState(flags, receive, send);
        var wait = new TimeVal { Seconds = 0, Microseconds = PollMilliseconds * 1000 };
        if (setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &wait, sizeof(TimeVal)) != 0 ||
            setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &wait, sizeof(TimeVal)) != 0 ||
            ((flags & O_NONBLOCK) != 0 && fcntl(fd, F_SETFL, flags & ~O_NONBLOCK) != 0))
        {
            StopWaitingInKernel(fd, saved);
            return false;
        }
        return true;
    }

    private static void StopWaitingInKernel(int fd, in SourceState saved)
    {
        fcntl(fd, F_SETFL, saved.Flags);
        var receive = saved.ReceiveTimeout;
        var send = saved.SendTimeout;
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &receive, sizeof(TimeVal));
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &send, sizeof(TimeVal));
    }

    private readonly record struct SourceState(int Flags, TimeVal ReceiveTimeout, TimeVal SendTimeout);

    /// <summary>The descriptor's file status flags (<c>F_GETFL</c>), for tests: -1 on failure.</summary>
    internal static int FileStatusFlags(int fd) => fcntl(fd, F_GETFL, 0);

    // With sourceWaits, the source is blocking with a receive timeout of one poll interval: a splice from it waits in
    // the kernel until bytes come and then takes what keeps coming, up to the count asked (tcp_splice_read goes on
    // while data arrives). It is made only when the pipe is empty, so no byte waits in the pipe while it blocks. Measured
    // with two bare relays in C: 0.23 s of CPU per GiB against 0.40 s for non-blocking splices with poll(2) between.
    private SpliceOutcome Move(Socket sourceSocket, SafeHandle source, SafeHandle destination, long count, TimeSpan stall, bool sourceWaits, CancellationToken cancellationToken, ref long moved)
    {
        var src = (int)source.DangerousGetHandle();
        var dst = (int)destination.DangerousGetHandle();
        var left = count;
        long inPipe = 0;
        var lastProgress = Environment.TickCount64;
        var stallMs = stall == Timeout.InfiniteTimeSpan ? long.MaxValue : (long)stall.TotalMilliseconds;
        var fds = stackalloc PollFd[2];
        var sourceFailed = false;
        var sourceHungUp = false; // reset by the peer: what it received is still readable, and splice says when it is not
        long readStarted = 0;
        while (left > 0 || inPipe > 0)
        {
            var progressed = false;
            var interrupted = false;
            var waitIn = false;
            var waitOut = false;
            if (left > 0 && (sourceWaits ? inPipe == 0 : inPipe < _capacity))
            {
                var asked = Math.Min(left, _capacity - inPipe);
                readStarted = Environment.TickCount64;
                var n = splice(src, null, _write, null, (nuint)asked, SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
                if (n > 0)
                {
                    left -= n;
                    inPipe += n;
                    progressed = true;
                }
                else if (n == 0)
                {
                    sourceFailed = true; // EOF before the count: the sender went away; what the pipe holds still goes out
                    left = 0;
                }
                else
                {
                    var error = Marshal.GetLastPInvokeError();
                    if (error == EAGAIN && !sourceHungUp)
                        waitIn = true;
                    else if (error == EINTR)
                        interrupted = true;
                    else
                    {
                        sourceFailed = true;
                        left = 0;
                    }
                }
            }
            if (inPipe > 0)
            {
                // Without SPLICE_F_MORE: with it the kernel holds a partial segment for up to 200 ms waiting for more,
                // which a slow source's last bytes would pay every time it runs dry; TCP still appends to the partial
                // segment at the tail of the queue while the destination is busy, so a fast body still goes out in
                // full segments.
                var n = splice(_read, null, dst, null, (nuint)inPipe, SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
                if (n > 0)
                {
                    inPipe -= n;
                    moved += n;
                    progressed = true;
                }
                else if (n == 0)
                    return SpliceOutcome.DestinationFailed;
                else
                {
                    var error = Marshal.GetLastPInvokeError();
                    if (error == EAGAIN)
                        waitOut = true;
                    else if (error == EINTR)
                        interrupted = true;
                    else
                        return SpliceOutcome.DestinationFailed;
                }
            }
            if (progressed)
            {
                lastProgress = Environment.TickCount64;
                continue;
            }
            if (left == 0 && inPipe == 0)
                break; // the source ended with the pipe empty: nothing is left to wait for
            if (cancellationToken.IsCancellationRequested)
                return SpliceOutcome.Canceled;
            if (Environment.TickCount64 - lastProgress > stallMs)
                return SpliceOutcome.Stalled;
            if (interrupted)
                continue; // a signal: try again at once
            if (waitIn && sourceWaits && Environment.TickCount64 - readStarted >= PollMilliseconds / 2)
            {
                // The splice waited a poll interval for the source in the kernel. Did the destination fail meanwhile (an
                // error or hang-up: the client left)?
                fds[0] = new PollFd { Fd = dst, Events = 0 };
                if (poll(fds, 1, 0) > 0 && fds[0].Revents != 0)
                    return SpliceOutcome.DestinationFailed;
                continue;
            }
            // Both sockets are always watched: an error or hang-up on the one not waited for (the client left, or the
            // gateway closed the agent's connection, which shuts the socket down) ends the wait at once.
            // A source that hung up is not watched any more (its hang-up would end every wait at once); the next splice
            // from it moves what it still holds, then reports its end or error.
            var watched = 1;
            fds[0] = new PollFd { Fd = dst, Events = waitOut ? POLLOUT : (short)0 };
            if (left > 0 && !sourceHungUp)
                fds[watched++] = new PollFd { Fd = src, Events = waitIn ? POLLIN : (short)0 };
            if (poll(fds, (nuint)watched, PollMilliseconds) < 0 && Marshal.GetLastPInvokeError() != EINTR)
                return SpliceOutcome.DestinationFailed;
            if (!waitOut && fds[0].Revents != 0)
                return SpliceOutcome.DestinationFailed; // error or hang-up while waiting for the source
            if (watched > 1 && !waitIn && (fds[1].Revents & (POLLERR | POLLHUP | POLLNVAL)) != 0)
            {
                // While waiting for the destination. Its owner disposed the source (and waits for this move to let go
                // of it): the rest of the body is not wanted. Otherwise the peer reset or closed it, and what it had
                // received is still readable: drain it.
                if (IsDisposed(sourceSocket))
                    return SpliceOutcome.SourceFailed;
                sourceHungUp = true;
            }
        }
        return sourceFailed ? SpliceOutcome.SourceFailed : SpliceOutcome.Completed;
    }

    /// <summary>
    /// True once <paramref name="socket"/>'s owner disposed it. Its handle reports closed only when the last reference
    /// goes, and a move holds one, so ask the socket: its members throw once it is disposed.
    /// </summary>
    private static bool IsDisposed(Socket socket)
    {
        try
        {
            _ = socket.Available;
            return false;
        }
        catch (ObjectDisposedException)
        {
            return true;
        }
        catch (SocketException)
        {
            return false;
        }
    }

    /// <summary>
    /// Bytes in <paramref name="socket"/>'s send queue that the peer has not acknowledged yet (<c>SIOCOUTQ</c>), or -1
    /// when the socket is closed or the call fails.
    /// </summary>
    public static int Unacknowledged(Socket socket)
    {
        var handle = socket.SafeHandle;
        var added = false;
        try
        {
            handle.DangerousAddRef(ref added);
            var queued = 0;
            return ioctl((int)handle.DangerousGetHandle(), SIOCOUTQ, &queued) == 0 ? queued : -1;
        }
        catch (ObjectDisposedException)
        {
            return -1;
        }
        finally
        {
            if (added)
                handle.DangerousRelease();
        }
    }

    public void Dispose()
    {
        if (Interlocked.Exchange(ref _disposed, 1) != 0)
            return;
        close(_read);
        close(_write);
    }

    [StructLayout(LayoutKind.Sequential)]
    private struct TimeVal
    {
        public nint Seconds;
        public nint Microseconds;
    }

    [StructLayout(LayoutKind.Sequential)]
    private struct PollFd
    {
        public int Fd;
        public short Events;
        public short Revents;
    }

    [LibraryImport("libc", SetLastError = true)]
    private static partial int pipe2(int* fds, int flags);

    [LibraryImport("libc", SetLastError = true)]
    private static partial int fcntl(int fd, int command, int argument);

    [LibraryImport("libc", SetLastError = true)]
    private static partial nint splice(int input, long* inputOffset, int output, long* outputOffset, nuint length, uint flags);

    [LibraryImport("libc", SetLastError = true)]
    private static partial int poll(PollFd* fds, nuint count, int timeout);

    [LibraryImport("libc", SetLastError = true)]
    private static partial int close(int fd);

    [LibraryImport("libc", SetLastError = true)]
    private static partial int ioctl(int fd, nuint request, int* value);

    [LibraryImport("libc", SetLastError = true)]
    private static partial int getsockopt(int fd, int level, int name, void* value, int* length);

    [LibraryImport("libc", SetLastError = true)]
    private static partial int setsockopt(int fd, int level, int name, void* value, int length);
}
