using Switchboard.Protocol.Environments;

namespace Switchboard.Server.Environments;

/// <summary>
/// Resource usage of a container from the engine's stats endpoint (<c>stream=false</c>): CPU percent of one core from
/// the <c>cpu_stats</c>/<c>precpu_stats</c> deltas (or, when the engine leaves <c>precpu_stats</c> empty as podman
/// does, from the previous sample), memory usage without the inactive page cache and its limit, and the summed network
/// counters of its interfaces.
/// </summary>
internal sealed class DockerMetrics(DockerEngine engine, TimeProvider time)
{
    private string? _lastContainer;
    private long _lastCpu = -1;
    private long _lastSystem;

    public async Task<MetricsMessage> SampleAsync(string? containerId, CancellationToken cancellationToken)
    {
        var now = time.GetUtcNow();
        if (containerId is null)
            return Idle(now);
        ContainerStats stats;
        try
        {
            stats = await engine.StatsAsync(containerId, cancellationToken);
        }
        catch (DockerException)
        {
            return Idle(now);
        }
        if (containerId != _lastContainer)
        {
            _lastContainer = containerId;
            _lastCpu = -1;
        }
        var cpuTotal = stats.CpuStats?.CpuUsage?.TotalUsage ?? 0;
        var system = stats.CpuStats?.SystemCpuUsage ?? 0;
        var cpus = stats.CpuStats?.OnlineCpus is > 0 and var online ? online : Environment.ProcessorCount;
        long cpuDelta = 0, systemDelta = 0;
        if (stats.PrecpuStats is { CpuUsage.TotalUsage: > 0, SystemCpuUsage: > 0 } pre)
        {
            cpuDelta = cpuTotal - pre.CpuUsage!.TotalUsage;
            systemDelta = system - pre.SystemCpuUsage!.Value;
        }
        else if (_lastCpu >= 0)
        {
            cpuDelta = cpuTotal - _lastCpu;
            systemDelta = system - _lastSystem;
        }
        _lastCpu = cpuTotal;
        _lastSystem = system;
        // system_cpu_usage counts all CPUs: the share times the CPU count is the percent of one core.
        var cpu = systemDelta > 0 && cpuDelta > 0 ? Math.Round((double)cpuDelta / systemDelta * cpus * 100, 1) : 0;

        var memory = stats.MemoryStats?.Usage ?? 0;
        if (stats.MemoryStats?.Stats is { } detail)
        {
            // Like `docker stats`: the page cache the kernel can drop at once is not the container's memory.
            if (detail.TryGetValue("inactive_file", out var inactive) || detail.TryGetValue("total_inactive_file", out inactive))
                memory = Math.Max(0, memory - inactive);
        }
        long rx = 0, tx = 0;
        foreach (var n in stats.Networks?.Values ?? Enumerable.Empty<NetworkStats>())
        {
            rx += n.RxBytes;
            tx += n.TxBytes;
        }
        return new MetricsMessage("metrics", cpu, memory, stats.MemoryStats?.Limit ?? 0, new NetworkCounters(rx, tx), now);
    }

    private MetricsMessage Idle(DateTimeOffset now)
    {
        _lastCpu = -1;
        return new MetricsMessage("metrics", 0, 0, 0, new NetworkCounters(0, 0), now);
    }
}
