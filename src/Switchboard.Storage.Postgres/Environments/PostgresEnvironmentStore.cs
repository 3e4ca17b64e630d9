using System.Text.Json;
using Npgsql;
using NpgsqlTypes;
using Switchboard.Protocol.Environments;
using Switchboard.Server.Environments;

namespace Switchboard.Storage.Postgres.Environments;

/// <summary>Environment definitions and their output lines in PostgreSQL. Lines are keyed by (environment, seq).</summary>
public sealed class PostgresEnvironmentStore(PostgresDatabase db) : IEnvironmentStore
{
    public static readonly PostgresMigration[] Migrations =
    [
        new("environments-001", """
            CREATE TABLE environments (id text PRIMARY KEY, name text NOT NULL UNIQUE, driver text NOT NULL, command text, args text NOT NULL,
                cwd text, env text NOT NULL, image text, created_at bigint NOT NULL);
            CREATE TABLE environment_logs (env_id text NOT NULL, seq bigint NOT NULL, ts bigint NOT NULL, stream smallint NOT NULL, message text NOT NULL,
                PRIMARY KEY (env_id, seq));
            """),
        // The owner node. Nullable, no default: adding it does not rewrite the table, and rows of older versions stay
        // without owner until a node claims them (SetOwnerAsync, compare-and-set) when it loads them.
        new("environments-002", """
            ALTER TABLE environments ADD COLUMN IF NOT EXISTS node_id text;
            CREATE INDEX IF NOT EXISTS ix_environments_node ON environments (node_id);
            """),
    ];

    public async ValueTask<bool> CreateAsync(EnvironmentRecord e, CancellationToken cancellationToken)
    {
        await using var connection = await db.OpenAsync(cancellationToken);
        await using var cmd = new NpgsqlCommand("""
            INSERT INTO environments (id, name, driver, command, args, cwd, env, image, created_at, node_id) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
            ON CONFLICT DO NOTHING
            """, connection)
        {
            Parameters =
            {
                new() { Value = e.Id }, new() { Value = e.Name }, new() { Value = e.Driver },
                Text(e.Command),
                new() { Value = JsonSerializer.Serialize(e.Args, EnvironmentsJsonContext.Default.IReadOnlyListString) },
                Text(e.Cwd),
                new() { Value = JsonSerializer.Serialize(e.Env, EnvironmentsJsonContext.Default.IReadOnlyDictionaryStringString) },
                Text(e.Image),
                new() { Value = e.CreatedAt.ToUnixTimeMilliseconds() },
                Text(e.NodeId),
            },
        };
        return await cmd.ExecuteNonQueryAsync(cancellationToken) == 1;
    }

    public async ValueTask<EnvironmentRecord?> GetByNameAsync(string name, CancellationToken cancellationToken)
    {
        var list = await QueryAsync("WHERE name = $1", name, cancellationToken);
        return list.Count > 0 ? list[0] : null;
    }

    public async ValueTask<bool> SetOwnerAsync(string id, string nodeId, string? expectedNodeId, CancellationToken cancellationToken)
    {
        await using var connection = await db.OpenAsync(cancellationToken);
        // One conditional UPDATE: the row lock makes concurrent claims serialize, and only the first still matches.
        await using var cmd = new NpgsqlCommand("UPDATE environments SET node_id = $2 WHERE id = $1 AND node_id IS NOT DISTINCT FROM $3", connection)
        {
            Parameters = { new() { Value = id }, new() { Value = nodeId }, Text(expectedNodeId) },
        };
        return await cmd.ExecuteNonQueryAsync(cancellationToken) == 1;
    }

    private static NpgsqlParameter Text(string? value) => new() { Value = (object?)value ?? DBNull.Value, NpgsqlDbType = NpgsqlDbType.Text };

    public async ValueTask<EnvironmentRecord?> GetAsync(string id, CancellationToken cancellationToken)
    {
        var list = await QueryAsync("WHERE id = $1", id, cancellationToken);
        return list.Count > 0 ? list[0] : null;
    }

    public async ValueTask<IReadOnlyList<EnvironmentRecord>> ListAsync(CancellationToken cancellationToken) =>
        await QueryAsync("ORDER BY created_at, id", null, cancellationToken);

    public async ValueTask<bool> DeleteAsync(string id, CancellationToken cancellationToken)
    {
        await using var connection = await db.OpenAsync(cancellationToken);
        await using var tx = await connection.BeginTransactionAsync(cancellationToken);
        await using (var logs = new NpgsqlCommand("DELETE FROM environment_logs WHERE env_id = $1", connection, tx) { Parameters = { new() { Value = id } } })
            await logs.ExecuteNonQueryAsync(cancellationToken);
        int deleted;
        await using (var env = new NpgsqlCommand("DELETE FROM environments WHERE id = $1", connection, tx) { Parameters = { new() { Value = id } } })
            deleted = await env.ExecuteNonQueryAsync(cancellationToken);
        await tx.CommitAsync(cancellationToken);
        return deleted > 0;
    }

    public async ValueTask AppendLogsAsync(string environmentId, IReadOnlyList<LogRecord> lines, long retention, CancellationToken cancellationToken)
    {
        if (lines.Count == 0)
            return;
        var seqs = new long[lines.Count];
        var stamps = new long[lines.Count];
        var streams = new short[lines.Count];
        var messages = new string[lines.Count];
        for (var i = 0; i < lines.Count; i++)
        {
            seqs[i] = lines[i].Seq;
            stamps[i] = lines[i].Timestamp.ToUnixTimeMilliseconds();
            streams[i] = lines[i].Stream;
            messages[i] = lines[i].Message;
        }
        await using var connection = await db.OpenAsync(cancellationToken);
        await using var batch = new NpgsqlBatch(connection)
        {
            BatchCommands =
            {
                // One statement for the whole batch: arrays unnested server-side.
                new("""
                    INSERT INTO environment_logs (env_id, seq, ts, stream, message)
                    SELECT $1, s, t, st, m FROM unnest($2::bigint[], $3::bigint[], $4::smallint[], $5::text[]) AS x(s, t, st, m)
                    ON CONFLICT DO NOTHING
                    """)
                {
                    Parameters = { new() { Value = environmentId }, new() { Value = seqs }, new() { Value = stamps }, new() { Value = streams }, new() { Value = messages } },
                },
                new("DELETE FROM environment_logs WHERE env_id = $1 AND seq <= $2")
                {
                    Parameters = { new() { Value = environmentId }, new() { Value = lines[^1].Seq - retention } },
                },
            },
        };
        await batch.ExecuteNonQueryAsync(cancellationToken);
    }

    public async ValueTask<IReadOnlyList<LogRecord>> ReadLogsAsync(string environmentId, long afterSeq, long upToSeq, int limit, CancellationToken cancellationToken) =>
        await ReadAsync("SELECT seq, ts, stream, message FROM environment_logs WHERE env_id = $1 AND seq > $2 AND seq <= $3 ORDER BY seq LIMIT $4",
            environmentId, afterSeq, upToSeq, limit, cancellationToken);

    public async ValueTask<IReadOnlyList<LogRecord>> TailLogsAsync(string environmentId, long upToSeq, int count, CancellationToken cancellationToken)
    {
        var list = await ReadAsync("SELECT seq, ts, stream, message FROM environment_logs WHERE env_id = $1 AND seq > $2 AND seq <= $3 ORDER BY seq DESC LIMIT $4",
            environmentId, -1, upToSeq, count, cancellationToken);
        list.Reverse();
        return list;
    }

    public async ValueTask<long> LastSeqAsync(string environmentId, CancellationToken cancellationToken)
    {
        await using var connection = await db.OpenAsync(cancellationToken);
        await using var q = new NpgsqlCommand("SELECT MAX(seq) FROM environment_logs WHERE env_id = $1", connection) { Parameters = { new() { Value = environmentId } } };
        return await q.ExecuteScalarAsync(cancellationToken) is long v ? v : 0;
    }

    private async Task<List<LogRecord>> ReadAsync(string sql, string environmentId, long after, long upTo, int limit, CancellationToken cancellationToken)
    {
        var list = new List<LogRecord>();
        if (limit <= 0)
            return list;
        await using var connection = await db.OpenAsync(cancellationToken);
        await using var q = new NpgsqlCommand(sql, connection)
        {
            Parameters = { new() { Value = environmentId }, new() { Value = after }, new() { Value = upTo }, new() { Value = limit } },
        };
        await using var r = await q.ExecuteReaderAsync(cancellationToken);
        while (await r.ReadAsync(cancellationToken))
            list.Add(new LogRecord(r.GetInt64(0), DateTimeOffset.FromUnixTimeMilliseconds(r.GetInt64(1)), (byte)r.GetInt16(2), r.GetString(3)));
        return list;
    }

    private async Task<List<EnvironmentRecord>> QueryAsync(string where, string? id, CancellationToken cancellationToken)
    {
        await using var connection = await db.OpenAsync(cancellationToken);
        await using var q = new NpgsqlCommand("SELECT id, name, driver, command, args, cwd, env, image, created_at, node_id FROM environments " + where, connection);
        if (id is not null)
            q.Parameters.Add(new() { Value = id });
        await using var r = await q.ExecuteReaderAsync(cancellationToken);
        var list = new List<EnvironmentRecord>();
        while (await r.ReadAsync(cancellationToken))
        {
            list.Add(new EnvironmentRecord(r.GetString(0), r.GetString(1), r.GetString(2), r.IsDBNull(3) ? null : r.GetString(3),
                JsonSerializer.Deserialize(r.GetString(4), EnvironmentsJsonContext.Default.IReadOnlyListString) ?? [],
                r.IsDBNull(5) ? null : r.GetString(5),
                JsonSerializer.Deserialize(r.GetString(6), EnvironmentsJsonContext.Default.IReadOnlyDictionaryStringString) ?? new Dictionary<string, string>(),
                r.IsDBNull(7) ? null : r.GetString(7), DateTimeOffset.FromUnixTimeMilliseconds(r.GetInt64(8)), r.IsDBNull(9) ? null : r.GetString(9)));
        }
        return list;
    }
}
