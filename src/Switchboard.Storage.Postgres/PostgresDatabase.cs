using Npgsql;

namespace Switchboard.Storage.Postgres;

/// <summary>A schema change, applied once, identified by a stable id such as <c>channels-001</c>.</summary>
public sealed record PostgresMigration(string Id, string Sql);

/// <summary>
/// The shared PostgreSQL database: one pooled <see cref="NpgsqlDataSource"/> for the node, and migrations that are safe
/// when several nodes start at once (a session advisory lock serializes them; each is applied in its own transaction and
/// recorded in <c>schema_migrations</c>). A <c>Search Path</c> in the connection string puts every table in that schema.
/// </summary>
public sealed class PostgresDatabase : IAsyncDisposable
{
    /// <summary>Advisory lock key held while migrating ("SWBD" in ASCII).</summary>
    public const long MigrationLockKey = 0x53574244;

    public PostgresDatabase(string connectionString)
    {
        var builder = new NpgsqlConnectionStringBuilder(connectionString);
        // Nodes keep a listening connection and a publisher open; a broken TCP connection must be noticed.
        if (builder.KeepAlive == 0)
            builder.KeepAlive = 10;
        if (string.IsNullOrEmpty(builder.ApplicationName))
            builder.ApplicationName = "switchboard";
        ConnectionString = builder.ConnectionString;
        DataSource = NpgsqlDataSource.Create(ConnectionString);
    }

    public string ConnectionString { get; }

    public NpgsqlDataSource DataSource { get; }

    /// <summary>Opens a pooled connection.</summary>
    public ValueTask<NpgsqlConnection> OpenAsync(CancellationToken cancellationToken) => DataSource.OpenConnectionAsync(cancellationToken);

    /// <summary>Applies every migration not yet applied, in order, under the migration advisory lock.</summary>
    public async Task MigrateAsync(IEnumerable<PostgresMigration> migrations, CancellationToken cancellationToken)
    {
        await using var connection = await OpenAsync(cancellationToken);
        await ExecAsync(connection, $"SELECT pg_advisory_lock({MigrationLockKey})", cancellationToken);
        try
        {
            await ExecAsync(connection, "CREATE TABLE IF NOT EXISTS schema_migrations (id text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())", cancellationToken);
            foreach (var m in migrations)
            {
                await using var tx = await connection.BeginTransactionAsync(cancellationToken);
                await using (var check = new NpgsqlCommand("SELECT 1 FROM schema_migrations WHERE id = @id", connection, tx))
                {
                    check.Parameters.AddWithValue("id", m.Id);
                    if (await check.ExecuteScalarAsync(cancellationToken) is not null)
                        continue;
                }
                await using (var apply = new NpgsqlCommand(m.Sql, connection, tx))
                    await apply.ExecuteNonQueryAsync(cancellationToken);
                await using (var mark = new NpgsqlCommand("INSERT INTO schema_migrations (id) VALUES (@id)", connection, tx))
                {
                    mark.Parameters.AddWithValue("id", m.Id);
                    await mark.ExecuteNonQueryAsync(cancellationToken);
                }
                await tx.CommitAsync(cancellationToken);
            }
        }
        finally
        {
            await ExecAsync(connection, $"SELECT pg_advisory_unlock({MigrationLockKey})", CancellationToken.None);
        }
    }

    public static async Task ExecAsync(NpgsqlConnection connection, string sql, CancellationToken cancellationToken)
    {
        await using var command = new NpgsqlCommand(sql, connection);
        await command.ExecuteNonQueryAsync(cancellationToken);
    }

    public ValueTask DisposeAsync() => DataSource.DisposeAsync();
}
