using Switchboard.Server.Environments;
using Switchboard.Storage.Specification;
using Switchboard.Storage.Sqlite.Environments;

namespace Switchboard.Storage.Sqlite.Tests;

public sealed class SqliteEnvironmentStoreTests : EnvironmentStoreSpecification, IAsyncLifetime
{
    private readonly SqliteTestDatabase _db = new();

    protected override async Task<IEnvironmentStore> CreateStoreAsync() => new SqliteEnvironmentStore(await _db.OpenAsync());

    [Fact]
    public async Task Adding_the_owner_keeps_rows_of_an_older_version_without_owner()
    {
        var path = Path.Combine(Path.GetTempPath(), "switchboard-sqlite-tests", Guid.NewGuid().ToString("N"), "old.db");
        await using var db = new SqliteDatabase(path);
        try
        {
            await db.MigrateAsync(SqliteEnvironmentStore.Migrations.Where(m => m.Id == "environments-001"), default);
            await db.WriteAsync(async (c, tx) =>
            {
                using var cmd = c.CreateCommand();
                cmd.Transaction = tx;
                cmd.CommandText = "INSERT INTO environments (id, name, driver, command, args, cwd, env, image, created_at) VALUES ('e_old', 'old', 'process', '/bin/true', '[]', NULL, '{}', NULL, 1700000000000)";
                return await cmd.ExecuteNonQueryAsync();
            }, default);
            await db.MigrateAsync(SqliteEnvironmentStore.Migrations, default);
            var store = new SqliteEnvironmentStore(db);
            var old = await store.GetAsync("e_old", default);
            Assert.NotNull(old);
            Assert.Null(old.NodeId);
            Assert.True(await store.SetOwnerAsync("e_old", "n1", null, default));
            Assert.Equal("n1", (await store.GetAsync("e_old", default))!.NodeId);
        }
        finally
        {
            Microsoft.Data.Sqlite.SqliteConnection.ClearAllPools();
        }
    }

    public Task InitializeAsync() => Task.CompletedTask;

    public Task DisposeAsync() => _db.DisposeAsync().AsTask();
}
