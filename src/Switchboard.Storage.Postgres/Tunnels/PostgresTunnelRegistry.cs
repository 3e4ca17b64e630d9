using Npgsql;
using Switchboard.Server.Tunnels;

namespace Switchboard.Storage.Postgres.Tunnels;

/// <summary>Tunnel reservations, live registrations (name → node and connection) and agent token hashes in PostgreSQL.</summary>
public sealed class PostgresTunnelRegistry(PostgresDatabase db) : ITunnelRegistry
{
    public static readonly PostgresMigration[] Migrations =
    [
        new("tunnels-001", """
            CREATE TABLE tunnel_reservations (name text PRIMARY KEY, owner text NOT NULL, created_at bigint NOT NULL);
            CREATE TABLE tunnel_connections (
                name text PRIMARY KEY, node_id text NOT NULL, connection_id text NOT NULL, owner text NOT NULL, connected_at bigint NOT NULL);
            CREATE INDEX ix_tunnel_connections_node ON tunnel_connections (node_id);
            CREATE TABLE agent_tokens (
                id text PRIMARY KEY, hash bytea NOT NULL UNIQUE, label text, created_at bigint NOT NULL, revoked_at bigint);
            """),
    ];

    public async ValueTask<string> ReserveAsync(string name, string owner, DateTimeOffset at, CancellationToken cancellationToken)
    {
        await using var connection = await db.OpenAsync(cancellationToken);
        // The insert either wins or leaves the existing row; the select then returns whoever owns the name.
        await using var cmd = new NpgsqlCommand("""
            WITH ins AS (INSERT INTO tunnel_reservations (name, owner, created_at) VALUES ($1, $2, $3) ON CONFLICT (name) DO NOTHING RETURNING owner)
            SELECT owner FROM ins UNION ALL SELECT owner FROM tunnel_reservations WHERE name = $1 LIMIT 1
            """, connection)
        {
            Parameters = { new() { Value = name }, new() { Value = owner }, new() { Value = at.ToUnixTimeMilliseconds() } },
        };
        return (string)(await cmd.ExecuteScalarAsync(cancellationToken))!;
    }

    public async ValueTask RegisterAsync(TunnelRegistration r, CancellationToken cancellationToken)
    {
        await using var connection = await db.OpenAsync(cancellationToken);
        await using var cmd = new NpgsqlCommand("""
            INSERT INTO tunnel_connections (name, node_id, connection_id, owner, connected_at) VALUES ($1, $2, $3, $4, $5)
            ON CONFLICT (name) DO UPDATE SET node_id = EXCLUDED.node_id, connection_id = EXCLUDED.connection_id, owner = EXCLUDED.owner, connected_at = EXCLUDED.connected_at
            """, connection)
        {
            Parameters =
            {
                new() { Value = r.Name }, new() { Value = r.NodeId }, new() { Value = r.ConnectionId }, new() { Value = r.Owner },
                new() { Value = r.ConnectedAt.ToUnixTimeMilliseconds() },
            },
        };
        await cmd.ExecuteNonQueryAsync(cancellationToken);
    }

    public async ValueTask<bool> UnregisterAsync(string name, string connectionId, CancellationToken cancellationToken) =>
        await ExecAsync("DELETE FROM tunnel_connections WHERE name = $1 AND connection_id = $2", cancellationToken, name, connectionId) > 0;

    public async ValueTask<int> RemoveNodeAsync(string nodeId, CancellationToken cancellationToken) =>
        await ExecAsync("DELETE FROM tunnel_connections WHERE node_id = $1", cancellationToken, nodeId);

    public async ValueTask<TunnelRegistration?> GetAsync(string name, CancellationToken cancellationToken) =>
        (await QueryAsync("WHERE name = $1", name, cancellationToken)).FirstOrDefault();

    public async ValueTask<IReadOnlyList<TunnelRegistration>> ListAsync(CancellationToken cancellationToken) =>
        await QueryAsync("ORDER BY name", null, cancellationToken);

    private async Task<List<TunnelRegistration>> QueryAsync(string where, string? name, CancellationToken cancellationToken)
    {
        await using var connection = await db.OpenAsync(cancellationToken);
        await using var q = new NpgsqlCommand("SELECT name, node_id, connection_id, owner, connected_at FROM tunnel_connections " + where, connection);
        if (name is not null)
            q.Parameters.Add(new() { Value = name });
        await using var r = await q.ExecuteReaderAsync(cancellationToken);
        var list = new List<TunnelRegistration>();
        while (await r.ReadAsync(cancellationToken))
            list.Add(new TunnelRegistration(r.GetString(0), r.GetString(1), r.GetString(2), r.GetString(3), DateTimeOffset.FromUnixTimeMilliseconds(r.GetInt64(4))));
        return list;
    }

    public async ValueTask CreateTokenAsync(AgentTokenRecord token, CancellationToken cancellationToken)
    {
        await using var connection = await db.OpenAsync(cancellationToken);
        await using var cmd = new NpgsqlCommand("INSERT INTO agent_tokens (id, hash, label, created_at, revoked_at) VALUES ($1, $2, $3, $4, $5)", connection)
        {
            Parameters =
            {
                new() { Value = token.Id }, new() { Value = token.Hash },
                new() { Value = (object?)token.Label ?? DBNull.Value, NpgsqlDbType = NpgsqlTypes.NpgsqlDbType.Text },
                new() { Value = token.CreatedAt.ToUnixTimeMilliseconds() },
                new() { Value = token.RevokedAt is { } at ? at.ToUnixTimeMilliseconds() : DBNull.Value, NpgsqlDbType = NpgsqlTypes.NpgsqlDbType.Bigint },
            },
        };
        await cmd.ExecuteNonQueryAsync(cancellationToken);
    }

    public async ValueTask<AgentTokenRecord?> FindTokenAsync(byte[] hash, CancellationToken cancellationToken) =>
        (await TokensAsync("WHERE hash = $1", hash, cancellationToken)).FirstOrDefault();

    public async ValueTask<IReadOnlyList<AgentTokenRecord>> ListTokensAsync(CancellationToken cancellationToken) =>
        await TokensAsync("ORDER BY created_at, id", null, cancellationToken);

    private async Task<List<AgentTokenRecord>> TokensAsync(string where, byte[]? hash, CancellationToken cancellationToken)
    {
        await using var connection = await db.OpenAsync(cancellationToken);
        await using var q = new NpgsqlCommand("SELECT id, hash, label, created_at, revoked_at FROM agent_tokens " + where, connection);
        if (hash is not null)
            q.Parameters.Add(new() { Value = hash });
        await using var r = await q.ExecuteReaderAsync(cancellationToken);
        var list = new List<AgentTokenRecord>();
        while (await r.ReadAsync(cancellationToken))
        {
            list.Add(new AgentTokenRecord(r.GetString(0), r.GetFieldValue<byte[]>(1), r.IsDBNull(2) ? null : r.GetString(2),
                DateTimeOffset.FromUnixTimeMilliseconds(r.GetInt64(3)), r.IsDBNull(4) ? null : DateTimeOffset.FromUnixTimeMilliseconds(r.GetInt64(4))));
        }
        return list;
    }

    public async ValueTask<bool> RevokeTokenAsync(string id, DateTimeOffset at, CancellationToken cancellationToken) =>
        await ExecAsync("UPDATE agent_tokens SET revoked_at = $2 WHERE id = $1 AND revoked_at IS NULL", cancellationToken, id, at.ToUnixTimeMilliseconds()) > 0;

    private async Task<int> ExecAsync(string sql, CancellationToken cancellationToken, params object[] values)
    {
        await using var connection = await db.OpenAsync(cancellationToken);
        await using var cmd = new NpgsqlCommand(sql, connection);
        foreach (var v in values)
            cmd.Parameters.Add(new() { Value = v });
        return await cmd.ExecuteNonQueryAsync(cancellationToken);
    }
}
