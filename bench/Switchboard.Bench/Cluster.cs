using System.Globalization;
using System.Net.Http.Headers;
using System.Text;

namespace Switchboard.Bench;

/// <summary>Several Switchboard nodes on one PostgreSQL database; subscribers are spread round-robin, publishes go to the first node.</summary>
internal sealed class ClusterTarget(string name, IReadOnlyList<ServerProcess> nodes, string token, string key, string channel)
    : SwitchboardTarget(nodes[0], token, key, channel)
{
    public IReadOnlyList<ServerProcess> Nodes => nodes;

    public string ApiKey { get; } = key;

    public string Label => name;

    public override Uri WebSocketUriFor(int index) => WebSocketUriOf(nodes[index % nodes.Count]);

    public override TimeSpan CpuTime() => nodes.Aggregate(TimeSpan.Zero, (t, n) => t + n.CpuTime());

    public override async ValueTask DisposeAsync()
    {
        await base.DisposeAsync();
        foreach (var n in nodes.Skip(1))
            await n.DisposeAsync();
    }
}

internal sealed record ClusterRateResult(string Config, int Nodes, RateResult Rate, double LocalP99, double RemoteP99, double RemoteMean,
    double BusLagMean, double BusLagP50, double BusLagP99, long BusLagCount, long Published, long Notifications);

internal sealed record ClusterFullResult(string Config, int Nodes, FullResult Full);

/// <summary>
/// Cross-node fan-out: the same channel scenarios against one node on SQLite, one node on PostgreSQL and three nodes on
/// one PostgreSQL database, in one run. Bus figures come from each node's /metrics.
/// </summary>
internal static class ClusterBench
{
    /// <summary>
    /// Publishes per second in (a): 25 x 1,000 subscribers = 25,000 deliveries/s, a load one node sustains on 2 cores,
    /// so the latencies compare transport, not queueing behind an overloaded publish path. Change with --rate.
    /// </summary>
    public const int DefaultRate = 25;

    public static async Task<string> RunAsync(Args options, Func<Dictionary<string, string>, string, CancellationToken, Task<string>> mintToken, CancellationToken ct)
    {
        var subscribers = options.Quick ? 300 : 1000;
        var rate = options.Rate ?? DefaultRate;
        var duration = TimeSpan.FromSeconds(options.Quick ? 3 : 10);
        var warm = TimeSpan.FromSeconds(options.Quick ? 1 : 2);
        var measure = TimeSpan.FromSeconds(options.Quick ? 2 : 5);
        var database = options.Database ?? throw new ArgumentException("--cluster needs --database (a PostgreSQL connection string)");
        var rates = new List<ClusterRateResult>();
        var fulls = new List<ClusterFullResult>();
        var failures = new List<string>();
        var started = DateTime.UtcNow;
        var configs = new (string Name, int Nodes, bool Postgres)[] { ("1 node, SQLite", 1, false), ("1 node, PostgreSQL", 1, true), ("3 nodes, PostgreSQL", 3, true) };
        var run = 0;
        foreach (var (name, count, postgres) in configs)
        {
            run++;
            Console.WriteLine($"== {name}");
            Report.Phase(name);
            try
            {
                await using var target = await StartAsync(options.Switchboard, name, count, postgres ? database : null, $"bench:cluster-{DateTime.UtcNow:HHmmss}-{run}", mintToken, ct);
                var groups = Enumerable.Range(0, count).Select(_ => new Histogram()).ToArray();
                var before = await ScrapeAsync(target, ct);
                var r = await Scenarios.FixedRateAsync(target, subscribers, rate, duration, ct, groups);
                var after = await ScrapeAsync(target, ct);
                var lag = after.Lag.Minus(before.Lag);
                var result = new ClusterRateResult(name, count, r, groups[0].Percentile(99),
                    count > 1 ? groups.Skip(1).Max(g => g.Percentile(99)) : double.NaN,
                    count > 1 ? groups.Skip(1).Average(g => g.Mean()) : double.NaN,
                    lag.MeanMs(), lag.PercentileMs(50), lag.PercentileMs(99), lag.Count,
                    after.Published - before.Published, after.Sent - before.Sent);
                rates.Add(result);
                Console.WriteLine($"   (a) {r}; bus lag mean {result.BusLagMean:F2} ms p99 <= {result.BusLagP99:F2} ms; notifications {result.Notifications} for {result.Published} publishes");
                var f = await Scenarios.FullSpeedAsync(target, subscribers, warm, measure, publishers: 8, window: 64, ct);
                fulls.Add(new ClusterFullResult(name, count, f));
                Console.WriteLine($"   (b) {f}");
            }
            catch (Exception ex) when (!ct.IsCancellationRequested)
            {
                Console.Error.WriteLine($"   {name} failed: {ex.GetType().Name}: {ex.Message}");
                failures.Add($"{name}: {ex.GetType().Name}: {ex.Message}");
            }
        }
        return Build(options, subscribers, rate, duration, rates, fulls, failures, DateTime.UtcNow - started);
    }

    private static async Task<ClusterTarget> StartAsync(string dll, string name, int count, string? database, string channel,
        Func<Dictionary<string, string>, string, CancellationToken, Task<string>> mintToken, CancellationToken ct)
    {
        var secret = Convert.ToHexStringLower(System.Security.Cryptography.RandomNumberGenerator.GetBytes(32));
        var apiKey = Convert.ToHexStringLower(System.Security.Cryptography.RandomNumberGenerator.GetBytes(24));
        var env = new Dictionary<string, string>
        {
            ["SWITCHBOARD_JWT_SECRET"] = secret,
            ["SWITCHBOARD_API_KEY"] = apiKey,
            ["Switchboard__Limits__ConnectionsPerIpPerSecond"] = "1000000",
            ["Switchboard__Limits__ConnectionBurstPerIp"] = "1000000",
            ["Switchboard__Limits__MaxConnectionsPerUser"] = "1000000",
            ["Logging__LogLevel__Default"] = "Warning",
        };
        var nodes = new List<ServerProcess>();
        try
        {
            string? token = null;
            for (var i = 1; i <= count; i++)
            {
                var dir = Directory.CreateTempSubdirectory("switchboard-bench-").FullName;
                token ??= await mintToken(env, dir, ct);
                List<string> args = ["serve", "--urls", "http://127.0.0.1:{port}", "--data-dir", dir];
                if (database is not null)
                    args.AddRange(["--database", database, "--node-id", $"bench-{i}"]);
                nodes.Add(await ServerProcess.StartAsync(count == 1 ? "switchboard" : $"switchboard-{i}", dll, args, env, "/healthz", dir, ct));
            }
            return new ClusterTarget(name, nodes, token!, apiKey, channel);
        }
        catch
        {
            foreach (var n in nodes)
                await n.DisposeAsync();
            throw;
        }
    }

    private sealed record Scrape(long Published, long Sent, LagHistogram Lag);

    /// <summary>Publishes and notifications sent on the first node; bus lag summed over the other nodes.</summary>
    private static async Task<Scrape> ScrapeAsync(ClusterTarget target, CancellationToken ct)
    {
        using var http = new HttpClient { Timeout = TimeSpan.FromSeconds(10) };
        long published = 0, sent = 0;
        var lag = new LagHistogram();
        for (var i = 0; i < target.Nodes.Count; i++)
        {
            using var request = new HttpRequestMessage(HttpMethod.Get, new Uri(target.Nodes[i].Http, "/metrics"));
            request.Headers.Authorization = new AuthenticationHeaderValue("Bearer", target.ApiKey);
            using var response = await http.SendAsync(request, ct);
            response.EnsureSuccessStatusCode();
            var text = await response.Content.ReadAsStringAsync(ct);
            foreach (var line in text.Split('\n'))
            {
                if (line.StartsWith('#') || line.Length == 0)
                    continue;
                var space = line.LastIndexOf(' ');
                var value = double.Parse(line[(space + 1)..], CultureInfo.InvariantCulture);
                var key = line[..space];
                if (i == 0 && key.StartsWith("switchboard_channels_published_total", StringComparison.Ordinal))
                    published += (long)value;
                else if (i == 0 && key.StartsWith("switchboard_bus_notifications_sent_total", StringComparison.Ordinal))
                    sent += (long)value;
                else if (i > 0 && key.StartsWith("switchboard_bus_lag_seconds_bucket", StringComparison.Ordinal))
                {
                    var le = key[(key.IndexOf("le=\"", StringComparison.Ordinal) + 4)..];
                    le = le[..le.IndexOf('"')];
                    lag.Add(le == "+Inf" ? double.PositiveInfinity : double.Parse(le, CultureInfo.InvariantCulture), (long)value);
                }
                else if (i > 0 && key.StartsWith("switchboard_bus_lag_seconds_sum", StringComparison.Ordinal))
                    lag.Sum += value;
                else if (i > 0 && key.StartsWith("switchboard_bus_lag_seconds_count", StringComparison.Ordinal))
                    lag.Count += (long)value;
            }
        }
        return new Scrape(published, sent, lag);
    }

    /// <summary>A Prometheus histogram (cumulative buckets by upper bound), summed over nodes.</summary>
    private sealed class LagHistogram
    {
        public SortedDictionary<double, long> Buckets { get; } = [];
        public double Sum { get; set; }
        public long Count { get; set; }

        public void Add(double le, long cumulative) => Buckets[le] = Buckets.GetValueOrDefault(le) + cumulative;

        public LagHistogram Minus(LagHistogram earlier)
        {
            var d = new LagHistogram { Sum = Sum - earlier.Sum, Count = Count - earlier.Count };
            foreach (var (le, n) in Buckets)
                d.Buckets[le] = n - earlier.Buckets.GetValueOrDefault(le);
            return d;
        }

        public double MeanMs() => Count == 0 ? double.NaN : Sum / Count * 1000;

        /// <summary>Upper bound (ms) of the bucket holding the percentile.</summary>
        public double PercentileMs(double p)
        {
            if (Count == 0)
                return double.NaN;
            var rank = Math.Ceiling(Count * p / 100);
            foreach (var (le, n) in Buckets)
            {
                if (n >= rank)
                    return le * 1000;
            }
            return double.PositiveInfinity;
        }
    }

    private static string Build(Args options, int subscribers, int rate, TimeSpan duration, List<ClusterRateResult> rates, List<ClusterFullResult> fulls, List<string> failures, TimeSpan took)
    {
        var c = CultureInfo.InvariantCulture;
        var sb = new StringBuilder();
        sb.AppendLine("# Cross-node fan-out benchmark results");
        sb.AppendLine();
        sb.AppendLine(c, $"- date (UTC): {DateTime.UtcNow:yyyy-MM-dd HH:mm}, run took {took.TotalSeconds:F0} s{(options.Quick ? ", --quick (smaller counts)" : "")}");
        sb.AppendLine(c, $"- machine: {Environment.ProcessorCount} cores, {System.Runtime.InteropServices.RuntimeInformation.OSDescription}, .NET {Environment.Version}; every node, PostgreSQL and the load generator share these cores");
        sb.AppendLine(c, $"- {subscribers:N0} WebSocket subscribers on one channel, spread round-robin over the nodes; every publish goes to node 1 over HTTP");
        sb.AppendLine();
        sb.AppendLine(c, $"## (a) Fixed rate: {rate} msg/s for {duration.TotalSeconds:F0} s, latency publish -> receive");
        sb.AppendLine();
        sb.AppendLine("'node 1 p99': subscribers on the publishing node; 'other nodes p99/mean': subscribers reached through the bus. Bus lag: from the publishing node handing the message to the bus until the receiving node's dispatcher has it (histogram buckets of /metrics, so percentiles are bucket upper bounds: 0.5, 1, 2.5, 5, 10, 25 ms ...). 'bus share' = mean bus lag / mean latency on the other nodes.");
        sb.AppendLine();
        sb.AppendLine("| configuration | delivered / expected | deliveries/s | p50 ms | p99 ms | node 1 p99 ms | other nodes p99 ms | other nodes mean ms | bus lag mean ms | bus lag p50 / p99 ms (bucket) | bus share | publishes | notifications | per publish | errors | servers CPU % |");
        sb.AppendLine("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
        foreach (var x in rates)
        {
            var r = x.Rate;
            var multi = x.Nodes > 1;
            string F(double v) => double.IsNaN(v) ? "-" : v.ToString("F2", c);
            var bus = x.Config.Contains("PostgreSQL", StringComparison.Ordinal);
            sb.AppendLine(c, $"| {x.Config} | {r.Delivered:N0} / {r.Expected:N0} | {r.DeliveriesPerSecond:N0} | {F(r.P50)} | {F(r.P99)} | {(multi ? F(x.LocalP99) : "-")} | {(multi ? F(x.RemoteP99) : "-")} | {(multi ? F(x.RemoteMean) : "-")} | {(multi ? F(x.BusLagMean) : "-")} | {(multi ? $"{F(x.BusLagP50)} / {F(x.BusLagP99)}" : "-")} | {(multi && x.RemoteMean > 0 ? (100 * x.BusLagMean / x.RemoteMean).ToString("F0", c) + " %" : "-")} | {x.Published:N0} | {(bus ? x.Notifications.ToString("N0", c) : "-")} | {(bus && x.Published > 0 ? ((double)x.Notifications / x.Published).ToString("F2", c) : "-")} | {r.Errors} | {r.ServerCpuPercent:F0} |");
        }
        sb.AppendLine();
        sb.AppendLine("## (b) Full speed: 8 HTTP publish loops to node 1, window 64 messages");
        sb.AppendLine();
        sb.AppendLine("| configuration | subscribers | publishes/s | deliveries/s | % of 1 node, SQLite | % of 1 node, PostgreSQL | errors | servers CPU % | load generator CPU % |");
        sb.AppendLine("|---|---:|---:|---:|---:|---:|---:|---:|---:|");
        var sqlite = fulls.FirstOrDefault(f => f.Nodes == 1 && f.Config.Contains("SQLite", StringComparison.Ordinal))?.Full.DeliveriesPerSecond ?? 0;
        var pg1 = fulls.FirstOrDefault(f => f.Nodes == 1 && f.Config.Contains("PostgreSQL", StringComparison.Ordinal))?.Full.DeliveriesPerSecond ?? 0;
        foreach (var x in fulls)
        {
            var f = x.Full;
            sb.AppendLine(c, $"| {x.Config} | {f.Subscribers:N0} | {f.PublishesPerSecond:N0} | {f.DeliveriesPerSecond:N0} | {(sqlite > 0 ? (100 * f.DeliveriesPerSecond / sqlite).ToString("F0", c) + " %" : "-")} | {(pg1 > 0 ? (100 * f.DeliveriesPerSecond / pg1).ToString("F0", c) + " %" : "-")} | {f.Errors} | {f.ServerCpuPercent:F0} | {f.BenchCpuPercent:F0} |");
        }
        sb.AppendLine();
        Report.AppendPhases(sb);
        if (failures.Count > 0)
        {
            sb.AppendLine("## Failed scenarios");
            sb.AppendLine();
            foreach (var f in failures)
                sb.AppendLine("- " + f);
            sb.AppendLine();
        }
        sb.AppendLine("## Targets");
        sb.AppendLine();
        var three = fulls.FirstOrDefault(f => f.Nodes == 3)?.Full.DeliveriesPerSecond ?? 0;
        foreach (var (label, baseline) in new[] { ("1 node, SQLite", sqlite), ("1 node, PostgreSQL", pg1) })
        {
            if (baseline > 0 && three > 0)
                sb.AppendLine(c, $"- (b) 3 nodes >= 80 % of {label} deliveries/s at {subscribers:N0} subscribers: {100 * three / baseline:F0} % -> {(three >= 0.8 * baseline ? "met" : "NOT met")}");
        }
        foreach (var x in rates.Where(r => r.Nodes == 3))
        {
            sb.AppendLine(c, $"- (a) cross-node p99 < 100 ms: {x.RemoteP99:F2} ms -> {(x.RemoteP99 < 100 ? "met" : "NOT met")}");
            sb.AppendLine(c, $"- one bus notification per publish: {x.Notifications:N0} notifications for {x.Published:N0} publishes -> {(x.Published > 0 && x.Notifications == x.Published ? "met" : "NOT met")}");
        }
        return sb.ToString();
    }
}
