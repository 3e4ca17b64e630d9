using System.Net;
using System.Net.Http.Json;
using Switchboard.Protocol;
using Switchboard.Server.Diagnostics;
using Switchboard.Server.Tests.Infrastructure;

namespace Switchboard.Server.Tests.Diagnostics;

public sealed class MetricsTests
{
    [Fact]
    public async Task Metrics_are_prometheus_text_and_need_the_api_key()
    {
        await using var gw = await TestGateway.StartAsync();
        Assert.Equal(HttpStatusCode.Unauthorized, (await gw.Http.GetAsync("metrics")).StatusCode);

        await using (var s = await gw.ConnectChannelsAsync())
        {
            await s.SendJsonAsync(new { type = "subscribe", channel = "m" });
            await s.ReceiveTypeAsync("subscribed");
            // The delivery histogram samples one frame in 16 per connection: send enough for a sample.
            for (var i = 0; i < SwitchboardMetrics.DeliverySampleEvery; i++)
            {
                await gw.Api.PostAsJsonAsync("api/v1/channels/m/messages", new { data = i });
                await s.ReceiveTypeAsync("message");
            }
            var during = await gw.Api.GetStringAsync("metrics");
            Assert.Contains("switchboard_connections_active{endpoint=\"channels\"} 1", during);
        }
        await using (var bad = await gw.ConnectAsync("api/v1/ws?token=bad"))
            Assert.Equal(CloseCodes.Unauthorized, await bad.WaitForCloseAsync());

        string text = "";
        for (var i = 0; i < 50 && !text.Contains("code=\"1000\""); i++)
        {
            await Task.Delay(50);
            text = await gw.Api.GetStringAsync("metrics");
        }
        Assert.Contains("# TYPE switchboard_messages_sent_total counter", text);
        Assert.Contains("switchboard_messages_received_total{endpoint=\"channels\"}", text);
        Assert.Contains("# TYPE switchboard_delivery_duration_seconds histogram", text);
        Assert.Contains("switchboard_delivery_duration_seconds_bucket{le=\"+Inf\"}", text);
        Assert.Contains("switchboard_connection_duration_seconds_count{endpoint=\"channels\"} 1", text);
        Assert.Contains("switchboard_connections_closed_total{endpoint=\"channels\",code=\"1000\"} 1", text);
        Assert.Contains("switchboard_connections_closed_total{endpoint=\"channels\",code=\"4401\"} 1", text);
        Assert.Contains("switchboard_connections_active{endpoint=\"channels\"} 0", text);
        Assert.Contains($"switchboard_channels_published_total {SwitchboardMetrics.DeliverySampleEvery}", text);

        // The runtime's own meter: GC heap, allocations, thread pool (one per process, exported unscoped).
        Assert.Contains("# TYPE dotnet_gc_heap_total_allocated_bytes_total counter", text);
        Assert.Matches(@"(?m)^dotnet_gc_last_collection_memory_committed_size_bytes \d+", text);
        Assert.Contains("# TYPE dotnet_thread_pool_thread_count gauge", text); // a gauge, whatever the runtime declares
        Assert.Matches(@"(?m)^dotnet_thread_pool_thread_count \d+", text);
        Assert.Matches(@"(?m)^dotnet_process_memory_working_set_bytes \d+", text);
        Assert.Matches(@"(?m)^dotnet_gc_collections_total\{gc_heap_generation=""gen0""\} \d+", text);
    }

    [Fact]
    public async Task Two_gateways_in_one_process_export_only_their_own_instruments()
    {
        await using var a = await TestGateway.StartAsync();
        await using var b = await TestGateway.StartAsync();
        for (var i = 0; i < 3; i++)
            (await a.Api.PostAsJsonAsync("api/v1/channels/a/messages", new { data = i })).EnsureSuccessStatusCode();
        (await b.Api.PostAsJsonAsync("api/v1/channels/b/messages", new { data = 0 })).EnsureSuccessStatusCode();

        static string[] Published(string text) => [.. text.Split('\n').Where(l => l.StartsWith("switchboard_channels_published_total", StringComparison.Ordinal))];
        Assert.Equal(["switchboard_channels_published_total 3"], Published(await a.Api.GetStringAsync("metrics")));
        Assert.Equal(["switchboard_channels_published_total 1"], Published(await b.Api.GetStringAsync("metrics")));
    }

    [Fact]
    public async Task Healthz_is_ok_while_serving()
    {
        await using var gw = await TestGateway.StartAsync();
        var response = await gw.Http.GetAsync("healthz");
        Assert.Equal(HttpStatusCode.OK, response.StatusCode);
        Assert.Equal("ok\n", await response.Content.ReadAsStringAsync());
    }
}
