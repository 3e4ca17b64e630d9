using System.Collections.Concurrent;
using System.Globalization;
using System.Runtime.InteropServices;

namespace Switchboard.Server.Environments;

/// <summary>The few libc calls environments need: posix_spawn with file actions, PTYs, signals, waitpid.</summary>
internal static unsafe partial class Libc
{
    private const string Lib = "libc";

    public const int O_RDONLY = 0;
    public const int O_RDWR = 2;
    public const int O_NOCTTY = 0x100;
    public const int O_CLOEXEC = 0x80000;
    public const short POSIX_SPAWN_SETSIGDEF = 0x04;
    public const short POSIX_SPAWN_SETSIGMASK = 0x08;
    public const short POSIX_SPAWN_SETSID = 0x80;
    public const int SIGHUP = 1;
    public const int SIGKILL = 9;
    public const int SIGTERM = 15;
    public const int EINTR = 4;
    public const nuint TIOCSWINSZ = 0x5414;

    [StructLayout(LayoutKind.Sequential)]
    public struct WinSize
    {
        public ushort Rows;
        public ushort Cols;
        public ushort XPixel;
        public ushort YPixel;
    }

    [LibraryImport(Lib, SetLastError = true)]
    public static partial int posix_openpt(int flags);

    [LibraryImport(Lib, SetLastError = true)]
    public static partial int grantpt(int fd);

    [LibraryImport(Lib, SetLastError = true)]
    public static partial int unlockpt(int fd);

    [LibraryImport(Lib)]
    public static partial int ptsname_r(int fd, byte* buffer, nuint length);

    [LibraryImport(Lib, StringMarshalling = StringMarshalling.Utf8)]
    public static partial int posix_spawnp(out int pid, string file, IntPtr fileActions, IntPtr attributes, IntPtr argv, IntPtr envp);

    [LibraryImport(Lib)]
    public static partial int posix_spawn_file_actions_init(IntPtr actions);

    [LibraryImport(Lib)]
    public static partial int posix_spawn_file_actions_destroy(IntPtr actions);

    [LibraryImport(Lib, StringMarshalling = StringMarshalling.Utf8)]
    public static partial int posix_spawn_file_actions_addopen(IntPtr actions, int fd, string path, int flags, int mode);

    [LibraryImport(Lib)]
    public static partial int posix_spawn_file_actions_adddup2(IntPtr actions, int fd, int newFd);

    [LibraryImport(Lib, StringMarshalling = StringMarshalling.Utf8)]
    public static partial int posix_spawn_file_actions_addchdir_np(IntPtr actions, string path);

    [LibraryImport(Lib)]
    public static partial int posix_spawnattr_init(IntPtr attributes);

    [LibraryImport(Lib)]
    public static partial int posix_spawnattr_destroy(IntPtr attributes);

    [LibraryImport(Lib)]
    public static partial int posix_spawnattr_setflags(IntPtr attributes, short flags);

    [LibraryImport(Lib)]
    public static partial int posix_spawnattr_setsigdefault(IntPtr attributes, IntPtr signals);

    [LibraryImport(Lib)]
    public static partial int posix_spawnattr_setsigmask(IntPtr attributes, IntPtr signals);

    [LibraryImport(Lib)]
    public static partial int sigfillset(IntPtr set);

    [LibraryImport(Lib)]
    public static partial int sigemptyset(IntPtr set);

    [LibraryImport(Lib, SetLastError = true)]
    public static partial int kill(int pid, int signal);

    [LibraryImport(Lib, SetLastError = true)]
    public static partial int waitpid(int pid, out int status, int options);

    [LibraryImport(Lib, SetLastError = true)]
    public static partial nint read(int fd, byte* buffer, nint count);

    [LibraryImport(Lib, SetLastError = true)]
    public static partial nint write(int fd, byte* buffer, nint count);

    [LibraryImport(Lib, SetLastError = true)]
    public static partial int close(int fd);

    [LibraryImport(Lib, SetLastError = true)]
    public static partial int pipe2(int* fds, int flags);

    [LibraryImport(Lib, SetLastError = true)]
    public static partial int ioctl(int fd, nuint request, ref WinSize size);

    public static string Error(int errno) => Marshal.GetPInvokeErrorMessage(errno) + " (errno " + errno.ToString(CultureInfo.InvariantCulture) + ")";

    /// <summary>Writes all of <paramref name="data"/>; false when the descriptor is closed.</summary>
    public static bool WriteAll(int fd, ReadOnlySpan<byte> data)
    {
        fixed (byte* p = data)
        {
            var offset = 0;
            while (offset < data.Length)
            {
                var n = write(fd, p + offset, data.Length - offset);
                if (n < 0)
                {
                    if (Marshal.GetLastPInvokeError() == EINTR)
                        continue;
                    return false;
                }
                offset += (int)n;
            }
        }
        return true;
    }

    /// <summary>Blocking read; 0 at end of file or on error (EIO on a PTY whose other side closed).</summary>
    public static int Read(int fd, Span<byte> buffer)
    {
        fixed (byte* p = buffer)
        {
            while (true)
            {
                var n = read(fd, p, buffer.Length);
                if (n >= 0)
                    return (int)n;
                if (Marshal.GetLastPInvokeError() != EINTR)
                    return 0;
            }
        }
    }
}

/// <summary>How a child's stdin/stdout/stderr are connected.</summary>
internal abstract record ChildIo
{
    /// <summary>stdin from /dev/null, stdout and stderr to the write ends of two pipes.</summary>
    public sealed record Pipes(int StdoutWrite, int StderrWrite) : ChildIo;

    /// <summary>The PTY slave (opened by path, which makes it the controlling terminal of the new session) on 0, 1 and 2.</summary>
    public sealed record Terminal(string SlavePath) : ChildIo;
}

/// <summary>
/// A child process started with posix_spawn in its own session (so its whole tree can be signalled), all signals
/// reset to default. A dedicated thread reaps it with waitpid. Every live child is registered so the gateway can
/// kill them all when it exits.
/// </summary>
internal sealed class NativeProcess
{
    private static readonly ConcurrentDictionary<int, NativeProcess> Live = new();
    private static int _exitHookInstalled;
    private readonly TaskCompletionSource<int> _exited = new(TaskCreationOptions.RunContinuationsAsynchronously);

    private NativeProcess(int pid)
    {
        Pid = pid;
    }

    public int Pid { get; }

    /// <summary>Completes with the exit code (128+signal when killed by a signal).</summary>
    public Task<int> Exited => _exited.Task;

    public bool HasExited => _exited.Task.IsCompleted;

    public static unsafe NativeProcess Spawn(string file, IReadOnlyList<string> argv, IEnumerable<KeyValuePair<string, string>> env, string? cwd, ChildIo io)
    {
        InstallExitHook();
        var actions = Marshal.AllocHGlobal(1024);
        var attributes = Marshal.AllocHGlobal(1024);
        var signals = Marshal.AllocHGlobal(256);
        var strings = new List<IntPtr>();
        try
        {
            new Span<byte>((void*)actions, 1024).Clear();
            new Span<byte>((void*)attributes, 1024).Clear();
            Libc.posix_spawn_file_actions_init(actions);
            Libc.posix_spawnattr_init(attributes);
            Libc.posix_spawnattr_setflags(attributes, Libc.POSIX_SPAWN_SETSID | Libc.POSIX_SPAWN_SETSIGDEF | Libc.POSIX_SPAWN_SETSIGMASK);
            Libc.sigfillset(signals);
            Libc.posix_spawnattr_setsigdefault(attributes, signals);
            Libc.sigemptyset(signals);
            Libc.posix_spawnattr_setsigmask(attributes, signals);
            switch (io)
            {
                case ChildIo.Pipes p:
                    Libc.posix_spawn_file_actions_addopen(actions, 0, "/dev/null", Libc.O_RDONLY, 0);
                    Libc.posix_spawn_file_actions_adddup2(actions, p.StdoutWrite, 1);
                    Libc.posix_spawn_file_actions_adddup2(actions, p.StderrWrite, 2);
                    break;
                case ChildIo.Terminal t:
                    Libc.posix_spawn_file_actions_addopen(actions, 0, t.SlavePath, Libc.O_RDWR, 0);
                    Libc.posix_spawn_file_actions_adddup2(actions, 0, 1);
                    Libc.posix_spawn_file_actions_adddup2(actions, 0, 2);
                    break;
            }
            if (!string.IsNullOrEmpty(cwd))
                Libc.posix_spawn_file_actions_addchdir_np(actions, cwd);

            var argvArray = (IntPtr*)Marshal.AllocHGlobal((argv.Count + 1) * sizeof(IntPtr));
            strings.Add((IntPtr)argvArray);
            for (var i = 0; i < argv.Count; i++)
            {
                argvArray[i] = Marshal.StringToCoTaskMemUTF8(argv[i]);
                strings.Add(argvArray[i]);
            }
            argvArray[argv.Count] = IntPtr.Zero;
            var envList = env.Select(kv => kv.Key + "=" + kv.Value).ToList();
            var envArray = (IntPtr*)Marshal.AllocHGlobal((envList.Count + 1) * sizeof(IntPtr));
            strings.Add((IntPtr)envArray);
            for (var i = 0; i < envList.Count; i++)
            {
                envArray[i] = Marshal.StringToCoTaskMemUTF8(envList[i]);
                strings.Add(envArray[i]);
            }
            envArray[envList.Count] = IntPtr.Zero;

            var rc = Libc.posix_spawnp(out var pid, file, actions, attributes, (IntPtr)argvArray, (IntPtr)envArray);
            if (rc != 0)
                throw new IOException($"cannot start '{file}': {Libc.Error(rc)}");
            var process = new NativeProcess(pid);
            Live[pid] = process;
            var reaper = new Thread(process.Reap) { IsBackground = true, Name = "reap " + pid.ToString(CultureInfo.InvariantCulture) };
            reaper.Start();
            return process;
        }
        finally
        {
            Libc.posix_spawn_file_actions_destroy(actions);
            Libc.posix_spawnattr_destroy(attributes);
            Marshal.FreeHGlobal(actions);
            Marshal.FreeHGlobal(attributes);
            Marshal.FreeHGlobal(signals);
            foreach (var p in strings)
                Marshal.FreeHGlobal(p);
        }
    }

    /// <summary>Creates a close-on-exec pipe: (read end, write end).</summary>
    public static unsafe (int Read, int Write) CreatePipe()
    {
        var fds = stackalloc int[2];
        if (Libc.pipe2(fds, Libc.O_CLOEXEC) != 0)
            throw new IOException("pipe2 failed: " + Libc.Error(Marshal.GetLastPInvokeError()));
        return (fds[0], fds[1]);
    }

    /// <summary>Signals the child's whole session: its process group and every process that kept its session id.</summary>
    public void SignalSession(int signal)
    {
        if (HasExited)
        {
            // The leader is gone but members of its session may remain.
            KillSessionMembers(Pid, signal);
            return;
        }
        Libc.kill(-Pid, signal);
        Libc.kill(Pid, signal);
        KillSessionMembers(Pid, signal);
    }

    /// <summary>Sends <paramref name="signal"/>, waits up to <paramref name="grace"/>, then SIGKILLs the session.</summary>
    public async Task<int> TerminateAsync(int signal, TimeSpan grace)
    {
        SignalSession(signal);
        var finished = await Task.WhenAny(Exited, Task.Delay(grace)) == Exited;
        if (!finished)
            SignalSession(Libc.SIGKILL);
        var code = await Exited;
        KillSessionMembers(Pid, Libc.SIGKILL);
        return code;
    }

    /// <summary>Processes (other than the leader) whose session or process group is <paramref name="sid"/>.</summary>
    public static List<int> SessionMembers(int sid)
    {
        var list = new List<int>();
        foreach (var dir in Directory.EnumerateDirectories("/proc"))
        {
            var name = Path.GetFileName(dir);
            if (name.Length == 0 || !char.IsAsciiDigit(name[0]) || !int.TryParse(name, NumberStyles.None, CultureInfo.InvariantCulture, out var pid))
                continue;
            if (ProcStat.TryRead(pid) is { } stat && (stat.Session == sid || stat.ProcessGroup == sid) && stat.State != 'Z')
                list.Add(pid);
        }
        return list;
    }

    private static void KillSessionMembers(int sid, int signal)
    {
        foreach (var pid in SessionMembers(sid))
            Libc.kill(pid, signal);
    }

    private void Reap()
    {
        int code;
        while (true)
        {
            var r = Libc.waitpid(Pid, out var status, 0);
            if (r == Pid)
            {
                code = (status & 0x7f) == 0 ? (status >> 8) & 0xff : 128 + (status & 0x7f);
                break;
            }
            if (r < 0 && Marshal.GetLastPInvokeError() == Libc.EINTR)
                continue;
            code = -1;
            break;
        }
        Live.TryRemove(Pid, out _);
        _exited.TrySetResult(code);
    }

    private static void InstallExitHook()
    {
        if (Interlocked.Exchange(ref _exitHookInstalled, 1) != 0)
            return;
        // Last line of defence against orphans: whatever is still running when the gateway exits is killed.
        AppDomain.CurrentDomain.ProcessExit += (_, _) => KillAll();
    }

    /// <summary>SIGKILLs every live child session.</summary>
    public static void KillAll()
    {
        foreach (var p in Live.Values)
            p.SignalSession(Libc.SIGKILL);
    }
}

/// <summary>The fields of /proc/PID/stat environments use.</summary>
internal readonly record struct ProcStat(int Pid, char State, int ParentPid, int ProcessGroup, int Session, long UserTicks, long SystemTicks, long RssPages)
{
    public static ProcStat? TryRead(int pid)
    {
        string text;
        try
        {
            text = File.ReadAllText("/proc/" + pid.ToString(CultureInfo.InvariantCulture) + "/stat");
        }
        catch (Exception ex) when (ex is IOException or UnauthorizedAccessException)
        {
            return null;
        }
        var close = text.LastIndexOf(')');
        if (close < 0 || close + 2 >= text.Length)
            return null;
        var f = text[(close + 2)..].Split(' ');
        // f[0]=state(3) f[1]=ppid(4) f[2]=pgrp(5) f[3]=session(6) ... f[11]=utime(14) f[12]=stime(15) ... f[21]=rss(24)
        if (f.Length < 22)
            return null;
        static long L(string s) => long.TryParse(s, NumberStyles.Integer, CultureInfo.InvariantCulture, out var v) ? v : 0;
        return new ProcStat(pid, f[0][0], (int)L(f[1]), (int)L(f[2]), (int)L(f[3]), L(f[11]), L(f[12]), L(f[21]));
    }
}
