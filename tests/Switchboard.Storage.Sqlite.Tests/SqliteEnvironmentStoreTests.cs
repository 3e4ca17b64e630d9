using Switchboard.Server.Environments;
using Switchboard.Storage.Specification;
using Switchboard.Storage.Sqlite.Environments;

namespace Switchboard.Storage.Sqlite.Tests;

public sealed class SqliteEnvironmentStoreTests : EnvironmentStoreSpecification, IAsyncLifetime
{
    private readonly SqliteTestDatabase _db = new();

    protected override async Task<IEnvironmentStore> CreateStoreAsync() => new SqliteEnvironmentStore(await _db.OpenAsync());

    public Task InitializeAsync() => Task.CompletedTask;

    public Task DisposeAsync() => _db.DisposeAsync().AsTask();
}
