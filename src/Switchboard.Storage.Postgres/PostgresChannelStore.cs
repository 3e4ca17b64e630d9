using Npgsql;
using NpgsqlTypes;
using Switchboard.Server.Storage;

namespace Switchboard.Storage.Postgres;

/// <summary>
/// Channel offsets and history in PostgreSQL. The offset is allocated by the database in the same statement that stores
/// the message (<c>INSERT … ON CONFLICT DO UPDATE SET last_offset = last_offset + 1 RETURNING</c>), so offsets are
/// strictly increasing and gapless per channel whichever node publishes; the row lock on the channel orders appends.
/// </summary>
public sealed class PostgresChannelStore(PostgresDatabase db, TimeProvider time) : IChannelStore
{
    public static readonly PostgresMigration[] Migrations =
    [
        new("channels-001", """
            CREATE TABLE channels (name text PRIMARY KEY, epoch text NOT NULL, last_offset bigint NOT NULL);
            CREATE TABLE channel_messages (
                channel text NOT NULL, msg_offset bigint NOT NULL, data bytea NOT NULL, created_at bigint NOT NULL,
                PRIMARY KEY (channel, msg_offset));
            CREATE INDEX ix_channel_messages_created ON channel_messages (created_at);
            """),
        // The store's epoch: a channel that was never published to is at (0, store epoch), and its row is created with
        // that epoch by the first publish, so reading or subscribing never writes (no row per name a client tries).
        new("channels-002", """
            CREATE TABLE store_meta (key text PRIMARY KEY, value text NOT NULL);
            INSERT INTO store_meta (key, value) VALUES ('epoch', substr(replace(gen_random_uuid()::text, '-', ''), 1, 16));
            """),
    ];

    public async ValueTask<ChannelPosition> GetPositionAsync(string channel, CancellationToken cancellationToken)
    {
        await using var connection = await db.OpenAsync(cancellationToken);
        return await GetPositionAsync(connection, channel, cancellationToken);
    }

    private static async Task<ChannelPosition> GetPositionAsync(NpgsqlConnection connection, string channel, CancellationToken cancellationToken)
    {
        await using var select = new NpgsqlCommand("""
            SELECT coalesce((SELECT last_offset FROM channels WHERE name = $1), 0),
                   coalesce((SELECT epoch FROM channels WHERE name = $1), (SELECT value FROM store_meta WHERE key = 'epoch'))
            """, connection) { Parameters = { new() { Value = channel } } };
        await using var r = await select.ExecuteReaderAsync(cancellationToken);
        await r.ReadAsync(cancellationToken);
        return new ChannelPosition(r.GetInt64(0), r.GetString(1));
    }

    public async ValueTask<AppendResult> AppendAsync(string channel, ReadOnlyMemory<byte> data, int retain, CancellationToken cancellationToken)
    {
        var now = time.GetUtcNow();
        await using var connection = await db.OpenAsync(cancellationToken);
        // One statement, one round trip, atomic: allocate the offset, store the message, trim beyond `retain`.
        // The DELETE cannot see the row inserted by the same statement, so `retain` = 0 is handled by not inserting.
        await using var cmd = new NpgsqlCommand("""
            WITH c AS (
                INSERT INTO channels AS ch (name, epoch, last_offset) VALUES ($1, (SELECT value FROM store_meta WHERE key = 'epoch'), 1)
                ON CONFLICT (name) DO UPDATE SET last_offset = ch.last_offset + 1
                RETURNING last_offset, epoch),
            m AS (
                INSERT INTO channel_messages (channel, msg_offset, data, created_at)
                SELECT $1, c.last_offset, $2, $3 FROM c WHERE $4 > 0),
            d AS (
                DELETE FROM channel_messages WHERE channel = $1 AND msg_offset <= (SELECT last_offset FROM c) - $4)
            SELECT last_offset, epoch FROM c
            """, connection)
        {
            Parameters =
            {
                new() { Value = channel },
                new() { Value = data, NpgsqlDbType = NpgsqlDbType.Bytea },
                new() { Value = now.ToUnixTimeMilliseconds() },
                new() { Value = (long)Math.Max(retain, 0) },
            },
        };
        await using var r = await cmd.ExecuteReaderAsync(cancellationToken);
        await r.ReadAsync(cancellationToken);
        var offset = r.GetInt64(0);
        var epoch = r.GetString(1);
        return new AppendResult(new StoredMessage(channel, offset, data, now), epoch);
    }

    public async ValueTask<ChannelHistory> ReadAsync(string channel, long afterOffset, int limit, CancellationToken cancellationToken)
    {
        await using var connection = await db.OpenAsync(cancellationToken);
        var position = await GetPositionAsync(connection, channel, cancellationToken);
        var messages = new List<StoredMessage>();
        if (limit > 0 && afterOffset < position.Offset)
        {
            await using var q = new NpgsqlCommand(
                "SELECT msg_offset, data, created_at FROM channel_messages WHERE channel = $1 AND msg_offset > $2 AND msg_offset <= $3 ORDER BY msg_offset LIMIT $4", connection)
            {
                Parameters = { new() { Value = channel }, new() { Value = afterOffset }, new() { Value = position.Offset }, new() { Value = (long)limit } },
            };
            await using var r = await q.ExecuteReaderAsync(cancellationToken);
            while (await r.ReadAsync(cancellationToken))
                messages.Add(new StoredMessage(channel, r.GetInt64(0), r.GetFieldValue<byte[]>(1), DateTimeOffset.FromUnixTimeMilliseconds(r.GetInt64(2))));
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

    public async ValueTask<int> TrimOlderThanAsync(DateTimeOffset olderThan, CancellationToken cancellationToken)
    {
        await using var connection = await db.OpenAsync(cancellationToken);
        await using var cmd = new NpgsqlCommand("DELETE FROM channel_messages WHERE created_at < $1", connection) { Parameters = { new() { Value = olderThan.ToUnixTimeMilliseconds() } } };
        return await cmd.ExecuteNonQueryAsync(cancellationToken);
    }
}
