using Npgsql;

namespace Switchboard.Storage.Postgres.Tests;

/// <summary>
/// The PostgreSQL server the tests use, from <c>SWITCHBOARD_TEST_POSTGRES</c> (set by <c>./test.sh</c> through
/// <c>scripts/test-deps.sh</c>, which starts a throwaway cluster). Missing means the tests fail: they never skip.
/// </summary>
public static class PostgresTestServer
{
    public const string Variable = "SWITCHBOARD_TEST_POSTGRES";

    public static string AdminConnectionString =>
        Environment.GetEnvironmentVariable(Variable) is { Length: > 0 } value
            ? value
            : throw new InvalidOperationException($"{Variable} is not set. Run ./test.sh, or start a server with scripts/test-deps.sh and export the connection string it writes.");

    /// <summary>Creates an empty database and returns its connection string.</summary>
    public static async Task<string> CreateDatabaseAsync()
    {
        var name = "sbt_" + Guid.NewGuid().ToString("N")[..16];
        await using (var admin = new NpgsqlConnection(AdminConnectionString))
        {
            await admin.OpenAsync();
            await using var cmd = new NpgsqlCommand($"CREATE DATABASE {name} TEMPLATE template0", admin);
            await cmd.ExecuteNonQueryAsync();
        }
        return new NpgsqlConnectionStringBuilder(AdminConnectionString) { Database = name }.ConnectionString;
    }

    /// <summary>Drops a database made by <see cref="CreateDatabaseAsync"/>, closing whatever still uses it.</summary>
    public static async Task DropDatabaseAsync(string connectionString)
    {
        var name = new NpgsqlConnectionStringBuilder(connectionString).Database!;
        NpgsqlConnection.ClearAllPools();
        await using var admin = new NpgsqlConnection(AdminConnectionString);
        await admin.OpenAsync();
        await using var cmd = new NpgsqlCommand($"DROP DATABASE IF EXISTS {name} WITH (FORCE)", admin);
        await cmd.ExecuteNonQueryAsync();
    }
}

/// <summary>
/// One fresh database per test class (an xUnit class fixture); each test takes its own schema in it
/// (<c>Search Path</c>), so tests of a class never see each other's rows.
/// </summary>
public sealed class PostgresFixture : IAsyncLifetime
{
    private readonly List<PostgresDatabase> _databases = [];

    public string ConnectionString { get; private set; } = "";

    public async Task InitializeAsync() => ConnectionString = await PostgresTestServer.CreateDatabaseAsync();

    /// <summary>A new empty schema; returns its connection string (not migrated).</summary>
    public async Task<string> CreateSchemaAsync()
    {
        var schema = "s_" + Guid.NewGuid().ToString("N")[..16];
        await using (var connection = new NpgsqlConnection(ConnectionString))
        {
            await connection.OpenAsync();
            await using var cmd = new NpgsqlCommand($"CREATE SCHEMA {schema}", connection);
            await cmd.ExecuteNonQueryAsync();
        }
        return new NpgsqlConnectionStringBuilder(ConnectionString) { SearchPath = schema }.ConnectionString;
    }

    /// <summary>Opens a database handle (its own connection pool, like another node) and applies every migration.</summary>
    public async Task<PostgresDatabase> OpenAsync(string connectionString)
    {
        var db = new PostgresDatabase(connectionString);
        lock (_databases)
            _databases.Add(db);
        await db.MigrateAsync(PostgresServiceCollectionExtensions.AllMigrations, default);
        return db;
    }

    public async Task DisposeAsync()
    {
        foreach (var db in _databases)
            await db.DisposeAsync();
        await PostgresTestServer.DropDatabaseAsync(ConnectionString);
    }
}
