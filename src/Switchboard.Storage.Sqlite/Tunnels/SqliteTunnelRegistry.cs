using Microsoft.Data.Sqlite;
using Switchboard.Server.Tunnels;

namespace Switchboard.Storage.Sqlite.Tunnels;

/// <summary>Tunnel reservations, live registrations (the <c>tunnel_connections</c> table) and agent token hashes in SQLite.</summary>
public sealed class SqliteTunnelRegistry(SqliteDatabase db) : ITunnelRegistry
{
    public static readonly SqliteMigration[] Migrations =
    [
        new("tunnels-001", """
            CREATE TABLE tunnel_reservations (name TEXT PRIMARY KEY, owner TEXT NOT NULL, created_at INTEGER NOT NULL) WITHOUT ROWID;
            CREATE TABLE tunnel_connections (
                name TEXT PRIMARY KEY, node_id TEXT NOT NULL, connection_id TEXT NOT NULL, owner TEXT NOT NULL, connected_at INTEGER NOT NULL) WITHOUT ROWID;
            CREATE TABLE agent_tokens (
                id TEXT PRIMARY KEY, hash BLOB NOT NULL UNIQUE, label TEXT, created_at INTEGER NOT NULL, revoked_at INTEGER) WITHOUT ROWID;
            """),
    ];

    public async ValueTask<string> ReserveAsync(string name, string owner, DateTimeOffset at, CancellationToken cancellationToken) =>
        await db.WriteAsync(async (c, tx) =>
        {
            using var cmd = c.CreateCommand();
            cmd.Transaction = tx;
            cmd.CommandText = """
                INSERT INTO tunnel_reservations (name, owner, created_at) VALUES ($n, $o, $t) ON CONFLICT (name) DO NOTHING;
                SELECT owner FROM tunnel_reservations WHERE name = $n;
                """;
            cmd.Parameters.AddWithValue("$n", name);
            cmd.Parameters.AddWithValue("$o", owner);
            cmd.Parameters.AddWithValue("$t", at.ToUnixTimeMilliseconds());
            return (string)(await cmd.ExecuteScalarAsync(cancellationToken))!;
        }, cancellationToken);

    public async ValueTask RegisterAsync(TunnelRegistration r, CancellationToken cancellationToken) =>
        await db.WriteAsync(async (c, tx) =>
        {
            using var cmd = c.CreateCommand();
            cmd.Transaction = tx;
            cmd.CommandText = """
                INSERT INTO tunnel_connections (name, node_id, connection_id, owner, connected_at) VALUES ($n, $node, $c, $o, $t)
                ON CONFLICT (name) DO UPDATE SET node_id = $node, connection_id = $c, owner = $o, connected_at = $t;
                """;
            cmd.Parameters.AddWithValue("$n", r.Name);
            cmd.Parameters.AddWithValue("$node", r.NodeId);
            cmd.Parameters.AddWithValue("$c", r.ConnectionId);
            cmd.Parameters.AddWithValue("$o", r.Owner);
            cmd.Parameters.AddWithValue("$t", r.ConnectedAt.ToUnixTimeMilliseconds());
            return await cmd.ExecuteNonQueryAsync(cancellationToken);
        }, cancellationToken);

    public async ValueTask<bool> UnregisterAsync(string name, string connectionId, CancellationToken cancellationToken) =>
        await db.WriteAsync(async (c, tx) =>
        {
            using var cmd = c.CreateCommand();
            cmd.Transaction = tx;
            cmd.CommandText = "DELETE FROM tunnel_connections WHERE name = $n AND connection_id = $c";
            cmd.Parameters.AddWithValue("$n", name);
            cmd.Parameters.AddWithValue("$c", connectionId);
            return await cmd.ExecuteNonQueryAsync(cancellationToken) > 0;
        }, cancellationToken);

    public async ValueTask<int> RemoveNodeAsync(string nodeId, CancellationToken cancellationToken) =>
        await db.WriteAsync(async (c, tx) =>
        {
            using var cmd = c.CreateCommand();
            cmd.Transaction = tx;
            cmd.CommandText = "DELETE FROM tunnel_connections WHERE node_id = $node";
            cmd.Parameters.AddWithValue("$node", nodeId);
            return await cmd.ExecuteNonQueryAsync(cancellationToken);
        }, cancellationToken);

    public async ValueTask<TunnelRegistration?> GetAsync(string name, CancellationToken cancellationToken) =>
        (await QueryAsync("SELECT name, node_id, connection_id, owner, connected_at FROM tunnel_connections WHERE name = $n", name, cancellationToken)).FirstOrDefault();

    public async ValueTask<IReadOnlyList<TunnelRegistration>> ListAsync(CancellationToken cancellationToken) =>
        await QueryAsync("SELECT name, node_id, connection_id, owner, connected_at FROM tunnel_connections ORDER BY name", null, cancellationToken);

    private async Task<List<TunnelRegistration>> QueryAsync(string sql, string? name, CancellationToken cancellationToken)
    {
        await using var read = await db.OpenAsync(cancellationToken);
        using var q = read.CreateCommand();
        q.CommandText = sql;
        if (name is not null)
            q.Parameters.AddWithValue("$n", name);
        using var r = await q.ExecuteReaderAsync(cancellationToken);
        var list = new List<TunnelRegistration>();
        while (await r.ReadAsync(cancellationToken))
            list.Add(new TunnelRegistration(r.GetString(0), r.GetString(1), r.GetString(2), r.GetString(3), DateTimeOffset.FromUnixTimeMilliseconds(r.GetInt64(4))));
        return list;
    }

    public async ValueTask CreateTokenAsync(AgentTokenRecord token, CancellationToken cancellationToken) =>
        await db.WriteAsync(async (c, tx) =>
        {
            using var cmd = c.CreateCommand();
            cmd.Transaction = tx;
            cmd.CommandText = "INSERT INTO agent_tokens (id, hash, label, created_at, revoked_at) VALUES ($id, $h, $l, $t, $r)";
            cmd.Parameters.AddWithValue("$id", token.Id);
            cmd.Parameters.Add("$h", SqliteType.Blob).Value = token.Hash;
            cmd.Parameters.AddWithValue("$l", (object?)token.Label ?? DBNull.Value);
            cmd.Parameters.AddWithValue("$t", token.CreatedAt.ToUnixTimeMilliseconds());
            cmd.Parameters.AddWithValue("$r", token.RevokedAt is { } r ? r.ToUnixTimeMilliseconds() : DBNull.Value);
            return await cmd.ExecuteNonQueryAsync(cancellationToken);
        }, cancellationToken);

    public async ValueTask<AgentTokenRecord?> FindTokenAsync(byte[] hash, CancellationToken cancellationToken) =>
        (await TokensAsync("WHERE hash = $h", hash, cancellationToken)).FirstOrDefault();

    public async ValueTask<IReadOnlyList<AgentTokenRecord>> ListTokensAsync(CancellationToken cancellationToken) =>
        await TokensAsync("ORDER BY created_at, id", null, cancellationToken);

    private async Task<List<AgentTokenRecord>> TokensAsync(string where, byte[]? hash, CancellationToken cancellationToken)
    {
        await using var read = await db.OpenAsync(cancellationToken);
        using var q = read.CreateCommand();
        q.CommandText = "SELECT id, hash, label, created_at, revoked_at FROM agent_tokens " + where;
        if (hash is not null)
            q.Parameters.Add("$h", SqliteType.Blob).Value = hash;
        using var r = await q.ExecuteReaderAsync(cancellationToken);
        var list = new List<AgentTokenRecord>();
        while (await r.ReadAsync(cancellationToken))
        {
            list.Add(new AgentTokenRecord(r.GetString(0), (byte[])r.GetValue(1), r.IsDBNull(2) ? null : r.GetString(2),
                DateTimeOffset.FromUnixTimeMilliseconds(r.GetInt64(3)), r.IsDBNull(4) ? null : DateTimeOffset.FromUnixTimeMilliseconds(r.GetInt64(4))));
        }
        return list;
    }

    public async ValueTask<bool> RevokeTokenAsync(string id, DateTimeOffset at, CancellationToken cancellationToken) =>
        await db.WriteAsync(async (c, tx) =>
        {
            using var cmd = c.CreateCommand();
            cmd.Transaction = tx;
            cmd.CommandText = "UPDATE agent_tokens SET revoked_at = $t WHERE id = $id AND revoked_at IS NULL";
            cmd.Parameters.AddWithValue("$id", id);
            cmd.Parameters.AddWithValue("$t", at.ToUnixTimeMilliseconds());
            return await cmd.ExecuteNonQueryAsync(cancellationToken) > 0;
        }, cancellationToken);
}
