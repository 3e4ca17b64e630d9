namespace Switchboard.Server.Environments;

/// <summary>Receives output lines of a workload: stream 1 is stdout, 2 is stderr. The list is handed over.</summary>
internal delegate void LineSink(byte stream, List<string> lines);

/// <summary>A running workload of some driver.</summary>
internal interface IWorkload
{
    int? Pid { get; }

    /// <summary>Completes with the exit code once the workload ended and its output was read to the end.</summary>
    Task<int> Completion { get; }

    /// <summary>SIGTERM, then SIGKILL after <paramref name="grace"/>.</summary>
    Task StopAsync(TimeSpan grace);

    /// <summary>SIGKILL at once (gateway shutdown, delete).</summary>
    void Kill();
}

/// <summary>
/// The <c>process</c> driver: the command in its own session, stdout and stderr on pipes read by two dedicated
/// threads that never wait on anything but the pipe, so the process is never stalled by the gateway.
/// </summary>
internal sealed class ProcessWorkload : IWorkload
{
    private readonly NativeProcess _process;
    private readonly Thread[] _readers;
    private readonly TaskCompletionSource _readersDone = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private int _readersLeft = 2;

    private ProcessWorkload(NativeProcess process, int stdoutRead, int stderrRead, LineSink sink, int maxLineBytes)
    {
        _process = process;
        _readers =
        [
            new Thread(() => ReadLoop(stdoutRead, 1, sink, maxLineBytes)) { IsBackground = true, Name = "stdout " + process.Pid },
            new Thread(() => ReadLoop(stderrRead, 2, sink, maxLineBytes)) { IsBackground = true, Name = "stderr " + process.Pid },
        ];
        foreach (var t in _readers)
            t.Start();
        Completion = CompleteAsync();
    }

    public int? Pid => _process.Pid;

    public Task<int> Completion { get; }

    public static ProcessWorkload Start(EnvironmentRecord record, LineSink sink, int maxLineBytes)
    {
        if (string.IsNullOrEmpty(record.Command))
            throw new IOException("the process driver needs a command");
        if (!string.IsNullOrEmpty(record.Cwd) && !Directory.Exists(record.Cwd))
            throw new IOException($"working directory '{record.Cwd}' does not exist");
        var (outRead, outWrite) = NativeProcess.CreatePipe();
        var (errRead, errWrite) = NativeProcess.CreatePipe();
        NativeProcess process;
        try
        {
            process = NativeProcess.Spawn(record.Command, [record.Command, .. record.Args], Environment(record.Env), record.Cwd,
                new ChildIo.Pipes(outWrite, errWrite));
        }
        catch
        {
            Libc.close(outRead);
            Libc.close(errRead);
            throw;
        }
        finally
        {
            Libc.close(outWrite);
            Libc.close(errWrite);
        }
        return new ProcessWorkload(process, outRead, errRead, sink, maxLineBytes);
    }

    /// <summary>The gateway's environment with the environment's variables on top.</summary>
    public static Dictionary<string, string> Environment(IReadOnlyDictionary<string, string> overrides, string? term = null)
    {
        var env = new Dictionary<string, string>(StringComparer.Ordinal);
        foreach (System.Collections.DictionaryEntry e in System.Environment.GetEnvironmentVariables())
            env[(string)e.Key] = (string?)e.Value ?? "";
        // Variables of the gateway itself that a workload must not see.
        foreach (var key in env.Keys.Where(k => k.StartsWith("SWITCHBOARD_", StringComparison.Ordinal) || k.StartsWith("DOTNET_", StringComparison.Ordinal)).ToList())
            env.Remove(key);
        if (term is not null)
            env["TERM"] = term;
        foreach (var (k, v) in overrides)
            env[k] = v;
        return env;
    }

    public Task StopAsync(TimeSpan grace) => _process.TerminateAsync(Libc.SIGTERM, grace);

    public void Kill() => _process.SignalSession(Libc.SIGKILL);

    private async Task<int> CompleteAsync()
    {
        var code = await _process.Exited;
        // Like a container: when the main process ends, what it left behind in its session ends too.
        _process.SignalSession(Libc.SIGKILL);
        await Task.WhenAny(_readersDone.Task, Task.Delay(TimeSpan.FromSeconds(2)));
        return code;
    }

    private void ReadLoop(int fd, byte stream, LineSink sink, int maxLineBytes)
    {
        var buffer = new byte[64 * 1024];
        var splitter = new LineSplitter(maxLineBytes);
        var lines = new List<string>();
        try
        {
            while (true)
            {
                var n = Libc.Read(fd, buffer);
                if (n <= 0)
                    break;
                splitter.Push(buffer.AsSpan(0, n), lines);
                if (lines.Count > 0)
                {
                    sink(stream, lines);
                    lines = [];
                }
            }
            splitter.Flush(lines);
            if (lines.Count > 0)
                sink(stream, lines);
        }
        finally
        {
            Libc.close(fd);
            if (Interlocked.Decrement(ref _readersLeft) == 0)
                _readersDone.TrySetResult();
        }
    }
}
