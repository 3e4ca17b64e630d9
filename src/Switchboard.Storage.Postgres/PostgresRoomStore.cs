using Npgsql;
using Switchboard.Server.Storage;

namespace Switchboard.Storage.Postgres;

/// <summary>Room definitions in PostgreSQL (secrets only as hashes).</summary>
public sealed class PostgresRoomStore(PostgresDatabase db) : IRoomStore
{
    public static readonly PostgresMigration[] Migrations =
    [
        new("rooms-001", """
            CREATE TABLE rooms (id text PRIMARY KEY, secret_hash bytea NOT NULL, protocol text NOT NULL, max_clients integer NOT NULL,
                created_at bigint NOT NULL, name text);
            """),
    ];

    public async ValueTask CreateAsync(RoomRecord room, CancellationToken cancellationToken)
    {
        await using var connection = await db.OpenAsync(cancellationToken);
        await using var cmd = new NpgsqlCommand("INSERT INTO rooms (id, secret_hash, protocol, max_clients, created_at, name) VALUES ($1, $2, $3, $4, $5, $6)", connection)
        {
            Parameters =
            {
                new() { Value = room.Id },
                new() { Value = room.SecretHash },
                new() { Value = room.Protocol },
                new() { Value = room.MaxClients },
                new() { Value = room.CreatedAt.ToUnixTimeMilliseconds() },
                new() { Value = (object?)room.Name ?? DBNull.Value, NpgsqlDbType = NpgsqlTypes.NpgsqlDbType.Text },
            },
        };
        await cmd.ExecuteNonQueryAsync(cancellationToken);
    }

    public async ValueTask<RoomRecord?> GetAsync(string id, CancellationToken cancellationToken)
    {
        var list = await QueryAsync("WHERE id = $1", id, cancellationToken);
        return list.Count > 0 ? list[0] : null;
    }

    public async ValueTask<IReadOnlyList<RoomRecord>> ListAsync(CancellationToken cancellationToken) =>
        await QueryAsync("ORDER BY created_at, id", null, cancellationToken);

    public async ValueTask<bool> DeleteAsync(string id, CancellationToken cancellationToken)
    {
        await using var connection = await db.OpenAsync(cancellationToken);
        await using var cmd = new NpgsqlCommand("DELETE FROM rooms WHERE id = $1", connection) { Parameters = { new() { Value = id } } };
        return await cmd.ExecuteNonQueryAsync(cancellationToken) > 0;
    }

    private async Task<List<RoomRecord>> QueryAsync(string where, string? id, CancellationToken cancellationToken)
    {
        await using var connection = await db.OpenAsync(cancellationToken);
        await using var q = new NpgsqlCommand("SELECT id, secret_hash, protocol, max_clients, created_at, name FROM rooms " + where, connection);
        if (id is not null)
            q.Parameters.Add(new() { Value = id });
        await using var r = await q.ExecuteReaderAsync(cancellationToken);
        var list = new List<RoomRecord>();
        while (await r.ReadAsync(cancellationToken))
        {
            list.Add(new RoomRecord(r.GetString(0), r.GetFieldValue<byte[]>(1), r.GetString(2), r.GetInt32(3),
                DateTimeOffset.FromUnixTimeMilliseconds(r.GetInt64(4)), r.IsDBNull(5) ? null : r.GetString(5)));
        }
        return list;
    }
}
