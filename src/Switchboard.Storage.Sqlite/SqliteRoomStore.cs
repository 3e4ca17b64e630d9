using Switchboard.Server.Storage;

namespace Switchboard.Storage.Sqlite;

/// <summary>Room definitions in SQLite (secrets only as hashes).</summary>
public sealed class SqliteRoomStore(SqliteDatabase db) : IRoomStore
{
    public static readonly SqliteMigration[] Migrations =
    [
        new("rooms-001", """
            CREATE TABLE rooms (id TEXT PRIMARY KEY, secret_hash BLOB NOT NULL, protocol TEXT NOT NULL, max_clients INTEGER NOT NULL,
                created_at INTEGER NOT NULL, name TEXT) WITHOUT ROWID;
            """),
    ];

    public async ValueTask CreateAsync(RoomRecord room, CancellationToken cancellationToken) =>
        await db.WriteAsync(async (c, tx) =>
        {
            using var cmd = c.CreateCommand();
            cmd.Transaction = tx;
            cmd.CommandText = "INSERT INTO rooms (id, secret_hash, protocol, max_clients, created_at, name) VALUES ($id, $s, $p, $m, $t, $n)";
            cmd.Parameters.AddWithValue("$id", room.Id);
            cmd.Parameters.AddWithValue("$s", room.SecretHash);
            cmd.Parameters.AddWithValue("$p", room.Protocol);
            cmd.Parameters.AddWithValue("$m", room.MaxClients);
            cmd.Parameters.AddWithValue("$t", room.CreatedAt.ToUnixTimeMilliseconds());
            cmd.Parameters.AddWithValue("$n", (object?)room.Name ?? DBNull.Value);
            return await cmd.ExecuteNonQueryAsync(cancellationToken);
        }, cancellationToken);

    public async ValueTask<RoomRecord?> GetAsync(string id, CancellationToken cancellationToken)
    {
        var list = await QueryAsync("WHERE id = $id", id, cancellationToken);
        return list.Count > 0 ? list[0] : null;
    }

    public async ValueTask<IReadOnlyList<RoomRecord>> ListAsync(CancellationToken cancellationToken) =>
        await QueryAsync("ORDER BY created_at", null, cancellationToken);

    public async ValueTask<bool> DeleteAsync(string id, CancellationToken cancellationToken) =>
        await db.WriteAsync(async (c, tx) =>
        {
            using var cmd = c.CreateCommand();
            cmd.Transaction = tx;
            cmd.CommandText = "DELETE FROM rooms WHERE id = $id";
            cmd.Parameters.AddWithValue("$id", id);
            return await cmd.ExecuteNonQueryAsync(cancellationToken) > 0;
        }, cancellationToken);

    private async Task<List<RoomRecord>> QueryAsync(string where, string? id, CancellationToken cancellationToken)
    {
        await using var read = await db.OpenAsync(cancellationToken);
        using var q = read.CreateCommand();
        q.CommandText = "SELECT id, secret_hash, protocol, max_clients, created_at, name FROM rooms " + where;
        if (id is not null)
            q.Parameters.AddWithValue("$id", id);
        using var r = await q.ExecuteReaderAsync(cancellationToken);
        var list = new List<RoomRecord>();
        while (await r.ReadAsync(cancellationToken))
        {
            list.Add(new RoomRecord(r.GetString(0), (byte[])r.GetValue(1), r.GetString(2), r.GetInt32(3),
                DateTimeOffset.FromUnixTimeMilliseconds(r.GetInt64(4)), r.IsDBNull(5) ? null : r.GetString(5)));
        }
        return list;
    }
}
