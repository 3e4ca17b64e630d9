using Microsoft.Data.Sqlite;
using Switchboard.Server.Storage;
using Switchboard.Server.Tunnels;
using Switchboard.Storage.Specification;
using Switchboard.Storage.Sqlite.Tunnels;

namespace Switchboard.Storage.Sqlite.Tests;

/// <summary>A SQLite file in a temp dir per test.</summary>
internal sealed class SqliteTestDatabase : IAsyncDisposable
{
    private readonly List<SqliteDatabase> _databases = [];
    private readonly string _dir = Path.Combine(Path.GetTempPath(), "switchboard-sqlite-tests", Guid.NewGuid().ToString("N"));

    public async Task<SqliteDatabase> OpenAsync()
    {
        var db = new SqliteDatabase(Path.Combine(_dir, _databases.Count + ".db"));
        await db.MigrateAsync(SqliteChannelStore.Migrations.Concat(SqliteRoomStore.Migrations).Concat(SqliteTunnelRegistry.Migrations).Concat(Environments.SqliteEnvironmentStore.Migrations), default);
        _databases.Add(db);
        return db;
    }

    public async ValueTask DisposeAsync()
    {
        foreach (var db in _databases)
            await db.DisposeAsync();
        SqliteConnection.ClearAllPools();
        try
        {
            Directory.Delete(_dir, true);
        }
        catch (IOException)
        {
        }
    }
}

public sealed class SqliteChannelStoreTests : ChannelStoreSpecification, IAsyncLifetime
{
    private readonly SqliteTestDatabase _db = new();
    private IChannelStore? _store;

    protected override async Task<IChannelStore> CreateStoreAsync() => _store ??= new SqliteChannelStore(await _db.OpenAsync(), TimeProvider.System);

    protected override async Task<IChannelStore> CreateFreshStoreAsync() => new SqliteChannelStore(await _db.OpenAsync(), TimeProvider.System);

    public Task InitializeAsync() => Task.CompletedTask;

    public Task DisposeAsync() => _db.DisposeAsync().AsTask();
}

public sealed class SqliteRoomStoreTests : RoomStoreSpecification, IAsyncLifetime
{
    private readonly SqliteTestDatabase _db = new();

    protected override async Task<IRoomStore> CreateStoreAsync() => new SqliteRoomStore(await _db.OpenAsync());

    public Task InitializeAsync() => Task.CompletedTask;

    public Task DisposeAsync() => _db.DisposeAsync().AsTask();
}

public sealed class SqliteTunnelRegistryTests : TunnelRegistrySpecification, IAsyncLifetime
{
    private readonly SqliteTestDatabase _db = new();

    protected override async Task<ITunnelRegistry> CreateRegistryAsync() => new SqliteTunnelRegistry(await _db.OpenAsync());

    public Task InitializeAsync() => Task.CompletedTask;

    public Task DisposeAsync() => _db.DisposeAsync().AsTask();
}

public sealed class SqliteChannelStoreStorageTests : IAsyncLifetime
{
    private readonly SqliteTestDatabase _db = new();

    public Task InitializeAsync() => Task.CompletedTask;

    public Task DisposeAsync() => _db.DisposeAsync().AsTask();

    [Fact]
    public async Task Reading_channels_that_were_never_published_writes_nothing()
    {
        var db = await _db.OpenAsync();
        await using var store = new SqliteChannelStore(db, TimeProvider.System);
        for (var i = 0; i < 50; i++)
        {
            await store.GetPositionAsync("probe:" + i, default);
            await store.ReadAsync("probe:" + i, 0, 10, default);
        }
        Assert.Equal(0L, await CountChannelsAsync(db));
        await store.AppendAsync("probe:1", "1"u8.ToArray(), 10, default);
        Assert.Equal(1L, await CountChannelsAsync(db));

        static async Task<long> CountChannelsAsync(SqliteDatabase db)
        {
            await using var connection = await db.OpenAsync(default);
            using var cmd = connection.CreateCommand();
            cmd.CommandText = "SELECT count(*) FROM channels";
            return (long)(await cmd.ExecuteScalarAsync())!;
        }
    }
}
