using Microsoft.Data.Sqlite;

namespace Switchboard.Storage.Sqlite;

/// <summary>A schema change, applied once, identified by a stable id such as <c>channels-001</c>.</summary>
public sealed record SqliteMigration(string Id, string Sql);

/// <summary>
/// The embedded database file: WAL mode, one serialized writer connection (SQLite allows one writer anyway, and
/// this avoids SQLITE_BUSY), pooled reader connections, migrations applied at start-up.
/// </summary>
public sealed class SqliteDatabase : IAsyncDisposable
{
    private readonly string _connectionString;
    private readonly SemaphoreSlim _writeGate = new(1, 1);
    private SqliteConnection? _writer;

    public SqliteDatabase(string path)
    {
        Path = System.IO.Path.GetFullPath(path);
        Directory.CreateDirectory(System.IO.Path.GetDirectoryName(Path)!);
        _connectionString = new SqliteConnectionStringBuilder
        {
            DataSource = Path,
            Mode = SqliteOpenMode.ReadWriteCreate,
            Pooling = true,
            DefaultTimeout = 30,
        }.ToString();
    }

    public string Path { get; }

    /// <summary>Opens a pooled connection for reading.</summary>
    public async Task<SqliteConnection> OpenAsync(CancellationToken cancellationToken)
    {
        var connection = new SqliteConnection(_connectionString);
        await connection.OpenAsync(cancellationToken);
        await ExecAsync(connection, "PRAGMA synchronous=NORMAL; PRAGMA busy_timeout=30000;", cancellationToken);
        return connection;
    }

    /// <summary>Runs <paramref name="work"/> in a transaction on the single writer connection.</summary>
    public async Task<T> WriteAsync<T>(Func<SqliteConnection, SqliteTransaction, Task<T>> work, CancellationToken cancellationToken)
    {
        await _writeGate.WaitAsync(cancellationToken);
        try
        {
            _writer ??= await OpenAsync(cancellationToken);
            using var tx = _writer.BeginTransaction(deferred: false);
            var result = await work(_writer, tx);
            tx.Commit();
            return result;
        }
        finally
        {
            _writeGate.Release();
        }
    }

    /// <summary>Applies every migration not yet applied, in order.</summary>
    public async Task MigrateAsync(IEnumerable<SqliteMigration> migrations, CancellationToken cancellationToken)
    {
        await using var connection = await OpenAsync(cancellationToken);
        await ExecAsync(connection, "PRAGMA journal_mode=WAL;", cancellationToken);
        await ExecAsync(connection, "CREATE TABLE IF NOT EXISTS schema_migrations (id TEXT PRIMARY KEY, applied_at INTEGER NOT NULL);", cancellationToken);
        foreach (var m in migrations)
        {
            using var tx = connection.BeginTransaction(deferred: false);
            using var check = connection.CreateCommand();
            check.Transaction = tx;
            check.CommandText = "SELECT 1 FROM schema_migrations WHERE id = $id";
            check.Parameters.AddWithValue("$id", m.Id);
            if (await check.ExecuteScalarAsync(cancellationToken) is null)
            {
                using var apply = connection.CreateCommand();
                apply.Transaction = tx;
                apply.CommandText = m.Sql;
                await apply.ExecuteNonQueryAsync(cancellationToken);
                using var mark = connection.CreateCommand();
                mark.Transaction = tx;
                mark.CommandText = "INSERT INTO schema_migrations (id, applied_at) VALUES ($id, $at)";
                mark.Parameters.AddWithValue("$id", m.Id);
                mark.Parameters.AddWithValue("$at", DateTimeOffset.UtcNow.ToUnixTimeMilliseconds());
                await mark.ExecuteNonQueryAsync(cancellationToken);
            }
            tx.Commit();
        }
    }

    public static async Task ExecAsync(SqliteConnection connection, string sql, CancellationToken cancellationToken)
    {
        using var command = connection.CreateCommand();
        command.CommandText = sql;
        await command.ExecuteNonQueryAsync(cancellationToken);
    }

    public async ValueTask DisposeAsync()
    {
        // Wait (bounded) for a write in progress so it does not meet a disposed connection.
        var held = await _writeGate.WaitAsync(TimeSpan.FromSeconds(5));
        try
        {
            if (_writer is not null)
                await _writer.DisposeAsync();
            _writer = null;
        }
        finally
        {
            if (held)
                _writeGate.Release();
        }
    }
}
