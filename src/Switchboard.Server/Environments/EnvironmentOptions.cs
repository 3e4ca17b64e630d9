using System.ComponentModel.DataAnnotations;

namespace Switchboard.Server.Environments;

/// <summary>Tunables of environments, bound from configuration section <c>Switchboard:Environments</c>.</summary>
public sealed class EnvironmentOptions
{
    public const string Section = "Switchboard:Environments";

    /// <summary>WebSocket connections (logs, terminal, status together) per environment. 10: a few people with a few tabs.</summary>
    [Range(1, 10_000)]
    public int MaxConnectionsPerEnvironment { get; set; } = 10;

    /// <summary>Lines sent on connect when the client gives no <c>tail</c>. 100, like a terminal screen or two.</summary>
    [Range(0, 100_000)]
    public int DefaultTail { get; set; } = 100;

    /// <summary>Largest <c>tail</c> and largest replay of a <c>since</c> resume in one connect. Beyond it the client gets a <c>skipped</c> message.</summary>
    [Range(1, 1_000_000)]
    public int MaxReplay { get; set; } = 10_000;

    /// <summary>Live lines are flushed to a client at least this often. 100 ms keeps a tail feeling live while batching floods.</summary>
    public TimeSpan BatchInterval { get; set; } = TimeSpan.FromMilliseconds(100);

    /// <summary>Live lines are flushed as soon as this many are pending. 100 caps frame size and latency under load.</summary>
    [Range(1, 100_000)]
    public int BatchSize { get; set; } = 100;

    /// <summary>Most recent lines kept in memory per environment (serves tails and resumes without the store). 10,000 lines is a few MB.</summary>
    [Range(16, 10_000_000)]
    public int RingSize { get; set; } = 10_000;

    /// <summary>
    /// Live lines waiting for one client's next flush. Beyond it the client is not keeping up (or this node is
    /// saturated) and is closed with 4008 to resume with <c>since</c>. 50,000 lines is half a second of a
    /// 100,000 lines/s flood and a few MB.
    /// </summary>
    [Range(100, 10_000_000)]
    public int MaxPendingLines { get; set; } = 50_000;

    /// <summary>Lines a paused client keeps for delivery on resume; older ones are counted and reported as skipped.</summary>
    [Range(0, 1_000_000)]
    public int PauseBufferLines { get; set; } = 1_000;

    /// <summary>Lines kept in the store per environment; older lines are deleted. 100,000 lines covers hours of a normal service.</summary>
    [Range(1, 100_000_000)]
    public long RetentionLines { get; set; } = 100_000;

    /// <summary>
    /// Lines waiting to be written to the store per environment. When the store falls behind a flood the newest
    /// lines beyond this are not persisted (counted in <c>droppedLines</c> and logged); the process is never stalled.
    /// </summary>
    [Range(100, 10_000_000)]
    public int PersistQueueLines { get; set; } = 50_000;

    /// <summary>Rows per insert transaction. Larger batches amortize the commit.</summary>
    [Range(1, 1_000_000)]
    public int PersistBatchLines { get; set; } = 5_000;

    /// <summary>How often queued lines are written. 200 ms keeps the store close behind the live stream.</summary>
    public TimeSpan PersistInterval { get; set; } = TimeSpan.FromMilliseconds(200);

    /// <summary>Longest line kept; longer lines are split. 16 KB keeps one line from pinning memory.</summary>
    [Range(256, 16 * 1024 * 1024)]
    public int MaxLineBytes { get; set; } = 16 * 1024;

    /// <summary>Time between SIGTERM and SIGKILL when stopping. 5 s lets a service finish its requests.</summary>
    public TimeSpan StopGracePeriod { get; set; } = TimeSpan.FromSeconds(5);

    /// <summary>Interval of <c>metrics</c> messages on the status socket.</summary>
    public TimeSpan MetricsInterval { get; set; } = TimeSpan.FromSeconds(5);

    /// <summary>Commands a terminal may run with <c>?cmd=</c>. The first one that exists is the default (bash, else sh).</summary>
    public List<string> TerminalCommands { get; set; } = ["/bin/bash", "/bin/sh"];

    /// <summary>A terminal without input or output for this long is ended. 30 min: a coffee break, not a forgotten tab.</summary>
    public TimeSpan TerminalIdleTimeout { get; set; } = TimeSpan.FromMinutes(30);

    /// <summary>
    /// When this many bytes are queued to a terminal client, the gateway stops reading the PTY until the client
    /// catches up (the shell then blocks on write). 256 KB is a few screens of output.
    /// </summary>
    [Range(4096, int.MaxValue)]
    public long TerminalFlowControlBytes { get; set; } = 256 * 1024;

    /// <summary>
    /// Off (0) by default: a process is never slowed by its log clients, and a client that falls behind a flood is
    /// closed with 4008 and resumes with <c>since</c>. When set (e.g. 1 MB), the pipe readers of process environments
    /// pause while a live logs client has more than this many bytes queued, so a client that reads keeps every line
    /// of a flood and the process writes at the client's pace (it blocks on its pipe, as under <c>docker logs -f</c>
    /// with a blocking log driver). Keep it at least ~1 MB (one 64 KB pipe read of short lines) below
    /// <c>Switchboard:Limits:MaxQueuedBytes</c>.
    /// </summary>
    [Range(0, long.MaxValue)]
    public long LogBackpressureBytes { get; set; }

    /// <summary>With <see cref="LogBackpressureBytes"/>: a client that stays behind this long is closed with 4008 and the process resumes.</summary>
    public TimeSpan LogBackpressureMaxWait { get; set; } = TimeSpan.FromSeconds(10);

    /// <summary>Docker Engine API endpoint for the <c>docker</c> driver (<c>unix:///run/docker.sock</c>). Empty: the driver is disabled.</summary>
    public string DockerHost { get; set; } = "";
}
