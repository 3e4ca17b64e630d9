using System.Diagnostics;

namespace Switchboard.Bench;

internal sealed record RateResult(string Target, int Subscribers, int Rate, int Published, double AckedSeconds, double WindowSeconds, long Expected, long Delivered, double DeliveriesPerSecond,
    double P50, double P99, double Max, long Errors, double ServerCpuPercent);

internal sealed record FullResult(string Target, int Subscribers, double PublishesPerSecond, double DeliveriesPerSecond, long Errors,
    double ServerCpuPercent, double BenchCpuPercent);

internal sealed record IdleResult(string Target, int Connections, long BaselineKb, long PeakKb, long LoadedKb, double KbPerConnection, int Threads, long Errors,
    double ConnectSeconds);

/// <summary>The three scenarios, each against one target.</summary>
internal static class Scenarios
{
    /// <summary>(a) A publisher at a fixed rate; latency from the send timestamp to each receive.</summary>
    public static async Task<RateResult> FixedRateAsync(Target target, int subscribers, int rate, TimeSpan duration, CancellationToken cancellationToken,
        Histogram[]? groups = null)
    {
        await using var fleet = new Fleet();
        await fleet.ConnectAsync(target, subscribers, 64, cancellationToken);
        await WarmUpAsync(target, fleet, cancellationToken);
        var histogram = new Histogram();
        fleet.Latency = histogram;
        fleet.Groups = groups;
        var before = fleet.Deliveries.Sum();
        var cpuBefore = target.CpuTime();
        var interval = Stopwatch.Frequency / rate;
        var total = (int)(rate * duration.TotalSeconds);
        var pending = new List<Task<bool>>(total);
        var start = Stopwatch.GetTimestamp();
        for (var i = 0; i < total; i++)
        {
            var due = start + i * interval;
            var wait = Stopwatch.GetElapsedTime(Stopwatch.GetTimestamp(), due);
            if (wait > TimeSpan.FromMilliseconds(1))
                await Task.Delay(wait, cancellationToken);
            while (Stopwatch.GetTimestamp() < due)
                Thread.SpinWait(20);
            pending.Add(target.PublishAsync(Stopwatch.GetTimestamp(), i, cancellationToken));
        }
        var accepted = 0;
        long publishErrors = 0;
        foreach (var p in pending)
        {
            try
            {
                if (await p)
                    accepted++;
                else
                    publishErrors++;
            }
            catch (Exception ex) when (ex is HttpRequestException or TaskCanceledException && !cancellationToken.IsCancellationRequested)
            {
                publishErrors++;
            }
        }
        var acked = Stopwatch.GetElapsedTime(start);
        var expected = (long)accepted * fleet.Count;
        var settle = Stopwatch.StartNew();
        while (fleet.Deliveries.Sum() - before < expected && settle.Elapsed < TimeSpan.FromSeconds(5))
            await Task.Delay(20, cancellationToken);
        var cpu = target.CpuTime() - cpuBefore;
        var delivered = fleet.Deliveries.Sum() - before;
        // From the first publish until the last delivery (or the 5 s grace after the last publish was acknowledged).
        var window = Stopwatch.GetElapsedTime(start);
        var lost = Math.Max(0, expected - delivered);
        return new RateResult(target.Name, fleet.Count, rate, accepted, acked.TotalSeconds, window.TotalSeconds, expected, delivered, delivered / window.TotalSeconds,
            histogram.Percentile(50), histogram.Percentile(99), histogram.Max(),
            fleet.Errors + fleet.Closes + publishErrors + lost + (subscribers - fleet.Count), 100 * cpu / window);
    }

    /// <summary>
    /// (b) Publishers as fast as the server delivers: several publish loops with at most <paramref name="window"/>
    /// messages published but not yet delivered to every subscriber (so no queue overflows).
    /// </summary>
    public static async Task<FullResult> FullSpeedAsync(Target target, int subscribers, TimeSpan warmup, TimeSpan measure, int publishers, int window,
        CancellationToken cancellationToken)
    {
        await using var fleet = new Fleet();
        await fleet.ConnectAsync(target, subscribers, 64, cancellationToken);
        await WarmUpAsync(target, fleet, cancellationToken);
        var n = fleet.Count;
        var baseDelivered = fleet.Deliveries.Sum();
        long published = 0;
        long publishErrors = 0;
        using var stop = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
        async Task PublishLoopAsync()
        {
            while (!stop.IsCancellationRequested)
            {
                var inFlight = Interlocked.Read(ref published) - (fleet.Deliveries.Sum() - baseDelivered) / n;
                if (inFlight >= window)
                {
                    await Task.Delay(1, CancellationToken.None);
                    continue;
                }
                Interlocked.Increment(ref published);
                try
                {
                    if (!await target.PublishAsync(Stopwatch.GetTimestamp(), published, stop.Token))
                        Interlocked.Increment(ref publishErrors);
                }
                catch (OperationCanceledException) when (stop.IsCancellationRequested)
                {
                    return;
                }
                catch (TaskCanceledException)
                {
                    Interlocked.Increment(ref publishErrors); // HTTP timeout
                }
                catch (HttpRequestException)
                {
                    Interlocked.Increment(ref publishErrors);
                }
            }
        }
        var loops = Enumerable.Range(0, publishers).Select(_ => Task.Run(PublishLoopAsync, CancellationToken.None)).ToArray();
        await Task.Delay(warmup, cancellationToken);
        var d0 = fleet.Deliveries.Sum();
        var p0 = Interlocked.Read(ref published);
        var cpu0 = target.CpuTime();
        var me0 = Process.GetCurrentProcess().TotalProcessorTime;
        var sw = Stopwatch.StartNew();
        await Task.Delay(measure, cancellationToken);
        var d1 = fleet.Deliveries.Sum();
        var p1 = Interlocked.Read(ref published);
        var elapsed = sw.Elapsed;
        var cpu = target.CpuTime() - cpu0;
        var me = Process.GetCurrentProcess().TotalProcessorTime - me0;
        await stop.CancelAsync();
        await Task.WhenAll(loops);
        return new FullResult(target.Name, n, (p1 - p0) / elapsed.TotalSeconds, (d1 - d0) / elapsed.TotalSeconds,
            fleet.Errors + fleet.Closes + publishErrors + (subscribers - n), 100 * cpu / elapsed, 100 * me / elapsed);
    }

    /// <summary>(c) Server RSS per idle (subscribed) connection.</summary>
    public static async Task<IdleResult> IdleMemoryAsync(Target target, int connections, TimeSpan settle, CancellationToken cancellationToken)
    {
        // Warm the server's code paths with a few connections first, so the baseline includes JIT and startup costs.
        await using (var warm = new Fleet())
        {
            await warm.ConnectAsync(target, 20, 20, cancellationToken);
            await WarmUpAsync(target, warm, cancellationToken);
        }
        await Task.Delay(settle, cancellationToken);
        var baseline = target.Server.RssKb();
        await using var fleet = new Fleet { ReleaseIdleBuffers = true };
        var sw = Stopwatch.StartNew();
        await fleet.ConnectAsync(target, connections, 100, cancellationToken);
        var connectSeconds = sw.Elapsed.TotalSeconds;
        var peak = target.Server.RssKb();
        var settled = Stopwatch.StartNew();
        while (settled.Elapsed < settle)
        {
            await Task.Delay(500, cancellationToken);
            peak = Math.Max(peak, target.Server.RssKb());
        }
        var loaded = target.Server.RssKb();
        return new IdleResult(target.Name, fleet.Count, baseline, peak, loaded, (loaded - baseline) / (double)Math.Max(1, fleet.Count),
            target.Server.Threads(), fleet.Errors + fleet.Closes + (connections - fleet.Count), connectSeconds);
    }

    // One message to everyone, so JIT and first-use costs are out of the measurement.
    private static async Task WarmUpAsync(Target target, Fleet fleet, CancellationToken cancellationToken)
    {
        for (var i = 0; i < 20; i++)
        {
            var before = fleet.Deliveries.Sum();
            await target.PublishAsync(Stopwatch.GetTimestamp(), -1, cancellationToken);
            var sw = Stopwatch.StartNew();
            while (fleet.Deliveries.Sum() - before < fleet.Count && sw.Elapsed < TimeSpan.FromSeconds(5))
                await Task.Delay(5, cancellationToken);
        }
    }
}
