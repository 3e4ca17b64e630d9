using System.Text;
using Npgsql;

namespace Switchboard.Storage.Postgres.Tests;

/// <summary>What only a shared database must guarantee: several nodes migrating and appending at once.</summary>
public sealed class PostgresStoreTests(PostgresFixture fixture) : IClassFixture<PostgresFixture>
{
    [Fact]
    public async Task Nodes_starting_at_once_apply_each_migration_exactly_once()
    {
        var cs = await fixture.CreateSchemaAsync();
        var nodes = Enumerable.Range(0, 6).Select(_ => new PostgresDatabase(cs)).ToList();
        try
        {
            await Task.WhenAll(nodes.Select(n => n.MigrateAsync(PostgresServiceCollectionExtensions.AllMigrations, default)));
            await using var connection = await nodes[0].OpenAsync(default);
            await using var cmd = new NpgsqlCommand("SELECT count(*), count(DISTINCT id) FROM schema_migrations", connection);
            await using var r = await cmd.ExecuteReaderAsync();
            await r.ReadAsync();
            Assert.Equal(PostgresServiceCollectionExtensions.AllMigrations.Count(), r.GetInt64(0));
            Assert.Equal(r.GetInt64(0), r.GetInt64(1));
        }
        finally
        {
            foreach (var n in nodes)
                await n.DisposeAsync();
        }
    }

    [Fact]
    public async Task Adding_the_environment_owner_keeps_existing_rows_when_nodes_start_at_once()
    {
        var cs = await fixture.CreateSchemaAsync();
        // A database of the previous version: every migration but the owner column, and an environment in it.
        var old = PostgresServiceCollectionExtensions.AllMigrations.Where(m => m.Id != "environments-002").ToList();
        await using (var first = new PostgresDatabase(cs))
        {
            await first.MigrateAsync(old, default);
            await using var connection = await first.OpenAsync(default);
            await PostgresDatabase.ExecAsync(connection,
                "INSERT INTO environments (id, name, driver, command, args, cwd, env, image, created_at) VALUES ('e_old', 'old', 'process', '/bin/true', '[]', NULL, '{}', NULL, 1700000000000)",
                default);
        }
        var nodes = Enumerable.Range(0, 4).Select(_ => new PostgresDatabase(cs)).ToList();
        try
        {
            await Task.WhenAll(nodes.Select(n => n.MigrateAsync(PostgresServiceCollectionExtensions.AllMigrations, default)));
            var stores = nodes.Select(n => new Environments.PostgresEnvironmentStore(n)).ToList();
            var before = await stores[0].GetAsync("e_old", default);
            Assert.NotNull(before);
            Assert.Equal("old", before.Name);
            Assert.Null(before.NodeId);
            // Every node loading it at once tries to claim it; one does.
            var claims = await Task.WhenAll(stores.Select((s, i) => s.SetOwnerAsync("e_old", "node-" + i, null, default).AsTask()));
            Assert.Single(claims, c => c);
            Assert.NotNull((await stores[3].GetAsync("e_old", default))!.NodeId);
        }
        finally
        {
            foreach (var n in nodes)
                await n.DisposeAsync();
        }
    }

    [Fact]
    public async Task Appends_from_several_nodes_get_strictly_increasing_gapless_offsets()
    {
        var cs = await fixture.CreateSchemaAsync();
        var stores = new List<PostgresChannelStore>();
        for (var i = 0; i < 3; i++)
            stores.Add(new PostgresChannelStore(await fixture.OpenAsync(cs), TimeProvider.System));
        var tasks = Enumerable.Range(0, 150).Select(i =>
            stores[i % 3].AppendAsync("multi", Encoding.UTF8.GetBytes(i.ToString(System.Globalization.CultureInfo.InvariantCulture)), 1000, default).AsTask());
        var results = await Task.WhenAll(tasks);
        Assert.Equal(Enumerable.Range(1, 150).Select(i => (long)i), results.Select(r => r.Message.Offset).Order());
        Assert.Single(results.Select(r => r.Epoch).Distinct());
        // Every node reads the same complete history.
        var history = await stores[2].ReadAsync("multi", 0, 1000, default);
        Assert.True(history.Complete);
        Assert.Equal(150, history.Messages.Count);
        Assert.Equal(new Server.Storage.ChannelPosition(150, results[0].Epoch), (await stores[1].GetPositionAsync("multi", default)));
    }

    [Fact]
    public async Task Reading_channels_that_were_never_published_writes_nothing()
    {
        var cs = await fixture.CreateSchemaAsync();
        var db = await fixture.OpenAsync(cs);
        var store = new PostgresChannelStore(db, TimeProvider.System);
        for (var i = 0; i < 50; i++)
        {
            await store.GetPositionAsync("probe:" + i, default);
            await store.ReadAsync("probe:" + i, 0, 10, default);
        }
        Assert.Equal(0L, await CountChannelsAsync(db));
        await store.AppendAsync("probe:1", Encoding.UTF8.GetBytes("1"), 10, default);
        Assert.Equal(1L, await CountChannelsAsync(db));

        static async Task<long> CountChannelsAsync(PostgresDatabase db)
        {
            await using var connection = await db.OpenAsync(default);
            await using var cmd = new NpgsqlCommand("SELECT count(*) FROM channels", connection);
            return (long)(await cmd.ExecuteScalarAsync())!;
        }
    }
}
