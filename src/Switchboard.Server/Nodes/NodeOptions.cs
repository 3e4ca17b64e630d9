namespace Switchboard.Server.Nodes;

/// <summary>How this node announces itself to the others. Bound from configuration section <c>Switchboard:Nodes</c>.</summary>
public sealed class NodeOptions
{
    public const string Section = "Switchboard:Nodes";

    /// <summary>
    /// Base URL other nodes use to reach this one (e.g. <c>http://10.0.0.5:8080</c>). Default: the first address Kestrel
    /// listens on, with a wildcard host replaced by 127.0.0.1 — right for a cluster on one machine, wrong across machines.
    /// </summary>
    public string? AdvertiseUrl { get; set; }

    /// <summary>How often a node refreshes its heartbeat. 5 s: a dead node is noticed within seconds at one tiny UPDATE per node per 5 s.</summary>
    public TimeSpan HeartbeatInterval { get; set; } = TimeSpan.FromSeconds(5);

    /// <summary>A node whose heartbeat is older than this is considered gone. 15 s = three missed heartbeats, so one slow query never expires a node.</summary>
    public TimeSpan StaleAfter { get; set; } = TimeSpan.FromSeconds(15);
}
