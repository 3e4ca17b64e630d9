using System.Security.Cryptography;
using Microsoft.Data.Sqlite;
using Switchboard.Server.Storage;

namespace Switchboard.Storage.Sqlite;

/// <summary>Channel offsets and history in SQLite.</summary>
public sealed class SqliteChannelStore(SqliteDatabase db, TimeProvider time) : IChannelStore
{
    public static readonly SqliteMigration[] Migrations =
    [
        new("channels-001", """
            CREATE TABLE channels (name TEXT PRIMARY KEY, epoch TEXT NOT NULL, last_offset INTEGER NOT NULL) WITHOUT ROWID;
            CREATE TABLE channel_messages (
                channel TEXT NOT NULL, offset INTEGER NOT NULL, data BLOB NOT NULL, created_at INTEGER NOT NULL,
                PRIMARY KEY (channel, offset)) WITHOUT ROWID;
            CREATE INDEX ix_channel_messages_created ON channel_messages (created_at);
            """),
    ];

    public static string NewEpoch() => Convert.ToHexStringLower(RandomNumberGenerator.GetBytes(8));

    public async ValueTask<ChannelPosition> GetPositionAsync(string channel, CancellationToken cancellationToken)
    {
        await using (var read = await db.OpenAsync(cancellationToken))
        {
            using var q = read.CreateCommand();
            q.CommandText = "SELECT last_offset, epoch FROM channels WHERE name = $n";
            q.Parameters.AddWithValue("$n", channel);
            using var r = await q.ExecuteReaderAsync(cancellationToken);
            if (await r.ReadAsync(cancellationToken))
                return new ChannelPosition(r.GetInt64(0), r.GetString(1));
        }
        return await db.WriteAsync(async (c, tx) =>
        {
            using var cmd = c.CreateCommand();
            cmd.Transaction = tx;
            cmd.CommandText = """
                INSERT INTO channels (name, epoch, last_offset) VALUES ($n, $e, 0) ON CONFLICT (name) DO NOTHING;
                SELECT last_offset, epoch FROM channels WHERE name = $n;
                """;
            cmd.Parameters.AddWithValue("$n", channel);
            cmd.Parameters.AddWithValue("$e", NewEpoch());
            using var r = await cmd.ExecuteReaderAsync(cancellationToken);
            await r.ReadAsync(cancellationToken);
            return new ChannelPosition(r.GetInt64(0), r.GetString(1));
        }, cancellationToken);
    }

    public ValueTask<AppendResult> AppendAsync(string channel, ReadOnlyMemory<byte> data, int retain, CancellationToken cancellationToken)
    {
        var now = time.GetUtcNow();
        return new(db.WriteAsync(async (c, tx) =>
        {
            long offset;
            string epoch;
            using (var cmd = c.CreateCommand())
            {
                cmd.Transaction = tx;
                cmd.CommandText = """
                    INSERT INTO channels (name, epoch, last_offset) VALUES ($n, $e, 1)
                    ON CONFLICT (name) DO UPDATE SET last_offset = last_offset + 1
                    RETURNING last_offset, epoch;
                    """;
                cmd.Parameters.AddWithValue("$n", channel);
                cmd.Parameters.AddWithValue("$e", NewEpoch());
                using var r = await cmd.ExecuteReaderAsync(cancellationToken);
                await r.ReadAsync(cancellationToken);
                offset = r.GetInt64(0);
                epoch = r.GetString(1);
            }
            using (var ins = c.CreateCommand())
            {
                ins.Transaction = tx;
                ins.CommandText = """
                    INSERT INTO channel_messages (channel, offset, data, created_at) VALUES ($n, $o, $d, $t);
                    DELETE FROM channel_messages WHERE channel = $n AND offset <= $o - $keep;
                    """;
                ins.Parameters.AddWithValue("$n", channel);
                ins.Parameters.AddWithValue("$o", offset);
                ins.Parameters.Add("$d", SqliteType.Blob).Value = data.ToArray();
                ins.Parameters.AddWithValue("$t", now.ToUnixTimeMilliseconds());
                ins.Parameters.AddWithValue("$keep", Math.Max(retain, 0));
                await ins.ExecuteNonQueryAsync(cancellationToken);
            }
            return new AppendResult(new StoredMessage(channel, offset, data, now), epoch);
        }, cancellationToken));
    }

    public async ValueTask<ChannelHistory> ReadAsync(string channel, long afterOffset, int limit, CancellationToken cancellationToken)
    {
        var position = await GetPositionAsync(channel, cancellationToken);
        var messages = new List<StoredMessage>();
        if (limit > 0 && afterOffset < position.Offset)
        {
            await using var read = await db.OpenAsync(cancellationToken);
            using var q = read.CreateCommand();
            q.CommandText = "SELECT offset, data, created_at FROM channel_messages WHERE channel = $n AND offset > $a ORDER BY offset LIMIT $l";
            q.Parameters.AddWithValue("$n", channel);
            q.Parameters.AddWithValue("$a", afterOffset);
            q.Parameters.AddWithValue("$l", limit);
            using var r = await q.ExecuteReaderAsync(cancellationToken);
            while (await r.ReadAsync(cancellationToken))
                messages.Add(new StoredMessage(channel, r.GetInt64(0), (byte[])r.GetValue(1), DateTimeOffset.FromUnixTimeMilliseconds(r.GetInt64(2))));
        }
        return new ChannelHistory(position, messages, IsComplete(afterOffset, position.Offset, messages));
    }

    internal static bool IsComplete(long afterOffset, long current, IReadOnlyList<StoredMessage> messages)
    {
        if (afterOffset >= current)
            return afterOffset == current;
        if (messages.Count == 0 || messages[0].Offset != afterOffset + 1)
            return false;
        return messages[^1].Offset >= current && messages[^1].Offset - messages[0].Offset + 1 == messages.Count;
    }

    public async ValueTask<int> TrimOlderThanAsync(DateTimeOffset olderThan, CancellationToken cancellationToken) =>
        await db.WriteAsync(async (c, tx) =>
        {
            using var cmd = c.CreateCommand();
            cmd.Transaction = tx;
            cmd.CommandText = "DELETE FROM channel_messages WHERE created_at < $t";
            cmd.Parameters.AddWithValue("$t", olderThan.ToUnixTimeMilliseconds());
            return await cmd.ExecuteNonQueryAsync(cancellationToken);
        }, cancellationToken);
}
