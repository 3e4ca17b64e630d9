using System.Diagnostics;
using System.Globalization;
using System.Net;
using System.Net.Sockets;
using System.Runtime.InteropServices;

namespace Switchboard.Bench;

/// <summary>A server under test, started as a child process on 127.0.0.1 and killed (with its tree) on dispose.</summary>
internal sealed class ServerProcess : IAsyncDisposable
{
    private static readonly List<Process> Live = [];
    private readonly Process _process;
    private readonly string? _tempDir;

    private ServerProcess(string name, Process process, int port, string? tempDir)
    {
        Name = name;
        _process = process;
        Port = port;
        _tempDir = tempDir;
    }

    public string Name { get; }
    public int Port { get; }
    public int Pid => _process.Id;
    public Uri Http => new($"http://127.0.0.1:{Port}");

    /// <summary>
    /// Kills every server still running and cancels <paramref name="cts"/> on Ctrl+C and SIGTERM, and kills them on
    /// process exit. Dispose the result when the benchmark ends.
    /// </summary>
    public static IDisposable KillAllOnExit(CancellationTokenSource cts)
    {
        Console.CancelKeyPress += (_, e) =>
        {
            e.Cancel = true;
            KillAll();
            cts.Cancel();
        };
        AppDomain.CurrentDomain.ProcessExit += (_, _) => KillAll();
        return PosixSignalRegistration.Create(PosixSignal.SIGTERM, _ =>
        {
            KillAll();
            cts.Cancel();
        });
    }

    /// <summary>Kills every server still running (Ctrl+C, unhandled error).</summary>
    public static void KillAll()
    {
        lock (Live)
        {
            foreach (var p in Live)
            {
                try
                {
                    if (!p.HasExited)
                        p.Kill(entireProcessTree: true);
                }
                catch (InvalidOperationException)
                {
                }
            }
            Live.Clear();
        }
    }

    public static int FreePort()
    {
        using var l = new TcpListener(IPAddress.Loopback, 0);
        l.Start();
        return ((IPEndPoint)l.LocalEndpoint).Port;
    }

    public static async Task<ServerProcess> StartAsync(string name, string dll, IEnumerable<string> args, IDictionary<string, string> env,
        string healthPath, string? tempDir, CancellationToken cancellationToken)
    {
        var port = FreePort();
        var psi = new ProcessStartInfo("dotnet")
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            UseShellExecute = false,
        };
        psi.ArgumentList.Add(dll);
        foreach (var a in args)
            psi.ArgumentList.Add(a.Replace("{port}", port.ToString(CultureInfo.InvariantCulture), StringComparison.Ordinal));
        foreach (var (k, v) in env)
            psi.Environment[k] = v;
        var process = Process.Start(psi) ?? throw new InvalidOperationException("cannot start " + dll);
        lock (Live)
            Live.Add(process);
        // Drain output so the child never blocks on a full pipe; keep the tail for errors.
        var tail = new System.Collections.Concurrent.ConcurrentQueue<string>();
        void Keep(string? line)
        {
            if (line is null)
                return;
            tail.Enqueue(line);
            while (tail.Count > 40)
                tail.TryDequeue(out _);
        }
        process.OutputDataReceived += (_, e) => Keep(e.Data);
        process.ErrorDataReceived += (_, e) => Keep(e.Data);
        process.BeginOutputReadLine();
        process.BeginErrorReadLine();
        var server = new ServerProcess(name, process, port, tempDir);
        using var http = new HttpClient { Timeout = TimeSpan.FromSeconds(2) };
        var deadline = Stopwatch.StartNew();
        while (deadline.Elapsed < TimeSpan.FromSeconds(30))
        {
            if (process.HasExited)
                throw new InvalidOperationException($"{name} exited with {process.ExitCode}:\n{string.Join('\n', tail)}");
            try
            {
                using var r = await http.GetAsync(new Uri(server.Http, healthPath), cancellationToken);
                if (r.IsSuccessStatusCode || r.StatusCode == HttpStatusCode.Unauthorized)
                    return server;
            }
            catch (HttpRequestException)
            {
            }
            catch (TaskCanceledException)
            {
            }
            await Task.Delay(100, cancellationToken);
        }
        await server.DisposeAsync();
        throw new TimeoutException($"{name} did not answer {healthPath} within 30 s:\n{string.Join('\n', tail)}");
    }

    /// <summary>Resident set size in KiB (VmRSS from /proc).</summary>
    public long RssKb() => ReadStatusKb(Pid, "VmRSS:");

    public int Threads() => (int)ReadStatusKb(Pid, "Threads:");

    /// <summary>User + system CPU time of the server, from /proc/PID/stat.</summary>
    public TimeSpan CpuTime()
    {
        var stat = File.ReadAllText($"/proc/{Pid}/stat");
        var fields = stat[(stat.LastIndexOf(')') + 2)..].Split(' ');
        var ticks = long.Parse(fields[11], CultureInfo.InvariantCulture) + long.Parse(fields[12], CultureInfo.InvariantCulture);
        return TimeSpan.FromSeconds(ticks / 100.0); // USER_HZ is 100 on Linux
    }

    private static long ReadStatusKb(int pid, string key)
    {
        foreach (var line in File.ReadLines($"/proc/{pid}/status"))
        {
            if (line.StartsWith(key, StringComparison.Ordinal))
                return long.Parse(line[key.Length..].Trim().Split(' ')[0], CultureInfo.InvariantCulture);
        }
        return 0;
    }

    public async ValueTask DisposeAsync()
    {
        try
        {
            if (!_process.HasExited)
            {
                _process.Kill(entireProcessTree: true);
                await _process.WaitForExitAsync(new CancellationTokenSource(TimeSpan.FromSeconds(10)).Token);
            }
        }
        catch (Exception ex) when (ex is InvalidOperationException or OperationCanceledException)
        {
        }
        lock (Live)
            Live.Remove(_process);
        _process.Dispose();
        if (_tempDir is not null)
        {
            try
            {
                Directory.Delete(_tempDir, recursive: true);
            }
            catch (IOException)
            {
            }
        }
    }
}
