using System.Diagnostics;
using System.Text;

namespace Switchboard.Cli.Tests;

/// <summary>
/// Runs the real <c>switchboard</c> CLI (or the standalone <c>switchboard-agent</c>) as a child process: the built dll next
/// to the tests, or the native executable named by <c>SWITCHBOARD_TEST_CLI</c> / <c>SWITCHBOARD_TEST_AGENT</c> (test.sh
/// runs these tests a second time against the native build).
/// </summary>
internal sealed partial class CliProcess : IAsyncDisposable
{
    [System.Text.RegularExpressions.GeneratedRegex(@"Listening\s+(http://\S+)")]
    private static partial System.Text.RegularExpressions.Regex ListeningLine();

    /// <summary>The gateway URL a <c>serve</c> process printed, once it is ready (<c>Mint a token</c> is its last line).</summary>
    public async Task<string> WaitForListeningUrlAsync() =>
        ListeningLine().Match(await WaitForOutputAsync("Mint a token", TimeSpan.FromSeconds(30))).Groups[1].Value;

    private readonly Process _process;
    private readonly StringBuilder _stdout = new();
    private readonly StringBuilder _stderr = new();
    private readonly Lock _gate = new();

    private CliProcess(Process process)
    {
        _process = process;
        process.OutputDataReceived += (_, e) => { if (e.Data is not null) lock (_gate) _stdout.AppendLine(e.Data); };
        process.ErrorDataReceived += (_, e) => { if (e.Data is not null) lock (_gate) _stderr.AppendLine(e.Data); };
        process.BeginOutputReadLine();
        process.BeginErrorReadLine();
    }

    public static string Dll => Path.Combine(AppContext.BaseDirectory, "switchboard.dll");

    /// <summary>The native executable under test, or null for the managed build.</summary>
    public static string? Native => Environment.GetEnvironmentVariable("SWITCHBOARD_TEST_CLI") is { Length: > 0 } path ? Path.GetFullPath(path) : null;

    /// <summary>The native standalone agent under test, or null for the managed build.</summary>
    /// <remarks>Without <c>SWITCHBOARD_TEST_AGENT</c>, the <c>switchboard-agent</c> next to a native <c>switchboard</c>.</remarks>
    public static string? NativeAgent => Environment.GetEnvironmentVariable("SWITCHBOARD_TEST_AGENT") is { Length: > 0 } path
        ? Path.GetFullPath(path)
        : Native is { } cli ? Path.Combine(Path.GetDirectoryName(cli)!, "switchboard-agent") : null;

    public string Stdout { get { lock (_gate) return _stdout.ToString(); } }
    public string Stderr { get { lock (_gate) return _stderr.ToString(); } }
    public Process Process => _process;

    public static CliProcess Start(string workingDirectory, IDictionary<string, string>? env, params string[] args) =>
        Start(Native, Dll, workingDirectory, env, args);

    /// <summary>Runs <c>switchboard-agent</c>, the tunnel agent on its own.</summary>
    public static CliProcess StartAgent(string workingDirectory, IDictionary<string, string>? env, params string[] args) =>
        Start(NativeAgent, Path.Combine(AppContext.BaseDirectory, "switchboard-agent.dll"), workingDirectory, env, args);

    private static CliProcess Start(string? native, string dll, string workingDirectory, IDictionary<string, string>? env, string[] args)
    {
        var psi = new ProcessStartInfo(native ?? "dotnet") { WorkingDirectory = workingDirectory, RedirectStandardOutput = true, RedirectStandardError = true };
        if (native is null)
            psi.ArgumentList.Add(dll);
        foreach (var a in args)
            psi.ArgumentList.Add(a);
        foreach (var key in new[] { "SWITCHBOARD_JWT_SECRET", "SWITCHBOARD_API_KEY", "SWITCHBOARD_DATABASE", "SWITCHBOARD_URLS", "SWITCHBOARD_DATA_DIR" })
            psi.Environment.Remove(key);
        if (env is not null)
            foreach (var (k, v) in env)
                psi.Environment[k] = v;
        return new CliProcess(Process.Start(psi)!);
    }

    public static Task<(int ExitCode, string Stdout, string Stderr)> RunAsync(string workingDirectory, IDictionary<string, string>? env, params string[] args) =>
        CompleteAsync(Start(workingDirectory, env, args));

    public static Task<(int ExitCode, string Stdout, string Stderr)> RunAgentAsync(string workingDirectory, IDictionary<string, string>? env, params string[] args) =>
        CompleteAsync(StartAgent(workingDirectory, env, args));

    private static async Task<(int ExitCode, string Stdout, string Stderr)> CompleteAsync(CliProcess started)
    {
        await using var p = started;
        using var cts = new CancellationTokenSource(TimeSpan.FromSeconds(60));
        await p._process.WaitForExitAsync(cts.Token);
        p._process.WaitForExit(); // flush redirected output
        return (p._process.ExitCode, p.Stdout, p.Stderr);
    }

    public async Task<string> WaitForOutputAsync(string text, TimeSpan timeout)
    {
        var deadline = DateTime.UtcNow + timeout;
        while (DateTime.UtcNow < deadline)
        {
            if (Stdout.Contains(text, StringComparison.Ordinal))
                return Stdout;
            if (_process.HasExited)
            {
                _process.WaitForExit(); // the output events can trail the exit
                if (Stdout.Contains(text, StringComparison.Ordinal))
                    return Stdout;
                throw new InvalidOperationException($"process exited with {_process.ExitCode}: {Stdout}\n{Stderr}");
            }
            await Task.Delay(50);
        }
        throw new TimeoutException($"'{text}' not printed within {timeout}: {Stdout}\n{Stderr}");
    }

    /// <summary>SIGTERM (graceful shutdown) and wait.</summary>
    public async Task<int> StopAsync()
    {
        if (!_process.HasExited)
        {
            _ = Kill(_process.Id, 15);
            using var cts = new CancellationTokenSource(TimeSpan.FromSeconds(20));
            await _process.WaitForExitAsync(cts.Token);
        }
        return _process.ExitCode;
    }

    [System.Runtime.InteropServices.DllImport("libc", EntryPoint = "kill", SetLastError = true)]
    private static extern int Kill(int pid, int signal);

    public async ValueTask DisposeAsync()
    {
        if (!_process.HasExited)
        {
            try
            {
                await StopAsync();
            }
            catch (OperationCanceledException)
            {
                _process.Kill(entireProcessTree: true);
            }
        }
        _process.Dispose();
    }
}
