using Microsoft.AspNetCore.Connections;
using Microsoft.Extensions.DependencyInjection;
using Switchboard.Server.Http;
using Switchboard.Server.Tests.Infrastructure;
using Xunit;

namespace Switchboard.Server.Tests.Http;

public sealed class BlockMemoryPoolTests
{
    [Fact]
    public void Blocks_are_reused_and_the_free_list_is_bounded()
    {
        using var pool = new BlockMemoryPool(1024, maxFreeBlocks: 2);
        var a = pool.Rent();
        var b = pool.Rent(512);
        var c = pool.Rent(1024);
        Assert.Equal(1024, a.Memory.Length);
        Assert.Equal(3, pool.AllocatedBlocks);
        a.Dispose();
        b.Dispose();
        c.Dispose(); // beyond the bound: dropped
        Assert.Equal(2, pool.FreeBlocks);
        var d = pool.Rent();
        Assert.Equal(1, pool.FreeBlocks);
        Assert.Equal(3, pool.AllocatedBlocks);
        d.Dispose();
        d.Dispose(); // a second return is ignored, so one block is never handed out twice
        Assert.Equal(2, pool.FreeBlocks);
        var e = pool.Rent();
        var f = pool.Rent();
        Assert.NotEqual(e.Memory, f.Memory);
        Assert.Throws<ArgumentOutOfRangeException>(() => pool.Rent(1025));
    }

    [Fact]
    public async Task Kestrel_receives_and_sends_through_the_gateway_pool()
    {
        await using var gw = await TestGateway.StartAsync();
        var factory = gw.App.Services.GetRequiredService<IMemoryPoolFactory<byte>>();
        var blocks = Assert.IsType<BlockMemoryPoolFactory>(factory);
        using var response = await gw.Http.GetAsync("healthz");
        response.EnsureSuccessStatusCode();
        Assert.Contains(blocks.Pools, p => p.AllocatedBlocks > 0);
    }
}
