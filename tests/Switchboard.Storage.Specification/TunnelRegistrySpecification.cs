using Switchboard.Server.Tunnels;
using Xunit;

namespace Switchboard.Storage.Specification;

/// <summary>What every <see cref="ITunnelRegistry"/> must do.</summary>
public abstract class TunnelRegistrySpecification
{
    private static readonly DateTimeOffset At = DateTimeOffset.FromUnixTimeMilliseconds(1_700_000_000_000);

    protected abstract Task<ITunnelRegistry> CreateRegistryAsync();

    [Fact]
    public async Task A_name_stays_with_its_first_owner()
    {
        var registry = await CreateRegistryAsync();
        Assert.Equal("token:a", await registry.ReserveAsync("shop", "token:a", At, default));
        Assert.Equal("token:a", await registry.ReserveAsync("shop", "token:b", At, default));
        Assert.Equal("token:a", await registry.ReserveAsync("shop", "token:a", At, default));
        Assert.Equal("token:b", await registry.ReserveAsync("blog", "token:b", At, default));
    }

    [Fact]
    public async Task Registrations_map_names_to_node_and_connection_and_only_the_holder_unregisters()
    {
        var registry = await CreateRegistryAsync();
        await registry.RegisterAsync(new TunnelRegistration("shop", "node-1", "c1", "token:a", At), default);
        await registry.RegisterAsync(new TunnelRegistration("blog", "node-2", "c2", "user:bob", At), default);
        Assert.Equal(new TunnelRegistration("shop", "node-1", "c1", "token:a", At), await registry.GetAsync("shop", default));
        Assert.Equal(["blog", "shop"], (await registry.ListAsync(default)).Select(r => r.Name));

        // A reconnect on another node replaces the row; the old connection's late unregister does nothing.
        await registry.RegisterAsync(new TunnelRegistration("shop", "node-2", "c3", "token:a", At.AddSeconds(5)), default);
        Assert.False(await registry.UnregisterAsync("shop", "c1", default));
        Assert.Equal("c3", (await registry.GetAsync("shop", default))!.ConnectionId);
        Assert.True(await registry.UnregisterAsync("shop", "c3", default));
        Assert.Null(await registry.GetAsync("shop", default));

        // A restarted node drops what it held; other nodes' rows stay.
        await registry.RegisterAsync(new TunnelRegistration("api", "node-1", "c4", "token:a", At), default);
        Assert.Equal(1, await registry.RemoveNodeAsync("node-1", default));
        Assert.Equal(["blog"], (await registry.ListAsync(default)).Select(r => r.Name));
    }

    [Fact]
    public async Task Agent_tokens_are_found_by_hash_listed_and_revoked_once()
    {
        var registry = await CreateRegistryAsync();
        var hash = Enumerable.Range(0, 32).Select(i => (byte)i).ToArray();
        await registry.CreateTokenAsync(new AgentTokenRecord("t1", hash, "laptop", At, null), default);
        await registry.CreateTokenAsync(new AgentTokenRecord("t2", [.. hash.Reverse()], null, At.AddSeconds(1), null), default);
        var found = await registry.FindTokenAsync(hash, default);
        Assert.NotNull(found);
        Assert.Equal("t1", found.Id);
        Assert.Equal("laptop", found.Label);
        Assert.Equal(hash, found.Hash);
        Assert.Null(found.RevokedAt);
        Assert.Null(await registry.FindTokenAsync(new byte[32], default));
        Assert.Equal(["t1", "t2"], (await registry.ListTokensAsync(default)).Select(t => t.Id));

        Assert.True(await registry.RevokeTokenAsync("t1", At.AddMinutes(1), default));
        Assert.False(await registry.RevokeTokenAsync("t1", At.AddMinutes(2), default));
        Assert.False(await registry.RevokeTokenAsync("nope", At, default));
        Assert.Equal(At.AddMinutes(1), (await registry.FindTokenAsync(hash, default))!.RevokedAt);
    }
}
