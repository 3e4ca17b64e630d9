using System.Diagnostics;
using System.Text;

namespace Switchboard.Server.Tests.Tunnels;

/// <summary>The real <c>switchboard tunnel http</c> command as a child process.</summary>
public sealed class CliAgentProcess : IDisposable
{
    private readonly Process _process;
    private readonly StringBuilder _output = new();

    private CliAgentProcess(Process process) => _process = process;

    public string Output
    {
        get
        {
            lock (_output)
                return _output.ToString();
        }
    }

    /// <summary>The CLI built next to this test assembly (same configuration), found from the repository root.</summary>
    private static string CliPath()
    {
        var dir = new DirectoryInfo(AppContext.BaseDirectory);
        var configuration = dir.Parent!.Name; // bin/{Configuration}/net10.0
        while (dir is not null && !File.Exists(Path.Combine(dir.FullName, "Switchboard.slnx")))
            dir = dir.Parent;
        Assert.NotNull(dir);
        var path = Path.Combine(dir.FullName, "src", "Switchboard.Cli", "bin", configuration, "net10.0", "switchboard.dll");
        Assert.True(File.Exists(path), $"CLI not built at {path}");
        return path;
    }

    public static async Task<CliAgentProcess> StartAsync(params string[] args)
    {
        var info = new ProcessStartInfo("dotnet") { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        info.ArgumentList.Add(CliPath());
        foreach (var a in args)
            info.ArgumentList.Add(a);
        var process = new Process { StartInfo = info };
        var agent = new CliAgentProcess(process);
        process.OutputDataReceived += (_, e) => agent.Append(e.Data);
        process.ErrorDataReceived += (_, e) => agent.Append(e.Data);
        process.Start();
        process.BeginOutputReadLine();
        process.BeginErrorReadLine();
        try
        {
            // The line after both Forwarding lines: the whole banner is there when this returns.
            await agent.WaitForOutputAsync("Press Ctrl-C to stop.", TimeSpan.FromSeconds(20));
        }
        catch
        {
            agent.Dispose();
            throw;
        }
        return agent;
    }

    private void Append(string? line)
    {
        if (line is null)
            return;
        lock (_output)
            _output.AppendLine(line);
    }

    public async Task WaitForOutputAsync(string text, TimeSpan timeout)
    {
        var clock = Stopwatch.StartNew();
        while (!Output.Contains(text, StringComparison.Ordinal))
        {
            if (_process.HasExited)
            {
                // The output events can trail the exit: the parameterless wait returns once both streams reached EOF.
                _process.WaitForExit();
                if (Output.Contains(text, StringComparison.Ordinal))
                    return;
                Assert.Fail($"no '{text}' from the agent (exited with {_process.ExitCode}); output:\n{Output}");
            }
            if (clock.Elapsed > timeout)
                Assert.Fail($"no '{text}' from the agent; output:\n{Output}");
            await Task.Delay(50);
        }
    }

    /// <summary>SIGKILL: no close frame, no goodbye.</summary>
    public void Kill()
    {
        _process.Kill(entireProcessTree: true);
        _process.WaitForExit(5000);
    }

    public void Dispose()
    {
        if (!_process.HasExited)
            Kill();
        _process.Dispose();
    }
}
