namespace Switchboard.Server.Nodes;

/// <summary>One gateway node as registered: its id, the address other nodes reach it at, and its last heartbeat.</summary>
public sealed record NodeInfo(string Id, string? Address, DateTimeOffset StartedAt, DateTimeOffset LastHeartbeat);

/// <summary>
/// The nodes of a deployment. A node registers itself at start-up, heartbeats while it runs and is forgotten when its
/// heartbeat goes stale (<see cref="NodeOptions.StaleAfter"/>). The embedded store has exactly one node: this one.
/// </summary>
public interface INodeRegistry
{
    /// <summary>This node's id (the same id the bus stamps on its messages).</summary>
    string NodeId { get; }

    /// <summary>Live nodes (heartbeat not stale), this node included, ordered by id.</summary>
    ValueTask<IReadOnlyList<NodeInfo>> ListAsync(CancellationToken cancellationToken);

    /// <summary>A live node by id, or null when unknown or stale.</summary>
    ValueTask<NodeInfo?> GetAsync(string nodeId, CancellationToken cancellationToken);
}
