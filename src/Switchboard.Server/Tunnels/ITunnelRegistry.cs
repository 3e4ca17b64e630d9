namespace Switchboard.Server.Tunnels;

/// <summary>Where a live tunnel is served: the node and the agent connection on it.</summary>
public sealed record TunnelRegistration(string Name, string NodeId, string ConnectionId, string Owner, DateTimeOffset ConnectedAt);

/// <summary>An agent token as stored: only the SHA-256 hash of the secret.</summary>
public sealed record AgentTokenRecord(string Id, byte[] Hash, string? Label, DateTimeOffset CreatedAt, DateTimeOffset? RevokedAt);

/// <summary>
/// Tunnel names: reservations (a name stays with the owner that first took it), live registrations (name -> node
/// and connection, so another node can route to it) and agent tokens.
/// </summary>
public interface ITunnelRegistry
{
    /// <summary>Reserves <paramref name="name"/> for <paramref name="owner"/> if free; returns the owner holding it afterwards.</summary>
    ValueTask<string> ReserveAsync(string name, string owner, DateTimeOffset at, CancellationToken cancellationToken);

    /// <summary>Records (or replaces) where a tunnel is connected.</summary>
    ValueTask RegisterAsync(TunnelRegistration registration, CancellationToken cancellationToken);

    /// <summary>Removes the registration only if it still belongs to <paramref name="connectionId"/>; false otherwise.</summary>
    ValueTask<bool> UnregisterAsync(string name, string connectionId, CancellationToken cancellationToken);

    /// <summary>Removes every registration of a node (at its start-up: whatever it held before is gone); returns how many.</summary>
    ValueTask<int> RemoveNodeAsync(string nodeId, CancellationToken cancellationToken);

    ValueTask<TunnelRegistration?> GetAsync(string name, CancellationToken cancellationToken);

    ValueTask<IReadOnlyList<TunnelRegistration>> ListAsync(CancellationToken cancellationToken);

    ValueTask CreateTokenAsync(AgentTokenRecord token, CancellationToken cancellationToken);

    /// <summary>The token with this hash, revoked or not; null when unknown.</summary>
    ValueTask<AgentTokenRecord?> FindTokenAsync(byte[] hash, CancellationToken cancellationToken);

    ValueTask<IReadOnlyList<AgentTokenRecord>> ListTokensAsync(CancellationToken cancellationToken);

    /// <summary>Marks a token revoked; false when unknown or already revoked.</summary>
    ValueTask<bool> RevokeTokenAsync(string id, DateTimeOffset at, CancellationToken cancellationToken);
}
