using System.Globalization;
using Switchboard.Protocol.Environments;

namespace Switchboard.Server.Environments;

/// <summary>
/// Resource usage of a process environment from /proc and cgroup files: CPU and resident memory summed over its
/// session, the memory limit of its cgroup (or the machine's memory), and the network counters of its network
/// namespace (for processes that share the host's namespace these are the host's).
/// </summary>
internal sealed class ProcessMetrics(TimeProvider time)
{
    private const double TicksPerSecond = 100; // USER_HZ on Linux
    private long _lastTicks = -1;
    private long _lastTimestamp;

    public MetricsMessage Sample(int? pid)
    {
        var now = time.GetUtcNow();
        if (pid is not { } p || ProcStat.TryRead(p) is null)
        {
            _lastTicks = -1;
            return new MetricsMessage("metrics", 0, 0, MemoryLimit(null), new NetworkCounters(0, 0), now);
        }
        long ticks = 0, rss = 0;
        foreach (var member in NativeProcess.SessionMembers(p))
        {
            if (ProcStat.TryRead(member) is { } s)
            {
                ticks += s.UserTicks + s.SystemTicks;
                rss += s.RssPages * Environment.SystemPageSize;
            }
        }
        var stamp = time.GetTimestamp();
        double cpu = 0;
        if (_lastTicks >= 0)
        {
            var seconds = time.GetElapsedTime(_lastTimestamp, stamp).TotalSeconds;
            if (seconds > 0)
                cpu = Math.Round(Math.Max(0, ticks - _lastTicks) / TicksPerSecond / seconds * 100, 1);
        }
        _lastTicks = ticks;
        _lastTimestamp = stamp;
        var (rx, tx) = Network(p);
        return new MetricsMessage("metrics", cpu, rss, MemoryLimit(p), new NetworkCounters(rx, tx), now);
    }

    private static long MemoryLimit(int? pid)
    {
        try
        {
            if (pid is { } p)
            {
                foreach (var line in File.ReadLines("/proc/" + p.ToString(CultureInfo.InvariantCulture) + "/cgroup"))
                {
                    if (!line.StartsWith("0::", StringComparison.Ordinal))
                        continue;
                    var file = "/sys/fs/cgroup" + line[3..].TrimEnd('/') + "/memory.max";
                    if (File.Exists(file) && long.TryParse(File.ReadAllText(file).Trim(), NumberStyles.None, CultureInfo.InvariantCulture, out var limit))
                        return limit;
                }
            }
            foreach (var line in File.ReadLines("/proc/meminfo"))
            {
                if (line.StartsWith("MemTotal:", StringComparison.Ordinal))
                {
                    var kb = line["MemTotal:".Length..].Trim().Split(' ')[0];
                    return long.Parse(kb, CultureInfo.InvariantCulture) * 1024;
                }
            }
        }
        catch (Exception ex) when (ex is IOException or UnauthorizedAccessException or FormatException)
        {
        }
        return 0;
    }

    private static (long Rx, long Tx) Network(int pid)
    {
        long rx = 0, tx = 0;
        try
        {
            foreach (var line in File.ReadLines("/proc/" + pid.ToString(CultureInfo.InvariantCulture) + "/net/dev").Skip(2))
            {
                var colon = line.IndexOf(':', StringComparison.Ordinal);
                if (colon < 0 || line[..colon].Trim() == "lo")
                    continue;
                var f = line[(colon + 1)..].Split(' ', StringSplitOptions.RemoveEmptyEntries);
                if (f.Length >= 9)
                {
                    rx += long.Parse(f[0], CultureInfo.InvariantCulture);
                    tx += long.Parse(f[8], CultureInfo.InvariantCulture);
                }
            }
        }
        catch (Exception ex) when (ex is IOException or UnauthorizedAccessException or FormatException)
        {
        }
        return (rx, tx);
    }
}
