using System.Diagnostics;
using System.Globalization;
using System.Runtime.InteropServices;
using System.Text;
using Switchboard.Bench;

// Fan-out benchmark: Switchboard against a raw Kestrel broadcast server, same scenarios, same run.
//   Switchboard.Bench --switchboard PATH/switchboard.dll --raw PATH/RawKestrelBroadcast.dll --out results/latest.md [--quick]
var options = Args.Parse(args);
using var cts = new CancellationTokenSource(TimeSpan.FromMinutes(options.Quick ? 5 : 12));
using var exitHandlers = ServerProcess.KillAllOnExit(cts);

var ct = cts.Token;
if (options.Cluster)
{
    // Cross-node fan-out: one node (SQLite), one node (PostgreSQL), three nodes (PostgreSQL), same scenarios.
    string clusterReport;
    try
    {
        clusterReport = await ClusterBench.RunAsync(options, (env, dir, token) => MintTokenAsync(options.Switchboard, dir, env, token), ct);
    }
    finally
    {
        ServerProcess.KillAll();
    }
    Console.WriteLine();
    Console.WriteLine(clusterReport);
    Directory.CreateDirectory(Path.GetDirectoryName(Path.GetFullPath(options.Out))!);
    await File.WriteAllTextAsync(options.Out, clusterReport, CancellationToken.None);
    Console.WriteLine($"written to {options.Out}");
    return 0;
}
var rate = new List<RateResult>();
var full = new List<FullResult>();
var idle = new List<IdleResult>();
var started = DateTime.UtcNow;
var duration = TimeSpan.FromSeconds(options.Quick ? 3 : 10);
var fullWarm = TimeSpan.FromSeconds(options.Quick ? 1 : 2);
var fullMeasure = TimeSpan.FromSeconds(options.Quick ? 2 : 5);
var idleCount = options.Quick ? 1000 : 10_000;
var settle = TimeSpan.FromSeconds(options.Quick ? 3 : 10);
var fanoutSubs = options.Quick ? 200 : 1000;

try
{
    foreach (var kind in options.Targets)
    {
        // (a) and (b) share one server process per target.
        if (options.Scenarios.Contains('a', StringComparison.Ordinal) || options.Scenarios.Contains('b', StringComparison.Ordinal))
        {
        Console.WriteLine($"== {kind}: fixed rate and full speed");
        Report.Phase($"{kind} (a)+(b)");
        await Guard(kind + " (a)+(b)", async () =>
        {
            await using var target = await StartAsync(kind, options, ct);
            if (options.WarmupSeconds > 0)
            {
                // Steady state, not start-up: the server's tiered JIT recompiles hot code in the background for the
                // first tens of seconds, and a larger server has more to recompile. Unmeasured, same for every target.
                Console.WriteLine($"   warming up: {options.WarmupSeconds} s at full speed, 100 subscribers (not measured)");
                await Scenarios.FullSpeedAsync(target, 100, TimeSpan.Zero, TimeSpan.FromSeconds(options.WarmupSeconds), publishers: 8, window: 64, ct);
            }
            await Guard(kind + " (a)", async () =>
            {
                if (!options.Scenarios.Contains('a', StringComparison.Ordinal))
                    return;
                var r = await Scenarios.FixedRateAsync(target, fanoutSubs, 100, duration, ct);
                rate.Add(r);
                Console.WriteLine($"   (a) {r}");
            });
            foreach (var n in options.Scenarios.Contains('b', StringComparison.Ordinal) ? new[] { 100, fanoutSubs } : [])
            {
                await Guard($"{kind} (b) {n}", async () =>
                {
                    var f = await Scenarios.FullSpeedAsync(target, n, fullWarm, fullMeasure, publishers: 8, window: 64, ct);
                    full.Add(f);
                    Console.WriteLine($"   (b) {f}");
                });
            }
        });
        }
        if (!options.Scenarios.Contains('c', StringComparison.Ordinal))
            continue;
        // (c) on a fresh process, so the baseline is a server that has not yet held thousands of sockets.
        Console.WriteLine($"== {kind}: idle memory");
        Report.Phase($"{kind} (c)");
        await Guard(kind + " (c)", async () =>
        {
            await using var target = await StartAsync(kind, options, ct);
            var i = await Scenarios.IdleMemoryAsync(target, idleCount, settle, ct);
            idle.Add(i);
            Console.WriteLine($"   (c) {i}");
        });
    }
}
catch (OperationCanceledException) when (ct.IsCancellationRequested)
{
    Console.Error.WriteLine("benchmark interrupted or over its time limit; writing what was measured");
}
finally
{
    ServerProcess.KillAll();
}

var report = Report.Build(options, rate, full, idle, DateTime.UtcNow - started);
Console.WriteLine();
Console.WriteLine(report);
Directory.CreateDirectory(Path.GetDirectoryName(Path.GetFullPath(options.Out))!);
await File.WriteAllTextAsync(options.Out, report, CancellationToken.None);
Console.WriteLine($"written to {options.Out}");
return rate.Count + full.Count + idle.Count == 0 ? 1 : 0;

// A failing scenario is reported and the run goes on with the next one.
async Task Guard(string name, Func<Task> body)
{
    try
    {
        await body();
    }
    catch (Exception ex) when (!ct.IsCancellationRequested)
    {
        Console.Error.WriteLine($"   {name} failed: {ex.GetType().Name}: {ex.Message}");
        Report.Failure($"{name}: {ex.GetType().Name}: {ex.Message}");
    }
}

static async Task<Target> StartAsync(string kind, Args options, CancellationToken ct)
{
    if (kind is "raw" or "raw-wks")
    {
        // raw: the Web SDK defaults (Server GC). raw-wks: the same server with Workstation GC, the mode the gateway's CLI runs with.
        var rawEnv = new Dictionary<string, string>();
        if (kind == "raw-wks")
            rawEnv["DOTNET_gcServer"] = "0";
        var server = await ServerProcess.StartAsync(kind == "raw" ? "raw-kestrel" : "raw-kestrel-wks", options.Raw, ["--urls", "http://127.0.0.1:{port}"],
            rawEnv, "/stats", null, ct);
        return new RawTarget(server);
    }
    var dir = Directory.CreateTempSubdirectory("switchboard-bench-").FullName;
    var secret = Convert.ToHexStringLower(System.Security.Cryptography.RandomNumberGenerator.GetBytes(32));
    var apiKey = Convert.ToHexStringLower(System.Security.Cryptography.RandomNumberGenerator.GetBytes(24));
    var env = new Dictionary<string, string>
    {
        ["SWITCHBOARD_JWT_SECRET"] = secret,
        ["SWITCHBOARD_API_KEY"] = apiKey,
        // Every client of the benchmark comes from 127.0.0.1 with one subject: lift the per-IP and per-user limits.
        ["Switchboard__Limits__ConnectionsPerIpPerSecond"] = "1000000",
        ["Switchboard__Limits__ConnectionBurstPerIp"] = "1000000",
        ["Switchboard__Limits__MaxConnectionsPerUser"] = "1000000",
        ["Logging__LogLevel__Default"] = "Warning",
    };
    var token = await MintTokenAsync(options.Switchboard, dir, env, ct);
    var sb = await ServerProcess.StartAsync("switchboard", options.Switchboard, ["serve", "--urls", "http://127.0.0.1:{port}", "--data-dir", dir],
        env, "/healthz", dir, ct);
    return new SwitchboardTarget(sb, token, apiKey, "bench:fanout");
}

static async Task<string> MintTokenAsync(string dll, string dir, Dictionary<string, string> env, CancellationToken ct)
{
    var psi = new ProcessStartInfo("dotnet") { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
    foreach (var a in new[] { dll, "token", "--sub", "bench", "--channels", "bench:*", "--publish", "bench:*", "--ttl", "2h", "--data-dir", dir })
        psi.ArgumentList.Add(a);
    foreach (var (k, v) in env)
        psi.Environment[k] = v;
    using var p = Process.Start(psi) ?? throw new InvalidOperationException("cannot run switchboard token");
    var stdout = await p.StandardOutput.ReadToEndAsync(ct);
    var stderr = await p.StandardError.ReadToEndAsync(ct);
    await p.WaitForExitAsync(ct);
    if (p.ExitCode != 0)
        throw new InvalidOperationException("switchboard token failed: " + stderr);
    return stdout.Trim();
}

internal sealed record Args(string Switchboard, string Raw, string Out, bool Quick, string[] Targets, bool Cluster = false, string? Database = null, int? Rate = null,
    string Scenarios = "abc", int WarmupSeconds = 15)
{
    public static Args Parse(string[] args)
    {
        string? sb = null, raw = null, output = "bench/results/latest.md";
        var quick = false;
        var cluster = false;
        string? database = null;
        int? rate = null;
        string[] targets = ["switchboard", "raw", "raw-wks"];
        var scenarios = "abc";
        int? warmup = null;
        for (var i = 0; i < args.Length; i++)
        {
            switch (args[i])
            {
                case "--switchboard": sb = args[++i]; break;
                case "--raw": raw = args[++i]; break;
                case "--out": output = args[++i]; break;
                case "--quick": quick = true; break;
                case "--cluster": cluster = true; break;
                case "--database": database = args[++i]; break;
                case "--rate": rate = int.Parse(args[++i], System.Globalization.CultureInfo.InvariantCulture); break;
                case "--targets": targets = args[++i].Split(','); break;
                case "--scenarios": scenarios = args[++i].Replace(",", "", StringComparison.Ordinal); break;
                case "--warmup": warmup = int.Parse(args[++i], System.Globalization.CultureInfo.InvariantCulture); break;
                default: throw new ArgumentException("unknown argument " + args[i]);
            }
        }
        return new Args(sb ?? throw new ArgumentException("--switchboard is required"), raw ?? throw new ArgumentException("--raw is required"),
            output, quick, targets, cluster, database, rate, scenarios, warmup ?? (quick ? 3 : 15));
    }
}

internal static class Report
{
    private static readonly List<string> Phases = [];
    private static readonly List<string> Failures = [];

    public static void Failure(string text) => Failures.Add(text);

    /// <summary>Notes the load average when a phase starts (other work on the machine skews every number).</summary>
    public static void Phase(string name)
    {
        var load = File.ReadAllText("/proc/loadavg").Split(' ');
        Phases.Add($"| {name} | {DateTime.UtcNow:HH:mm:ss} | {load[0]} / {load[1]} |");
    }

    public static string Build(Args options, List<RateResult> rate, List<FullResult> full, List<IdleResult> idle, TimeSpan took)
    {
        var c = CultureInfo.InvariantCulture;
        var sb = new StringBuilder();
        sb.AppendLine(c, $"# Fan-out benchmark results");
        sb.AppendLine();
        sb.AppendLine(c, $"- date (UTC): {DateTime.UtcNow:yyyy-MM-dd HH:mm}, run took {took.TotalSeconds:F0} s{(options.Quick ? ", --quick (smaller counts)" : "")}");
        sb.AppendLine(c, $"- machine: {Environment.ProcessorCount} cores, {MemTotal()}, {RuntimeInformation.OSDescription}, .NET {Environment.Version}");
        sb.AppendLine(c, $"- all processes on 127.0.0.1; the load generator shares the cores with the server under test");
        sb.AppendLine();
        sb.AppendLine("## (a) Fixed rate: 100 msg/s, latency publish -> receive");
        sb.AppendLine();
        sb.AppendLine("Latency buckets are 10 µs wide and end at 5,000 ms (5000.01 means 5 s or more). 'last ack s': when the last publish was acknowledged (10 s = the server kept up with the rate); 'window s': first publish to last delivery.");
        sb.AppendLine();
        sb.AppendLine("| server | subscribers | published | last ack s | window s | deliveries expected | delivered | deliveries/s | p50 ms | p99 ms | max ms | errors | server CPU % |");
        sb.AppendLine("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
        foreach (var r in rate)
            sb.AppendLine(c, $"| {r.Target} | {r.Subscribers:N0} | {r.Published:N0} | {r.AckedSeconds:F1} | {r.WindowSeconds:F1} | {r.Expected:N0} | {r.Delivered:N0} | {r.DeliveriesPerSecond:N0} | {r.P50:F2} | {r.P99:F2} | {r.Max:F2} | {r.Errors} | {r.ServerCpuPercent:F0} |");
        sb.AppendLine();
        sb.AppendLine("## (b) Full speed: publishers as fast as deliveries allow (8 HTTP publish loops, window 64 messages)");
        sb.AppendLine();
        sb.AppendLine("| server | subscribers | publishes/s | deliveries/s | % of raw Kestrel | errors | server CPU % | load generator CPU % |");
        sb.AppendLine("|---|---:|---:|---:|---:|---:|---:|---:|");
        foreach (var f in full)
        {
            var raw = full.FirstOrDefault(x => x.Target == "raw-kestrel" && x.Subscribers == f.Subscribers);
            var pct = raw is null || raw.DeliveriesPerSecond == 0 ? "" : (100 * f.DeliveriesPerSecond / raw.DeliveriesPerSecond).ToString("F0", c) + " %";
            sb.AppendLine(c, $"| {f.Target} | {f.Subscribers:N0} | {f.PublishesPerSecond:N0} | {f.DeliveriesPerSecond:N0} | {pct} | {f.Errors} | {f.ServerCpuPercent:F0} | {f.BenchCpuPercent:F0} |");
        }
        sb.AppendLine();
        sb.AppendLine("## (c) Idle connections: server RSS (VmRSS) after connect + settle, minus baseline");
        sb.AppendLine();
        sb.AppendLine("| server | connections | baseline MB | peak MB | settled MB | KB per connection (settled) | threads | errors | connect time s |");
        sb.AppendLine("|---|---:|---:|---:|---:|---:|---:|---:|---:|");
        foreach (var i in idle)
            sb.AppendLine(c, $"| {i.Target} | {i.Connections:N0} | {i.BaselineKb / 1024.0:F1} | {i.PeakKb / 1024.0:F1} | {i.LoadedKb / 1024.0:F1} | {i.KbPerConnection:F1} | {i.Threads} | {i.Errors} | {i.ConnectSeconds:F1} |");
        sb.AppendLine();
        AppendPhases(sb);
        sb.AppendLine("GC modes: switchboard = Server GC in its adaptive mode (DATAS), non-concurrent, no dynamic PGO (the CLI's settings), raw-kestrel = Server (Web SDK defaults), raw-kestrel-wks = Workstation. Each server first runs an unmeasured warm-up (--warmup, default 15 s at full speed to 100 subscribers) before (a) and (b).");
        sb.AppendLine();
        if (Failures.Count > 0)
        {
            sb.AppendLine("## Failed scenarios");
            sb.AppendLine();
            foreach (var f in Failures)
                sb.AppendLine("- " + f);
            sb.AppendLine();
        }
        sb.AppendLine("## Targets");
        sb.AppendLine();
        foreach (var r in rate.Where(x => x.Target == "switchboard"))
            sb.AppendLine(c, $"- (a) p99 < 50 ms at {r.Subscribers:N0} x 100 msg/s: {r.P99:F2} ms, {r.Delivered:N0}/{r.Expected:N0} delivered -> {(r.P99 < 50 && r.Delivered >= r.Expected ? "met" : "NOT met")}");
        foreach (var f in full.Where(x => x.Target == "switchboard"))
        {
            var raw = full.FirstOrDefault(x => x.Target == "raw-kestrel" && x.Subscribers == f.Subscribers);
            if (raw is { DeliveriesPerSecond: > 0 })
            {
                var pct = 100 * f.DeliveriesPerSecond / raw.DeliveriesPerSecond;
                sb.AppendLine(c, $"- (b) >= 80 % of raw Kestrel at {f.Subscribers:N0} subscribers: {pct:F0} % -> {(pct >= 80 ? "met" : "NOT met")}");
            }
        }
        foreach (var i in idle.Where(x => x.Target == "switchboard"))
            sb.AppendLine(c, $"- (c) < 12 KB per idle connection: {i.KbPerConnection:F1} KB -> {(i.KbPerConnection < 12 ? "met" : "NOT met")}");
        return sb.ToString();
    }

    public static void AppendPhases(StringBuilder sb)
    {
        sb.AppendLine("## Machine load when each phase started (1 / 5 min load average; 2 cores)");
        sb.AppendLine();
        sb.AppendLine("| phase | time (UTC) | load |");
        sb.AppendLine("|---|---|---|");
        foreach (var p in Phases)
            sb.AppendLine(p);
        sb.AppendLine();
    }

    private static string MemTotal()
    {
        var line = File.ReadLines("/proc/meminfo").FirstOrDefault(l => l.StartsWith("MemTotal:", StringComparison.Ordinal));
        return line is null ? "?" : $"{long.Parse(line[9..].Trim().Split(' ')[0], CultureInfo.InvariantCulture) / 1024 / 1024.0:F1} GB RAM";
    }
}
