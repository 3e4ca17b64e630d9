using System.Globalization;
using System.Runtime.InteropServices;
using System.Text;

namespace Switchboard.Transport;

/// <summary>
/// Keeps the .NET socket engine from waking up for a socket whose bytes a <see cref="SplicePipe"/> move is reading.
/// <para>
/// Why: .NET registers every socket it has used asynchronously with its engine's epoll instance, edge-triggered, for
/// reading and writing, for the socket's whole life. During a move no .NET operation waits on the source, yet every
/// arrival of data wakes the engine's thread, which hands the event to a thread-pool thread, which finds nothing to do.
/// Measured for a 1 GiB download through the tunnel: about 2,000-3,000 such wakeups of two threads in each of the gateway
/// and the agent. On 2 cores that is a fifth to a quarter of the CPU both spend on the download (docs/tunnels.md,
/// "Zero copy").
/// </para>
/// <para>
/// How: for the move, the registration's event mask becomes "edge-triggered, errors and hang-ups only"
/// (<c>EPOLL_CTL_MOD</c>), and afterwards exactly what it was. Putting it back makes the kernel report any readiness
/// that came meanwhile, so the engine misses nothing. <c>EPOLL_CTL_MOD</c> also replaces the registration's data (the
/// engine's key for the socket), so that is read first from the epoll instance's <c>/proc/self/fdinfo</c> entry, on the
/// line naming both the socket's descriptor and its inode.
/// </para>
/// <para>
/// Cost bound: the kernel writes the whole fdinfo file at the first read, one line of about 80 bytes per registered
/// socket (about 2 µs each), and holds the epoll instance's lock meanwhile, so the engine's other sockets wait for it.
/// A lookup is therefore made only when the process's open descriptors (counted in <c>/proc/self/fd</c>, which takes
/// no epoll lock, at most once a second; registered sockets are among them) could fill at most one byte of fdinfo per
/// <see cref="BytesPerByteRead"/> bytes moved: with 64 open descriptors from 20 MiB, with 256 from 80 MiB, with
/// 16,384 from 5 GiB. That keeps the lookup, and the engine's wait, to about 6 ms per GiB moved at most. The reading
/// itself stops at that budget too. Anything unexpected (not Linux, not x64 or arm64, no epoll instance holds the socket, too many
/// descriptors for the count, budget spent, a failing call) leaves the registration as it is: the move works the
/// same, only without the saving.
/// </para>
/// </summary>
internal static unsafe partial class EpollMute
{
    private const int EPOLL_CTL_MOD = 3;
    private const uint EPOLLERR = 0x8;
    private const uint EPOLLHUP = 0x10;
    private const uint EPOLLET = 0x80000000;

    /// <summary>The mask while muted: only errors and hang-ups (which epoll always reports), edge-triggered.</summary>
    internal const uint MutedEvents = EPOLLET | EPOLLERR | EPOLLHUP;

    private static readonly bool Supported = OperatingSystem.IsLinux() &&
        RuntimeInformation.ProcessArchitecture is Architecture.X64 or Architecture.Arm64;

    /// <summary>Bytes a move must make per byte of fdinfo a lookup may read.</summary>
    internal const long BytesPerByteRead = 4096;

    /// <summary>About what the kernel writes per registered socket in fdinfo (measured: 79 bytes).</summary>
    private const long LineBytes = 80;

    private static readonly Lock Gate = new();
    private static int[]? _epolls;
    private static long _openCount;
    private static long _openCountAt;

    /// <summary>A socket's registration with one epoll instance, as it was before muting.</summary>
    internal readonly record struct Registration(int Epoll, uint Events, ulong Data);

    /// <summary>
    /// The smallest move for which a lookup is made now: <see cref="SplicePipe.MuteFrom"/>, or more in a process with many
    /// descriptors. <see cref="long.MaxValue"/> when nothing is muted here.
    /// </summary>
    internal static long Threshold()
    {
        if (!Supported || OpenDescriptors() is not (> 0 and var open))
            return long.MaxValue;
        return Math.Max(SplicePipe.MuteFrom, open * LineBytes * BytesPerByteRead);
    }

    /// <summary>
    /// Mutes <paramref name="fd"/>'s registration for a move of <paramref name="count"/> bytes, when that is at least
    /// <see cref="Threshold"/>. False, with nothing changed, when it is below, not found within the budget, or cannot be
    /// changed.
    /// </summary>
    internal static bool TryMute(int fd, long count, out Registration registration)
    {
        registration = default;
        try
        {
            if (count < Threshold() || !TryFind(fd, count / BytesPerByteRead, out registration) || (registration.Events & ~MutedEvents) == 0)
                return false;
            return Modify(registration.Epoll, fd, MutedEvents, registration.Data);
        }
        catch (Exception ex) when (ex is IOException or UnauthorizedAccessException or FormatException or OverflowException)
        {
            return false;
        }
    }

    /// <summary>
    /// Puts back what <see cref="TryMute"/> changed. Callers skip it for a socket its owner disposed meanwhile: the
    /// engine has let go of it, and may have given its key to another socket. False when the kernel refused (the
    /// socket is no longer registered).
    /// </summary>
    internal static bool Restore(int fd, in Registration registration) =>
        Modify(registration.Epoll, fd, registration.Events, registration.Data);

    // Descriptors open in this process (a walk of /proc/self/fd, no epoll lock), counted at most once a second; 0 when
    // unknown.
    private static long OpenDescriptors()
    {
        var now = Environment.TickCount64;
        lock (Gate)
        {
            if (_openCount > 0 && now - _openCountAt < 1000)
                return _openCount;
        }
        long open = 0;
        try
        {
            foreach (var _ in Directory.EnumerateFileSystemEntries("/proc/self/fd"))
                open++;
        }
        catch (Exception ex) when (ex is IOException or UnauthorizedAccessException)
        {
            open = 0;
        }
        lock (Gate)
        {
            _openCount = open;
            _openCountAt = now;
        }
        return open;
    }

    /// <summary>
    /// Finds <paramref name="fd"/>'s registration in this process's epoll instances. Internal for tests, which read the
    /// mask the kernel holds during and after a move.
    /// </summary>
    internal static bool TryFind(int fd, long budget, out Registration registration)
    {
        registration = default;
        if (!Supported || !TryInode(fd, "socket:[", out var inode))
            return false;
        var epolls = Epolls(refresh: false);
        if (!Array.TrueForAll(epolls, IsEpoll))
            epolls = Epolls(refresh: true); // a cached descriptor was closed or reused
        foreach (var epoll in epolls)
        {
            if (budget <= 0)
                return false;
            if (Search(epoll, fd, inode, ref budget, out registration))
                return true;
        }
        return false;
    }

    // The epoll instances of this process, found once (the .NET engines create theirs together, at the first
    // asynchronous socket operation, and keep them for the process's life).
    private static int[] Epolls(bool refresh)
    {
        lock (Gate)
        {
            if (_epolls is { Length: > 0 } known && !refresh)
                return known;
            var found = new List<int>();
            foreach (var entry in Directory.EnumerateFileSystemEntries("/proc/self/fd"))
            {
                if (int.TryParse(Path.GetFileName(entry), NumberStyles.None, CultureInfo.InvariantCulture, out var fd) && IsEpoll(fd))
                    found.Add(fd);
            }
            return _epolls = [.. found];
        }
    }

    private static bool IsEpoll(int fd) => Link(fd) == "anon_inode:[eventpoll]";

    private static bool TryInode(int fd, string prefix, out ulong inode)
    {
        inode = 0;
        var link = Link(fd);
        return link is not null && link.StartsWith(prefix, StringComparison.Ordinal) && link.EndsWith(']') &&
            ulong.TryParse(link.AsSpan(prefix.Length, link.Length - prefix.Length - 1), NumberStyles.None, CultureInfo.InvariantCulture, out inode);
    }

    private static string? Link(int fd)
    {
        try
        {
            return new FileInfo("/proc/self/fd/" + fd.ToString(CultureInfo.InvariantCulture)).LinkTarget;
        }
        catch (IOException)
        {
            return null;
        }
    }

    // Lines look like "tfd:       12 events:    8000201d data:                3  pos:0 ino:5f3a1 sdev:8".
    private static bool Search(int epoll, int fd, ulong inode, ref long budget, out Registration registration)
    {
        registration = default;
        using var file = new FileStream("/proc/self/fdinfo/" + epoll.ToString(CultureInfo.InvariantCulture), FileMode.Open, FileAccess.Read, FileShare.ReadWrite, 0);
        using var reader = new StreamReader(file, Encoding.ASCII, false, 16 * 1024);
        while (budget > 0 && reader.ReadLine() is { } line)
        {
            budget -= line.Length + 1;
            if (!line.StartsWith("tfd:", StringComparison.Ordinal))
                continue;
            var fields = line.Split(' ', StringSplitOptions.RemoveEmptyEntries);
            if (fields.Length < 6 || fields[1] != fd.ToString(CultureInfo.InvariantCulture) || fields[2] != "events:" || fields[4] != "data:")
                continue;
            var ino = Array.Find(fields, f => f.StartsWith("ino:", StringComparison.Ordinal));
            if (ino is null || ulong.Parse(ino.AsSpan(4), NumberStyles.AllowHexSpecifier, CultureInfo.InvariantCulture) != inode)
                continue; // a stale entry: a closed descriptor whose number was reused
            registration = new Registration(epoll,
                uint.Parse(fields[3], NumberStyles.AllowHexSpecifier, CultureInfo.InvariantCulture),
                ulong.Parse(fields[5], NumberStyles.AllowHexSpecifier, CultureInfo.InvariantCulture));
            return true;
        }
        return false;
    }

    private static bool Modify(int epoll, int fd, uint events, ulong data)
    {
        if (RuntimeInformation.ProcessArchitecture == Architecture.X64)
        {
            var packed = new PackedEvent { Events = events, Data = data };
            return epoll_ctl(epoll, EPOLL_CTL_MOD, fd, &packed) == 0;
        }
        var aligned = new AlignedEvent { Events = events, Data = data };
        return epoll_ctl(epoll, EPOLL_CTL_MOD, fd, &aligned) == 0;
    }

    // struct epoll_event is packed (12 bytes) on x86-64 and naturally aligned (16 bytes) elsewhere.
    [StructLayout(LayoutKind.Sequential, Pack = 1)]
    private struct PackedEvent
    {
        public uint Events;
        public ulong Data;
    }

    [StructLayout(LayoutKind.Sequential)]
    private struct AlignedEvent
    {
        public uint Events;
        public ulong Data;
    }

    [LibraryImport("libc", SetLastError = true)]
    private static partial int epoll_ctl(int epoll, int operation, int fd, void* ev);
}
