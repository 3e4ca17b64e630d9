using System.Buffers;
using System.IO.Pipelines;
using System.Runtime.InteropServices;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Connections;
using Microsoft.AspNetCore.Http;
using Microsoft.Extensions.DependencyInjection;
using Switchboard.Server.Connections;
using Switchboard.Server.Tests.Infrastructure;

namespace Switchboard.Server.Tests.Connections;

public sealed class BlockMemoryPoolTests
{
    private static byte[] ArrayOf(IMemoryOwner<byte> owner)
    {
        Assert.True(MemoryMarshal.TryGetArray<byte>(owner.Memory, out var segment), "the socket transport needs array-backed blocks");
        return segment.Array!;
    }

    [Fact]
    public void Blocks_are_array_backed_full_size_and_reused()
    {
        using var pool = new BlockMemoryPool(32 * 1024, maxRetained: 8);
        Assert.Equal(32 * 1024, pool.MaxBufferSize);
        var first = pool.Rent(4096);
        Assert.Equal(32 * 1024, first.Memory.Length);
        var array = ArrayOf(first);
        first.Dispose();
        Assert.Equal(1, pool.Retained);

        using var again = pool.Rent();
        Assert.Same(array, ArrayOf(again));
        Assert.Equal(1, pool.Allocated);
        Assert.Throws<ArgumentOutOfRangeException>(() => pool.Rent(32 * 1024 + 1));
    }

    [Fact]
    public void Disposing_a_rental_twice_does_not_hand_the_block_out_twice()
    {
        using var pool = new BlockMemoryPool(8192, maxRetained: 8);
        var block = pool.Rent();
        block.Dispose();
        block.Dispose();
        Assert.Equal(1, pool.Retained);
        using var a = pool.Rent();
        using var b = pool.Rent();
        Assert.NotSame(ArrayOf(a), ArrayOf(b));
    }

    [Fact]
    public void Returned_blocks_beyond_the_bound_go_back_to_the_GC()
    {
        using var pool = new BlockMemoryPool(8192, maxRetained: 2);
        var rented = Enumerable.Range(0, 5).Select(_ => pool.Rent()).ToList();
        rented.ForEach(r => r.Dispose());
        Assert.Equal(2, pool.Retained);
        Assert.Equal(5, pool.Allocated);
    }

    [Fact]
    public void Trim_releases_only_the_blocks_no_rent_needed_since_the_last_trim()
    {
        using var pool = new BlockMemoryPool(8192, maxRetained: 16);
        var rented = Enumerable.Range(0, 4).Select(_ => pool.Rent()).ToList();
        rented.ForEach(r => r.Dispose());
        Assert.Equal(4, pool.Retained);
        pool.Trim(); // the burst allocated: nothing was idle for a whole period yet
        Assert.Equal(4, pool.Retained);

        // One period in which at most one block was out: three stayed unused and are released.
        pool.Rent().Dispose();
        Assert.Equal(3, pool.Trim());
        Assert.Equal(1, pool.Retained);
        // A quiet period: the last one goes too.
        Assert.Equal(1, pool.Trim());
        Assert.Equal(0, pool.Retained);
    }

    [Theory]
    [InlineData(64 * 1024)]
    [InlineData(4096)]
    public async Task The_transport_receives_into_blocks_of_the_configured_size(int blockBytes)
    {
        // The largest receive the request body ever showed: one receive fills at most one block.
        await using var gateway = await TestGateway.StartAsync(o => o.TransportBlockBytes = blockBytes, pipeline: app => app.Map("/_test/body", (IApplicationBuilder b) => b.Run(async context =>
        {
            var largest = 0L;
            while (true)
            {
                var result = await context.Request.BodyReader.ReadAsync(context.RequestAborted);
                foreach (var segment in result.Buffer)
                    largest = Math.Max(largest, segment.Length);
                context.Request.BodyReader.AdvanceTo(result.Buffer.End);
                if (result.IsCompleted)
                    break;
            }
            await context.Response.WriteAsync(largest.ToString(System.Globalization.CultureInfo.InvariantCulture));
        })));
        Assert.IsType<BlockMemoryPoolFactory>(gateway.Services.GetRequiredService<IMemoryPoolFactory<byte>>());

        var body = new byte[8 * 1024 * 1024];
        Random.Shared.NextBytes(body);
        using var response = await gateway.Http.PostAsync("_test/body", new ByteArrayContent(body));
        response.EnsureSuccessStatusCode();
        var largest = long.Parse(await response.Content.ReadAsStringAsync(), System.Globalization.CultureInfo.InvariantCulture);
        Assert.InRange(largest, 1, blockBytes);
        if (blockBytes > 4096)
            Assert.True(largest > 4096, $"an 8 MiB upload never filled more than {largest} bytes of a {blockBytes}-byte block");

        // The pool is visible at /metrics: whole blocks allocated, some kept for reuse after the upload.
        var metrics = await gateway.Api.GetStringAsync("metrics");
        var allocated = Metric(metrics, "switchboard_transport_pool_allocated_bytes_total");
        Assert.True(allocated >= blockBytes && allocated % blockBytes == 0, $"allocated {allocated}");
        var retained = Metric(metrics, "switchboard_transport_pool_retained_bytes");
        Assert.True(retained >= blockBytes && retained <= allocated, $"retained {retained} of {allocated}");
    }

    private static long Metric(string text, string name)
    {
        var line = text.Split('\n').FirstOrDefault(l => l.StartsWith(name + " ", StringComparison.Ordinal));
        Assert.NotNull(line);
        return long.Parse(line[(name.Length + 1)..], System.Globalization.CultureInfo.InvariantCulture);
    }
}
