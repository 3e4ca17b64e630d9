using System.Text.Json;
using Microsoft.Data.Sqlite;
using Switchboard.Protocol.Environments;
using Switchboard.Server.Environments;

namespace Switchboard.Storage.Sqlite.Environments;

/// <summary>Environment definitions and their output lines in SQLite. Lines are keyed by (environment, seq).</summary>
public sealed class SqliteEnvironmentStore(SqliteDatabase db) : IEnvironmentStore
{
    public static readonly SqliteMigration[] Migrations =
    [
        new("environments-001", """
            CREATE TABLE environments (id TEXT PRIMARY KEY, name TEXT NOT NULL UNIQUE, driver TEXT NOT NULL, command TEXT, args TEXT NOT NULL,
                cwd TEXT, env TEXT NOT NULL, image TEXT, created_at INTEGER NOT NULL) WITHOUT ROWID;
            CREATE TABLE environment_logs (env_id TEXT NOT NULL, seq INTEGER NOT NULL, ts INTEGER NOT NULL, stream INTEGER NOT NULL, message TEXT NOT NULL,
                PRIMARY KEY (env_id, seq)) WITHOUT ROWID;
            """),
        // The owner node (nullable: rows of older versions get no owner until the node loading them claims them).
        new("environments-002", "ALTER TABLE environments ADD COLUMN node_id TEXT;"),
    ];

    public async ValueTask<bool> CreateAsync(EnvironmentRecord e, CancellationToken cancellationToken) =>
        await db.WriteAsync(async (c, tx) =>
        {
            using var cmd = c.CreateCommand();
            cmd.Transaction = tx;
            cmd.CommandText = """
                INSERT INTO environments (id, name, driver, command, args, cwd, env, image, created_at, node_id) VALUES ($id, $n, $d, $c, $a, $w, $e, $i, $t, $o)
                ON CONFLICT DO NOTHING
                """;
            cmd.Parameters.AddWithValue("$id", e.Id);
            cmd.Parameters.AddWithValue("$n", e.Name);
            cmd.Parameters.AddWithValue("$d", e.Driver);
            cmd.Parameters.AddWithValue("$c", (object?)e.Command ?? DBNull.Value);
            cmd.Parameters.AddWithValue("$a", JsonSerializer.Serialize(e.Args, EnvironmentsJsonContext.Default.IReadOnlyListString));
            cmd.Parameters.AddWithValue("$w", (object?)e.Cwd ?? DBNull.Value);
            cmd.Parameters.AddWithValue("$e", JsonSerializer.Serialize(e.Env, EnvironmentsJsonContext.Default.IReadOnlyDictionaryStringString));
            cmd.Parameters.AddWithValue("$i", (object?)e.Image ?? DBNull.Value);
            cmd.Parameters.AddWithValue("$t", e.CreatedAt.ToUnixTimeMilliseconds());
            cmd.Parameters.AddWithValue("$o", (object?)e.NodeId ?? DBNull.Value);
            return await cmd.ExecuteNonQueryAsync(cancellationToken) == 1;
        }, cancellationToken);

    public async ValueTask<EnvironmentRecord?> GetByNameAsync(string name, CancellationToken cancellationToken)
    {
        var list = await QueryAsync("WHERE name = $id", name, cancellationToken);
        return list.Count > 0 ? list[0] : null;
    }

    public async ValueTask<bool> SetOwnerAsync(string id, string nodeId, string? expectedNodeId, CancellationToken cancellationToken) =>
        await db.WriteAsync(async (c, tx) =>
        {
            using var cmd = c.CreateCommand();
            cmd.Transaction = tx;
            cmd.CommandText = "UPDATE environments SET node_id = $n WHERE id = $id AND node_id IS $x";
            cmd.Parameters.AddWithValue("$id", id);
            cmd.Parameters.AddWithValue("$n", nodeId);
            cmd.Parameters.AddWithValue("$x", (object?)expectedNodeId ?? DBNull.Value);
            return await cmd.ExecuteNonQueryAsync(cancellationToken) == 1;
        }, cancellationToken);

    public async ValueTask<EnvironmentRecord?> GetAsync(string id, CancellationToken cancellationToken)
    {
        var list = await QueryAsync("WHERE id = $id", id, cancellationToken);
        return list.Count > 0 ? list[0] : null;
    }

    public async ValueTask<IReadOnlyList<EnvironmentRecord>> ListAsync(CancellationToken cancellationToken) =>
        await QueryAsync("ORDER BY created_at, id", null, cancellationToken);

    public async ValueTask<bool> DeleteAsync(string id, CancellationToken cancellationToken) =>
        await db.WriteAsync(async (c, tx) =>
        {
            using var cmd = c.CreateCommand();
            cmd.Transaction = tx;
            cmd.CommandText = "DELETE FROM environment_logs WHERE env_id = $id; DELETE FROM environments WHERE id = $id;";
            cmd.Parameters.AddWithValue("$id", id);
            await cmd.ExecuteNonQueryAsync(cancellationToken);
            using var changes = c.CreateCommand();
            changes.Transaction = tx;
            changes.CommandText = "SELECT changes()";
            return (long)(await changes.ExecuteScalarAsync(cancellationToken))! > 0;
        }, cancellationToken);

    public async ValueTask AppendLogsAsync(string environmentId, IReadOnlyList<LogRecord> lines, long retention, CancellationToken cancellationToken)
    {
        if (lines.Count == 0)
            return;
        await db.WriteAsync(async (c, tx) =>
        {
            using var cmd = c.CreateCommand();
            cmd.Transaction = tx;
            cmd.CommandText = "INSERT OR IGNORE INTO environment_logs (env_id, seq, ts, stream, message) VALUES ($e, $s, $t, $st, $m)";
            var e = cmd.Parameters.Add("$e", SqliteType.Text);
            var s = cmd.Parameters.Add("$s", SqliteType.Integer);
            var t = cmd.Parameters.Add("$t", SqliteType.Integer);
            var st = cmd.Parameters.Add("$st", SqliteType.Integer);
            var m = cmd.Parameters.Add("$m", SqliteType.Text);
            e.Value = environmentId;
            cmd.Prepare();
            foreach (var line in lines)
            {
                s.Value = line.Seq;
                t.Value = line.Timestamp.ToUnixTimeMilliseconds();
                st.Value = (int)line.Stream;
                m.Value = line.Message;
                await cmd.ExecuteNonQueryAsync(cancellationToken);
            }
            using var trim = c.CreateCommand();
            trim.Transaction = tx;
            trim.CommandText = "DELETE FROM environment_logs WHERE env_id = $e AND seq <= $cut";
            trim.Parameters.AddWithValue("$e", environmentId);
            trim.Parameters.AddWithValue("$cut", lines[^1].Seq - retention);
            await trim.ExecuteNonQueryAsync(cancellationToken);
            return 0;
        }, cancellationToken);
    }

    public async ValueTask<IReadOnlyList<LogRecord>> ReadLogsAsync(string environmentId, long afterSeq, long upToSeq, int limit, CancellationToken cancellationToken) =>
        await ReadAsync("SELECT seq, ts, stream, message FROM environment_logs WHERE env_id = $e AND seq > $a AND seq <= $b ORDER BY seq LIMIT $l",
            environmentId, afterSeq, upToSeq, limit, cancellationToken);

    public async ValueTask<IReadOnlyList<LogRecord>> TailLogsAsync(string environmentId, long upToSeq, int count, CancellationToken cancellationToken)
    {
        var list = await ReadAsync("SELECT seq, ts, stream, message FROM environment_logs WHERE env_id = $e AND seq > $a AND seq <= $b ORDER BY seq DESC LIMIT $l",
            environmentId, -1, upToSeq, count, cancellationToken);
        list.Reverse();
        return list;
    }

    public async ValueTask<long> LastSeqAsync(string environmentId, CancellationToken cancellationToken)
    {
        await using var read = await db.OpenAsync(cancellationToken);
        using var q = read.CreateCommand();
        q.CommandText = "SELECT MAX(seq) FROM environment_logs WHERE env_id = $e";
        q.Parameters.AddWithValue("$e", environmentId);
        return await q.ExecuteScalarAsync(cancellationToken) is long v ? v : 0;
    }

    private async Task<List<LogRecord>> ReadAsync(string sql, string environmentId, long after, long upTo, int limit, CancellationToken cancellationToken)
    {
        var list = new List<LogRecord>();
        if (limit <= 0)
            return list;
        await using var read = await db.OpenAsync(cancellationToken);
        using var q = read.CreateCommand();
        q.CommandText = sql;
        q.Parameters.AddWithValue("$e", environmentId);
        q.Parameters.AddWithValue("$a", after);
        q.Parameters.AddWithValue("$b", upTo);
        q.Parameters.AddWithValue("$l", limit);
        using var r = await q.ExecuteReaderAsync(cancellationToken);
        while (await r.ReadAsync(cancellationToken))
            list.Add(new LogRecord(r.GetInt64(0), DateTimeOffset.FromUnixTimeMilliseconds(r.GetInt64(1)), (byte)r.GetInt32(2), r.GetString(3)));
        return list;
    }

    private async Task<List<EnvironmentRecord>> QueryAsync(string where, string? id, CancellationToken cancellationToken)
    {
        await using var read = await db.OpenAsync(cancellationToken);
        using var q = read.CreateCommand();
        q.CommandText = "SELECT id, name, driver, command, args, cwd, env, image, created_at, node_id FROM environments " + where;
        if (id is not null)
            q.Parameters.AddWithValue("$id", id);
        using var r = await q.ExecuteReaderAsync(cancellationToken);
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
