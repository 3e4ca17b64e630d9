using System.Runtime.InteropServices;
using System.Threading.Channels;
using Microsoft.Data.Sqlite;
using Switchboard.Server.Storage;

namespace Switchboard.Storage.Sqlite;

/// <summary>Channel offsets and history in SQLite.</summary>
public sealed class SqliteChannelStore(SqliteDatabase db, TimeProvider time) : IChannelStore, IAsyncDisposable
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
        // The store's epoch: a channel that was never published to is at (0, store epoch), and its row is created with
        // that epoch by the first publish, so reading or subscribing never writes (no row per name a client tries).
        new("channels-002", """
            CREATE TABLE store_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
            INSERT INTO store_meta (key, value) VALUES ('epoch', lower(hex(randomblob(8))));
            """),
    ];

    private const string PositionSql = """
        SELECT coalesce((SELECT last_offset FROM channels WHERE name = $n), 0),
               coalesce((SELECT epoch FROM channels WHERE name = $n), (SELECT value FROM store_meta WHERE key = 'epoch'))
        """;

    public async ValueTask<ChannelPosition> GetPositionAsync(string channel, CancellationToken cancellationToken)
    {
        await using var read = await db.OpenAsync(cancellationToken);
        using var q = read.CreateCommand();
        q.CommandText = PositionSql;
        q.Parameters.AddWithValue("$n", channel);
        using var r = await q.ExecuteReaderAsync(cancellationToken);
        await r.ReadAsync(cancellationToken);
        return new ChannelPosition(r.GetInt64(0), r.GetString(1));
    }

    // Group commit: appends queue here and one writer commits whatever has queued, up to MaxBatch, in one transaction.
    // Bounded: when the disk falls behind, publishers wait (back-pressure) instead of memory growing.
    private const int MaxBatch = 256;
    private readonly Channel<PendingAppend> _appends = Channel.CreateBounded<PendingAppend>(new BoundedChannelOptions(4096) { SingleReader = true });
    private Task? _writer;
    private readonly Lock _gate = new();

    public async ValueTask<AppendResult> AppendAsync(string channel, ReadOnlyMemory<byte> data, int retain, CancellationToken cancellationToken)
    {
        // Completed synchronously by the writer thread, in offset order: the publisher's continuation (dispatch to the
        // channel's subscribers, a few microseconds) runs right there instead of queueing behind socket writes in
        // the thread pool.
        var pending = new PendingAppend(channel, data, Math.Max(retain, 0), new TaskCompletionSource<AppendResult>());
        EnsureWriter();
        await _appends.Writer.WriteAsync(pending, cancellationToken);
        // Once queued the append completes even if the caller gives up, so the caller does not await with its token.
        return await pending.Result.Task;
    }

    private void EnsureWriter()
    {
        if (_writer is not null)
            return;
        lock (_gate)
        {
            if (_writer is not null)
                return;
            // A dedicated thread: SQLite calls block, and on a 2-core machine a blocked thread-pool worker halves the
            // threads left to write to sockets.
            var done = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
            var thread = new Thread(() =>
            {
                try
                {
                    WriteLoop();
                }
                finally
                {
                    done.TrySetResult();
                }
            })
            { IsBackground = true, Name = "switchboard-channel-writer" };
            thread.Start();
            _writer = done.Task;
        }
    }

    private void WriteLoop()
    {
        var batch = new List<PendingAppend>(MaxBatch);
        var reader = _appends.Reader;
        while (reader.WaitToReadAsync().AsTask().GetAwaiter().GetResult())
        {
            while (batch.Count < MaxBatch && reader.TryRead(out var p))
                batch.Add(p);
            try
            {
                var results = CommitAsync(batch).GetAwaiter().GetResult();
                // The publishes resume here, in offset order, and queue their fan-outs; the subscribers' senders
                // start once at the end, so each writes the batch's messages together.
                using (DeliveryBatch.Begin())
                {
                    for (var i = 0; i < batch.Count; i++)
                        batch[i].Result.TrySetResult(results[i]);
                }
            }
            catch (Exception ex)
            {
                foreach (var p in batch)
                    p.Result.TrySetException(ex);
            }
            batch.Clear();
        }
    }

    // The append statements, prepared once per writer connection and reused by every commit (SQLite keeps the compiled
    // statements while the command lives): preparing three statements per commit was about a third of the SQLite
    // library's time at full publish speed. Used only inside db.WriteAsync, which runs one write at a time.
    private AppendCommands? _commands;

    private sealed class AppendCommands : IDisposable
    {
        public AppendCommands(SqliteConnection connection)
        {
            Connection = connection;
            Upsert = connection.CreateCommand();
            Upsert.CommandText = """
                INSERT INTO channels (name, epoch, last_offset) VALUES ($n, (SELECT value FROM store_meta WHERE key = 'epoch'), 1)
                ON CONFLICT (name) DO UPDATE SET last_offset = last_offset + 1
                RETURNING last_offset, epoch;
                """;
            UpName = Upsert.Parameters.Add("$n", SqliteType.Text);
            Insert = connection.CreateCommand();
            Insert.CommandText = "INSERT INTO channel_messages (channel, offset, data, created_at) VALUES ($n, $o, $d, $t)";
            InName = Insert.Parameters.Add("$n", SqliteType.Text);
            InOffset = Insert.Parameters.Add("$o", SqliteType.Integer);
            InData = Insert.Parameters.Add("$d", SqliteType.Blob);
            InTime = Insert.Parameters.Add("$t", SqliteType.Integer);
            Trim = connection.CreateCommand();
            Trim.CommandText = "DELETE FROM channel_messages WHERE channel = $n AND offset <= $limit";
            TrName = Trim.Parameters.Add("$n", SqliteType.Text);
            TrLimit = Trim.Parameters.Add("$limit", SqliteType.Integer);
        }

        public SqliteConnection Connection { get; }
        public SqliteCommand Upsert { get; }
        public SqliteParameter UpName { get; }
        public SqliteCommand Insert { get; }
        public SqliteParameter InName { get; }
        public SqliteParameter InOffset { get; }
        public SqliteParameter InData { get; }
        public SqliteParameter InTime { get; }
        public SqliteCommand Trim { get; }
        public SqliteParameter TrName { get; }
        public SqliteParameter TrLimit { get; }

        public void Use(SqliteTransaction tx)
        {
            Upsert.Transaction = tx;
            Insert.Transaction = tx;
            Trim.Transaction = tx;
        }

        public void Dispose()
        {
            Upsert.Dispose();
            Insert.Dispose();
            Trim.Dispose();
        }
    }

    private Task<AppendResult[]> CommitAsync(List<PendingAppend> batch)
    {
        var now = time.GetUtcNow();
        return db.WriteAsync(async (c, tx) =>
        {
            if (_commands is not { } commands || !ReferenceEquals(commands.Connection, c))
            {
                _commands?.Dispose(); // the writer connection was replaced (the database reopened it)
                _commands = commands = new AppendCommands(c);
            }
            commands.Use(tx);
            var (upsert, upName) = (commands.Upsert, commands.UpName);
            var (insert, inName, inOffset, inData) = (commands.Insert, commands.InName, commands.InOffset, commands.InData);
            var (trim, trName, trLimit) = (commands.Trim, commands.TrName, commands.TrLimit);
            commands.InTime.Value = now.ToUnixTimeMilliseconds();

            var results = new AppendResult[batch.Count];
            Dictionary<string, long>? trims = null;
            for (var i = 0; i < batch.Count; i++)
            {
                var p = batch[i];
                upName.Value = p.Channel;
                long offset;
                string epoch;
                using (var r = await upsert.ExecuteReaderAsync())
                {
                    await r.ReadAsync();
                    offset = r.GetInt64(0);
                    epoch = r.GetString(1);
                }
                inName.Value = p.Channel;
                inOffset.Value = offset;
                inData.Value = MemoryMarshal.TryGetArray(p.Data, out var segment) && segment.Offset == 0 && segment.Count == segment.Array!.Length
                    ? segment.Array
                    : p.Data.ToArray();
                await insert.ExecuteNonQueryAsync();
                if (offset > p.Retain)
                {
                    // Trimmed once per channel per batch, after its last append (the same transaction, so readers
                    // never see more than `retain` messages).
                    trims ??= new Dictionary<string, long>(StringComparer.Ordinal);
                    trims[p.Channel] = offset - p.Retain;
                }
                results[i] = new AppendResult(new StoredMessage(p.Channel, offset, p.Data, now), epoch);
            }
            if (trims is not null)
            {
                foreach (var (channel, limit) in trims)
                {
                    trName.Value = channel;
                    trLimit.Value = limit;
                    await trim.ExecuteNonQueryAsync();
                }
            }
            return results;
        }, CancellationToken.None);
    }

    public async ValueTask DisposeAsync()
    {
        _appends.Writer.TryComplete();
        if (_writer is not null)
            await _writer;
        _commands?.Dispose(); // the writer thread has finished: no commit uses them any more
        _commands = null;
    }

    private sealed record PendingAppend(string Channel, ReadOnlyMemory<byte> Data, int Retain, TaskCompletionSource<AppendResult> Result);

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
