using Switchboard.Server.Storage;
using Xunit;

namespace Switchboard.Storage.Specification;

/// <summary>What every <see cref="IRoomStore"/> must do.</summary>
public abstract class RoomStoreSpecification
{
    protected abstract Task<IRoomStore> CreateStoreAsync();

    private static RoomRecord Room(string id) =>
        new(id, [1, 2, 3, 4], "host", 8, DateTimeOffset.FromUnixTimeMilliseconds(1_700_000_000_000), "name-" + id);

    [Fact]
    public async Task Create_get_list_delete_round_trip()
    {
        var store = await CreateStoreAsync();
        await store.CreateAsync(Room("r1"), default);
        await store.CreateAsync(Room("r2"), default);
        var got = await store.GetAsync("r1", default);
        Assert.NotNull(got);
        Assert.Equal("r1", got.Id);
        Assert.Equal([1, 2, 3, 4], got.SecretHash);
        Assert.Equal("host", got.Protocol);
        Assert.Equal(8, got.MaxClients);
        Assert.Equal("name-r1", got.Name);
        Assert.Equal(Room("r1").CreatedAt, got.CreatedAt);
        Assert.Equal(["r1", "r2"], (await store.ListAsync(default)).Select(r => r.Id).Order());
        Assert.True(await store.DeleteAsync("r1", default));
        Assert.False(await store.DeleteAsync("r1", default));
        Assert.Null(await store.GetAsync("r1", default));
    }
}
