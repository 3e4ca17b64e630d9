using System.Diagnostics;
using System.Globalization;
using System.Net.Http.Headers;
using System.Net.Http.Json;
using System.Runtime.InteropServices;
using System.Text;
using System.Text.Json.Serialization;
using Switchboard.Bench;
using Switchboard.Bench.Environments;

// Environments benchmark: log throughput and line latency from a process to one WebSocket client, and terminal
// keystroke echo, each against its ceiling measured in the same run (the producer's pipe read directly, a bare PTY).
//   EnvironmentsBench --switchboard PATH/switchboard.dll [--out FILE] [--lines N] [--rate R] [--seconds S] [--keys K] [--repeat R] [--quick]
//   EnvironmentsBench produce RATE COUNT      (the paced producer of scenario (b); started by the benchmark itself)
if (args.Length == 3 && args[0] == "produce")
    return Producer.Run(long.Parse(args[1], CultureInfo.InvariantCulture), long.Parse(args[2], CultureInfo.InvariantCulture));

var o = BenchArgs.Parse(args);
using var cts = new CancellationTokenSource(TimeSpan.FromMinutes(10));
using var exitHandlers = ServerProcess.KillAllOnExit(cts);
var ct = cts.Token;
var report = new Report(o);
var loadBefore = Report.LoadAverage();

var dir = Directory.CreateTempSubdirectory("switchboard-envbench-").FullName;
var apiKey = Convert.ToHexStringLower(System.Security.Cryptography.RandomNumberGenerator.GetBytes(24));
var env = new Dictionary<string, string>
{
    ["SWITCHBOARD_JWT_SECRET"] = Convert.ToHexStringLower(System.Security.Cryptography.RandomNumberGenerator.GetBytes(32)),
    ["SWITCHBOARD_API_KEY"] = apiKey,
    ["Logging__LogLevel__Default"] = "Warning",
};
foreach (var kv in o.ServerEnv)
    env[kv[..kv.IndexOf('=', StringComparison.Ordinal)]] = kv[(kv.IndexOf('=', StringComparison.Ordinal) + 1)..];
try
{
    await using var server = await ServerProcess.StartAsync("switchboard", o.Switchboard, ["serve", "--urls", "http://127.0.0.1:{port}", "--data-dir", dir],
        env, "/healthz", dir, ct);
    using var http = new HttpClient { BaseAddress = server.Http, Timeout = TimeSpan.FromSeconds(30) };
    http.DefaultRequestHeaders.Authorization = new AuthenticationHeaderValue("Bearer", apiKey);
    var ws = new Uri($"ws://127.0.0.1:{server.Port}/api/v1/ws/environments/");
    var seq = File.Exists("/usr/bin/seq") ? "/usr/bin/seq" : "/bin/seq";
    var dotnet = Environment.ProcessPath ?? "dotnet";
    var self = typeof(Producer).Assembly.Location;
    var run = 0;

    // Warm-up (not recorded): a fresh gateway spends its first seconds in the JIT (tiered compilation), which on
    // 2 cores competes with the pipeline being measured. A long-running gateway has done that long ago.
    Console.WriteLine("== warm-up: 2 s at 100,000 lines/s and a 300,000-line burst through the gateway (not recorded)");
    {
        var id = await CreateAsync(http, "warm-paced", dotnet, [self, "produce", "100000", "200000"], ct);
        await LogReaders.WebSocketAsync(new Uri(ws, id + "/logs?tail=0"), apiKey, new LatencyCheck(0, 200_000), 200_000,
            () => StartAsync(http, id, ct), TimeSpan.FromSeconds(30), ct);
        await DeleteAsync(http, id, ct);
        id = await CreateAsync(http, "warm-burst", seq, ["1", "300000"], ct);
        await LogReaders.WebSocketAsync(new Uri(ws, id + "/logs?tail=0"), apiKey, new SeqCheck(), 300_000,
            () => StartAsync(http, id, ct), TimeSpan.FromSeconds(30), ct);
        await DeleteAsync(http, id, ct);
    }

    for (var repeat = 0; repeat < o.Repeat; repeat++)
    {
        // (a) throughput: seq 1 N as fast as it goes; the pipe first, then the gateway.
        Console.WriteLine($"== (a) throughput, {o.Lines:N0} lines (seq), round {repeat + 1}");
        var pipeA = new SeqCheck();
        var pipeOutcome = LogReaders.Pipe(seq, ["1", o.Lines.ToString(CultureInfo.InvariantCulture)], pipeA, o.Lines);
        report.Throughput("direct pipe", pipeA, pipeOutcome, null, null);
        Console.WriteLine("   " + report.Rows[^1]);

        var gwA = new SeqCheck();
        var id = await CreateAsync(http, $"flood-{++run}", seq, ["1", o.Lines.ToString(CultureInfo.InvariantCulture)], ct);
        var cpu0 = server.CpuTime();
        var outcome = await LogReaders.WebSocketAsync(new Uri(ws, id + "/logs?tail=0"), apiKey, gwA, o.Lines,
            () => StartAsync(http, id, ct), TimeSpan.FromSeconds(60), ct);
        var cpu = server.CpuTime() - cpu0;
        var info = await InfoAsync(http, id, ct);
        report.Throughput("switchboard", gwA, outcome, cpu, info);
        Console.WriteLine("   " + report.Rows[^1]);
        await DeleteAsync(http, id, ct);
    }

    // (a') sustained: the paced producer at increasing rates; every line must arrive (the pipe reads the same producer).
    foreach (var sweepRate in o.Sweep)
    {
        var lines = (long)(sweepRate * o.SweepSeconds);
        Console.WriteLine($"== (a') sustained {sweepRate:N0} lines/s for {o.SweepSeconds} s");
        string[] paced = [self, "produce", sweepRate.ToString(CultureInfo.InvariantCulture), lines.ToString(CultureInfo.InvariantCulture)];
        var pipe = new LatencyCheck(sweepRate / 2, lines);
        report.Sustained("direct pipe", sweepRate, pipe, LogReaders.Pipe(dotnet, paced, pipe, lines), null, null);
        Console.WriteLine("   " + report.Rows[^1]);
        var gw = new LatencyCheck(sweepRate / 2, lines);
        var id = await CreateAsync(http, $"paced-{sweepRate}", dotnet, paced, ct);
        var cpu0 = server.CpuTime();
        var outcome = await LogReaders.WebSocketAsync(new Uri(ws, id + "/logs?tail=0"), apiKey, gw, lines,
            () => StartAsync(http, id, ct), TimeSpan.FromSeconds(o.SweepSeconds + 30), ct);
        var cpu = server.CpuTime() - cpu0;
        report.Sustained("switchboard", sweepRate, gw, outcome, cpu, await InfoAsync(http, id, ct));
        Console.WriteLine("   " + report.Rows[^1]);
        await DeleteAsync(http, id, ct);
    }

    // (b) latency at a fixed rate: the paced producer; the pipe first, then the gateway.
    var total = (long)(o.Rate * o.Seconds);
    var warm = o.Rate; // the first second is warm-up
    Console.WriteLine($"== (b) latency at {o.Rate:N0} lines/s for {o.Seconds} s (first second not counted)");
    string[] produce = [self, "produce", o.Rate.ToString(CultureInfo.InvariantCulture), total.ToString(CultureInfo.InvariantCulture)];
    var pipeB = new LatencyCheck(warm, total);
    var pipeBOutcome = LogReaders.Pipe(dotnet, produce, pipeB, total);
    report.Latency("direct pipe", pipeB, pipeBOutcome, null);
    Console.WriteLine("   " + report.Rows[^1]);
    {
        var gwB = new LatencyCheck(warm, total);
        var id = await CreateAsync(http, "paced", dotnet, produce, ct);
        var cpu0 = server.CpuTime();
        var outcome = await LogReaders.WebSocketAsync(new Uri(ws, id + "/logs?tail=0"), apiKey, gwB, total,
            () => StartAsync(http, id, ct), TimeSpan.FromSeconds(o.Seconds + 30), ct);
        report.Latency("switchboard", gwB, outcome, server.CpuTime() - cpu0);
        Console.WriteLine("   " + report.Rows[^1]);
        await DeleteAsync(http, id, ct);
    }

    // (c) keystroke echo: bare PTY, then the gateway's terminal (shell replaced by cat).
    Console.WriteLine($"== (c) keystroke echo, {o.Keys:N0} keystrokes after {o.Keys / 10:N0} warm-up");
    var bare = Terminal.Bare(o.Keys / 10, o.Keys);
    report.Echo("bare PTY (posix_openpt in the benchmark process)", bare);
    Console.WriteLine("   " + report.Rows[^1]);
    {
        var id = await CreateAsync(http, "shell", "/bin/sh", ["-c", "sleep 3600"], ct);
        await StartAsync(http, id, ct);
        var gw = await Terminal.GatewayAsync(new Uri(ws, id + "/terminal?cols=200&rows=50"), apiKey, o.Keys / 10, o.Keys, ct);
        report.Echo("switchboard terminal (WebSocket, PTY, cat)", gw);
        Console.WriteLine("   " + report.Rows[^1]);
        await DeleteAsync(http, id, ct);
    }
}
catch (OperationCanceledException) when (ct.IsCancellationRequested)
{
    Console.Error.WriteLine("benchmark interrupted or over its time limit; writing what was measured");
}
catch (Exception ex) when (ex is IOException or HttpRequestException or System.Net.WebSockets.WebSocketException or InvalidOperationException or TimeoutException)
{
    Console.Error.WriteLine($"benchmark failed: {ex.GetType().Name}: {ex.Message}; writing what was measured");
    report.Failure($"{ex.GetType().Name}: {ex.Message}");
}
finally
{
    ServerProcess.KillAll();
}

var text = report.Build(loadBefore, Report.LoadAverage());
Console.WriteLine();
Console.WriteLine(text);
Directory.CreateDirectory(Path.GetDirectoryName(Path.GetFullPath(o.Out))!);
await File.WriteAllTextAsync(o.Out, text, CancellationToken.None);
Console.WriteLine($"written to {o.Out}");
return 0;

static async Task<string> CreateAsync(HttpClient http, string name, string command, string[] args, CancellationToken ct)
{
    using var r = await http.PostAsJsonAsync("/api/v1/environments", new CreateRequest(name, "process", command, args, false), BenchJsonContext.Default.CreateRequest, ct);
    r.EnsureSuccessStatusCode();
    var info = await r.Content.ReadFromJsonAsync(BenchJsonContext.Default.EnvInfo, ct);
    return info!.Id;
}

static async Task StartAsync(HttpClient http, string id, CancellationToken ct)
{
    using var r = await http.PostAsync($"/api/v1/environments/{id}/start", null, ct);
    r.EnsureSuccessStatusCode();
}

static async Task<EnvInfo?> InfoAsync(HttpClient http, string id, CancellationToken ct) =>
    await http.GetFromJsonAsync($"/api/v1/environments/{id}", BenchJsonContext.Default.EnvInfo, ct);

static async Task DeleteAsync(HttpClient http, string id, CancellationToken ct)
{
    using var r = await http.DeleteAsync($"/api/v1/environments/{id}", ct);
}

internal sealed record CreateRequest(string Name, string Driver, string Command, string[] Args, bool Start);

internal sealed record EnvInfo(string Id, string Status, long LastSeq, long DroppedLines);

internal sealed record Input(string Type, string Data);

internal sealed record Output(string Type, string? Data);

[JsonSourceGenerationOptions(PropertyNamingPolicy = JsonKnownNamingPolicy.CamelCase)]
[JsonSerializable(typeof(CreateRequest))]
[JsonSerializable(typeof(EnvInfo))]
[JsonSerializable(typeof(Input))]
[JsonSerializable(typeof(Output))]
internal sealed partial class BenchJsonContext : JsonSerializerContext;

internal sealed record BenchArgs(string Switchboard, string Out, long Lines, long Rate, double Seconds, int Keys, int Repeat, List<string> ServerEnv,
    long[] Sweep, double SweepSeconds)
{
    public static BenchArgs Parse(string[] args)
    {
        string? sb = null;
        var output = "bench/results/environments-latest.md";
        long lines = 3_000_000, rate = 100_000;
        double seconds = 6;
        int keys = 2000, repeat = 1;
        var serverEnv = new List<string>();
        long[] sweep = [250_000, 500_000, 750_000, 1_000_000];
        double sweepSeconds = 4;
        for (var i = 0; i < args.Length; i++)
        {
            switch (args[i])
            {
                case "--switchboard": sb = args[++i]; break;
                case "--out": output = args[++i]; break;
                case "--lines": lines = long.Parse(args[++i], CultureInfo.InvariantCulture); break;
                case "--rate": rate = long.Parse(args[++i], CultureInfo.InvariantCulture); break;
                case "--seconds": seconds = double.Parse(args[++i], CultureInfo.InvariantCulture); break;
                case "--keys": keys = int.Parse(args[++i], CultureInfo.InvariantCulture); break;
                case "--repeat": repeat = int.Parse(args[++i], CultureInfo.InvariantCulture); break;
                case "--sweep":
                    var list = args[++i];
                    sweep = list.Length == 0 ? [] : [.. list.Split(',').Select(s => long.Parse(s, CultureInfo.InvariantCulture))];
                    break;
                case "--sweep-seconds": sweepSeconds = double.Parse(args[++i], CultureInfo.InvariantCulture); break;
                case "--server-env": serverEnv.Add(args[++i]); break;
                case "--quick": lines = 1_000_000; seconds = 3; keys = 500; sweepSeconds = 2; break;
                default: throw new ArgumentException("unknown argument " + args[i]);
            }
        }
        return new BenchArgs(sb ?? throw new ArgumentException("--switchboard is required"), output, lines, rate, seconds, keys, repeat, serverEnv, sweep, sweepSeconds);
    }
}

/// <summary>Collects the rows and writes the markdown report.</summary>
internal sealed class Report(BenchArgs options)
{
    private readonly List<string> _throughput = [];
    private readonly List<(string Reader, double LinesPerSecond)> _rates = [];
    private readonly List<string> _latency = [];
    private readonly List<(string Reader, Percentiles P)> _latencies = [];
    private readonly List<string> _echo = [];
    private readonly List<(string Variant, Percentiles P)> _echoes = [];
    private readonly DateTime _started = DateTime.UtcNow;

    public List<string> Rows { get; } = [];

    private readonly List<string> _failures = [];

    public void Failure(string text) => _failures.Add(text);

    private static string N(double v) => v.ToString("N0", CultureInfo.InvariantCulture);
    private static string F(double v) => v.ToString("0.00", CultureInfo.InvariantCulture);

    public void Throughput(string reader, LineCheck c, ReadOutcome outcome, TimeSpan? serverCpu, EnvInfo? info)
    {
        var window = Stopwatch.GetElapsedTime(c.FirstTimestamp, c.LastTimestamp).TotalSeconds;
        var wall = Stopwatch.GetElapsedTime(outcome.StartTimestamp, c.LastTimestamp).TotalSeconds;
        var rate = c.Lines > 1 && window > 0 ? (c.Lines - 1) / window : 0;
        if (outcome.Complete && c.Errors == 0)
            _rates.Add((reader, rate));
        var cpu = serverCpu is { } t && wall > 0 ? N(t.TotalSeconds / wall * 100) : "-";
        var row = $"| {reader} | {N(c.Lines)} / {N(options.Lines)} | {N(rate)} | {F(wall)} | {c.Missing} | {c.Repeated} | {c.Corrupt} | {c.Skipped} | {outcome.Ending} | {cpu} | {(info is null ? "-" : N(info.DroppedLines))} |";
        _throughput.Add(row);
        Rows.Add(row);
    }

    private readonly List<string> _sustained = [];
    private readonly List<(string Reader, long Rate, double Achieved, bool Ok)> _sustainedResults = [];

    public void Sustained(string reader, long rate, LatencyCheck c, ReadOutcome outcome, TimeSpan? serverCpu, EnvInfo? info)
    {
        var p = c.Latency();
        var window = Stopwatch.GetElapsedTime(c.FirstTimestamp, c.LastTimestamp).TotalSeconds;
        var achieved = c.Lines > 1 && window > 0 ? (c.Lines - 1) / window : 0;
        var wall = Stopwatch.GetElapsedTime(outcome.StartTimestamp, c.LastTimestamp).TotalSeconds;
        var ok = outcome.Complete && c.Errors == 0;
        _sustainedResults.Add((reader, rate, achieved, ok));
        var cpu = serverCpu is { } t && wall > 0 ? N(t.TotalSeconds / wall * 100) : "-";
        var total = (long)(rate * options.SweepSeconds);
        var row = $"| {reader} | {N(rate)} | {N(c.Lines)} / {N(total)} | {N(achieved)} | {c.Missing} | {c.Repeated} | {c.Corrupt} | {c.Skipped} | {F(p.P50Ms)} | {F(p.P99Ms)} | {F(p.MaxMs)} | {outcome.Ending} | {cpu} | {(info is null ? "-" : N(info.DroppedLines))} |";
        _sustained.Add(row);
        Rows.Add(row);
    }

    public void Latency(string reader, LatencyCheck c, ReadOutcome outcome, TimeSpan? serverCpu)
    {
        var p = c.Latency();
        var wall = Stopwatch.GetElapsedTime(outcome.StartTimestamp, c.LastTimestamp).TotalSeconds;
        if (outcome.Complete && c.Errors == 0)
            _latencies.Add((reader, p));
        var cpu = serverCpu is { } t && wall > 0 ? N(t.TotalSeconds / wall * 100) : "-";
        var row = $"| {reader} | {N(c.Lines)} | {N(p.Count)} | {F(p.P50Ms)} | {F(p.P99Ms)} | {F(p.MaxMs)} | {c.Errors} | {outcome.Ending} | {cpu} |";
        _latency.Add(row);
        Rows.Add(row);
    }

    public void Echo(string variant, Percentiles p)
    {
        _echoes.Add((variant, p));
        var row = $"| {variant} | {N(p.Count)} | {p.P50Ms:0.000} | {p.P99Ms:0.000} | {p.MaxMs:0.000} |";
        _echo.Add(row);
        Rows.Add(row);
    }

    public static string LoadAverage()
    {
        try
        {
            return string.Join(' ', File.ReadAllText("/proc/loadavg").Split(' ').Take(3));
        }
        catch (IOException)
        {
            return "?";
        }
    }

    public string Build(string loadBefore, string loadAfter)
    {
        var b = new StringBuilder();
        b.AppendLine("# Environments benchmark results").AppendLine();
        b.AppendLine(CultureInfo.InvariantCulture, $"- date (UTC): {_started:yyyy-MM-dd HH:mm}, run took {(DateTime.UtcNow - _started).TotalSeconds:0} s");
        b.AppendLine(CultureInfo.InvariantCulture, $"- machine: {Environment.ProcessorCount} cores, {RuntimeInformation.OSDescription}, .NET {Environment.Version}");
        b.AppendLine(CultureInfo.InvariantCulture, $"- load average (1/5/15 min) before: {loadBefore}, after: {loadAfter}");
        b.AppendLine("- one `switchboard serve` (Release, SQLite store), the producer and the reader all on the same cores").AppendLine();
        b.AppendLine(CultureInfo.InvariantCulture, $"## (a) Log throughput: `seq 1 {options.Lines}` as fast as it goes, one reader");
        b.AppendLine();
        b.AppendLine("lines/s over first to last line received; 'wall s' from the start request (or process start) to the last line. Every line is checked: seq without gap or repeat, text equal to its number. 'not persisted' is the environment's droppedLines (lines the store did not keep; live clients still get them).");
        b.AppendLine();
        b.AppendLine("| reader | lines | lines/s | wall s | missing | repeated | corrupt | skipped | ending | server CPU % | not persisted |");
        b.AppendLine("|---|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|");
        foreach (var r in _throughput)
            b.AppendLine(r);
        b.AppendLine();
        b.AppendLine(CultureInfo.InvariantCulture, $"## (a') Sustained throughput: the paced producer (`TICKS N` lines) at fixed rates for {options.SweepSeconds} s, one reader");
        b.AppendLine();
        b.AppendLine("lines/s over first to last line received; latency = receive time - the wall clock the producer wrote into the line (the first half second not counted).");
        b.AppendLine();
        b.AppendLine("| reader | producer lines/s | lines | received lines/s | missing | repeated | corrupt | skipped | p50 ms | p99 ms | max ms | ending | server CPU % | not persisted |");
        b.AppendLine("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|");
        foreach (var r in _sustained)
            b.AppendLine(r);
        b.AppendLine();
        b.AppendLine(CultureInfo.InvariantCulture, $"## (b) Line latency at {options.Rate:N0} lines/s for {options.Seconds} s (paced producer writes its wall clock into each line; first second not counted)");
        b.AppendLine();
        b.AppendLine("| reader | lines | samples | p50 ms | p99 ms | max ms | errors | ending | server CPU % |");
        b.AppendLine("|---|---:|---:|---:|---:|---:|---:|---|---:|");
        foreach (var r in _latency)
            b.AppendLine(r);
        b.AppendLine();
        b.AppendLine("## (c) Terminal keystroke echo (kernel echo, canonical mode; one character at a time)");
        b.AppendLine();
        b.AppendLine("| variant | keystrokes | p50 ms | p99 ms | max ms |");
        b.AppendLine("|---|---:|---:|---:|---:|");
        foreach (var r in _echo)
            b.AppendLine(r);
        b.AppendLine();
        b.AppendLine("## Targets").AppendLine();
        b.AppendLine("| target | measured | ceiling in this run | met? |");
        b.AppendLine("|---|---|---|---|");
        var gwRates = _rates.Where(r => r.Reader == "switchboard").Select(r => r.LinesPerSecond).ToList();
        var pipeRates = _rates.Where(r => r.Reader == "direct pipe").Select(r => r.LinesPerSecond).ToList();
        var failed = _throughput.Count(r => r.StartsWith("| switchboard", StringComparison.Ordinal)) - gwRates.Count;
        var gwBest = gwRates.Count > 0 ? gwRates.Max() : 0;
        var pipeBest = pipeRates.Count > 0 ? pipeRates.Max() : 0;
        b.AppendLine(CultureInfo.InvariantCulture,
            $"| >= 500,000 lines/s to one client, none lost or repeated: producer unpaced (`seq`) | best {N(gwBest)} lines/s{(failed > 0 ? $" ({failed} incomplete or faulty run(s))" : "")} | {N(pipeBest)} lines/s ({(pipeBest > 0 ? gwBest / pipeBest * 100 : 0):0} %) | {(gwBest >= 500_000 && failed == 0 ? "yes" : "**no**")} |");
        var lossless = _sustainedResults.Where(s => s.Reader == "switchboard" && s.Ok).Select(s => s.Achieved).DefaultIfEmpty(0).Max();
        var losslessRate = _sustainedResults.Where(s => s.Reader == "switchboard" && s.Ok).Select(s => s.Rate).DefaultIfEmpty(0).Max();
        var firstLoss = _sustainedResults.Where(s => s.Reader == "switchboard" && !s.Ok).Select(s => s.Rate).DefaultIfEmpty(0).Min();
        b.AppendLine(CultureInfo.InvariantCulture,
            $"| same, producer paced (sustained) | every line delivered up to a producer rate of {N(losslessRate)} lines/s (received {N(lossless)} lines/s){(firstLoss > 0 ? $"; lines lost or client closed at {N(firstLoss)} lines/s" : "")} | the pipe reader kept every rate | {(losslessRate >= 500_000 && lossless >= 490_000 ? "yes" : "**no**")} |");
        var gwLat = _latencies.FirstOrDefault(l => l.Reader == "switchboard").P;
        var pipeLat = _latencies.FirstOrDefault(l => l.Reader == "direct pipe").P;
        b.AppendLine(CultureInfo.InvariantCulture,
            $"| p99 line latency < 250 ms at {options.Rate:N0} lines/s | {(gwLat is null ? "no complete run" : $"p99 {F(gwLat.P99Ms)} ms")} | {(pipeLat is null ? "-" : $"p99 {F(pipeLat.P99Ms)} ms")} | {(gwLat is not null && gwLat.P99Ms < 250 ? "yes" : "**no**")} |");
        var gwEcho = _echoes.FirstOrDefault(e => e.Variant.StartsWith("switchboard", StringComparison.Ordinal)).P;
        var bareEcho = _echoes.FirstOrDefault(e => e.Variant.StartsWith("bare", StringComparison.Ordinal)).P;
        b.AppendLine(CultureInfo.InvariantCulture,
            $"| keystroke echo p99 < 3 ms | {(gwEcho is null ? "no run" : $"p50 {gwEcho.P50Ms:0.000} / p99 {gwEcho.P99Ms:0.000} ms")} | {(bareEcho is null ? "-" : $"p50 {bareEcho.P50Ms:0.000} / p99 {bareEcho.P99Ms:0.000} ms")} | {(gwEcho is not null && gwEcho.P99Ms < 3 ? "yes" : "**no**")} |");
        if (_failures.Count > 0)
        {
            b.AppendLine().AppendLine("## Failures").AppendLine();
            foreach (var x in _failures)
                b.AppendLine("- " + x);
        }
        return b.ToString();
    }
}
