namespace Switchboard.Server.Storage;

/// <summary>A room as stored: the secret itself is never stored, only its SHA-256 hash.</summary>
public sealed record RoomRecord(string Id, byte[] SecretHash, string Protocol, int MaxClients, DateTimeOffset CreatedAt, string? Name);

/// <summary>Room definitions (membership is live state held by the node that serves the connections).</summary>
public interface IRoomStore
{
    ValueTask CreateAsync(RoomRecord room, CancellationToken cancellationToken);

    ValueTask<RoomRecord?> GetAsync(string id, CancellationToken cancellationToken);

    ValueTask<IReadOnlyList<RoomRecord>> ListAsync(CancellationToken cancellationToken);

    /// <summary>Deletes a room; false when it did not exist.</summary>
    ValueTask<bool> DeleteAsync(string id, CancellationToken cancellationToken);
}
