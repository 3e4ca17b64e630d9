using Switchboard.Server.Storage;
using Switchboard.Storage.Specification;

namespace Switchboard.Storage.Postgres.Tests;

public sealed class PostgresChannelStoreTests(PostgresFixture fixture) : ChannelStoreSpecification, IClassFixture<PostgresFixture>
{
    private IChannelStore? _store;

    protected override async Task<IChannelStore> CreateStoreAsync() =>
        _store ??= new PostgresChannelStore(await fixture.OpenAsync(await fixture.CreateSchemaAsync()), TimeProvider.System);

    protected override async Task<IChannelStore> CreateFreshStoreAsync() =>
        new PostgresChannelStore(await fixture.OpenAsync(await fixture.CreateSchemaAsync()), TimeProvider.System);
}

public sealed class PostgresRoomStoreTests(PostgresFixture fixture) : RoomStoreSpecification, IClassFixture<PostgresFixture>
{
    protected override async Task<IRoomStore> CreateStoreAsync() =>
        new PostgresRoomStore(await fixture.OpenAsync(await fixture.CreateSchemaAsync()));
}

public sealed class PostgresTunnelRegistryTests(PostgresFixture fixture) : TunnelRegistrySpecification, IClassFixture<PostgresFixture>
{
    protected override async Task<Switchboard.Server.Tunnels.ITunnelRegistry> CreateRegistryAsync() =>
        new Tunnels.PostgresTunnelRegistry(await fixture.OpenAsync(await fixture.CreateSchemaAsync()));
}

public sealed class PostgresEnvironmentStoreTests(PostgresFixture fixture) : EnvironmentStoreSpecification, IClassFixture<PostgresFixture>
{
    protected override async Task<Switchboard.Server.Environments.IEnvironmentStore> CreateStoreAsync() =>
        new Environments.PostgresEnvironmentStore(await fixture.OpenAsync(await fixture.CreateSchemaAsync()));
}
