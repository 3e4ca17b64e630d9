using System.Diagnostics;
using Switchboard.Protocol;
using Switchboard.Server.Tests.Infrastructure;
using Xunit.Abstractions;

namespace Switchboard.Server.Tests.Rooms;

public sealed class RoomSlowMemberTests(ITestOutputHelper output)
{
    [Fact]
    public async Task A_member_that_never_reads_is_closed_with_4008_while_a_fast_member_keeps_receiving()
    {
        await using var gw = await TestGateway.StartAsync(o =>
        {
            o.Limits.MaxQueuedMessages = 16;
            o.Limits.MaxQueuedBytes = 1024 * 1024; // the 16-message bound is the one that trips
            o.Limits.MaxMessageBytes = 64 * 1024;
        });
        var (id, secret, _) = await RoomTestKit.CreateRoomAsync(gw, "open");
        var host = await RoomTestKit.JoinAsync(gw, id, secret);
        var fast = await RoomTestKit.JoinAsync(gw, id, secret);
        // The slow member: a raw client with a 4 KB receive buffer that reads its 'connected' and then never reads again.
        using var slow = await RawWebSocketClient.ConnectAsync(gw.BaseUri, "v1/websocket", 4096);
        await slow.SendTextAsync($"{{\"type\":\"connect\",\"room\":\"{id}\",\"secret\":\"{secret}\"}}");
        var slowId = System.Text.Json.JsonDocument.Parse(await slow.ReceiveTextAsync()).RootElement.Str("clientId");
        await host.NextAsync("client_joined");
        await host.NextAsync("client_joined");
        await fast.NextAsync("client_joined");

        // The sender stays at most 3 messages ahead of the fast member, so the fast member's own queue (16 frames) can
        // never overflow; the slow member's socket buffers fill up and then its queue does.
        const int maxMessages = 5000;
        var payload = new string('x', 16 * 1024);
        using var window = new SemaphoreSlim(3);
        string? slowReason = null;
        var clock = Stopwatch.StartNew();
        var reader = Task.Run(async () =>
        {
            var received = 0;
            while (true)
            {
                var m = await fast.NextAsync();
                if (m.Type() == "client_left")
                {
                    Assert.Equal(slowId, m.Str("clientId"));
                    Volatile.Write(ref slowReason, m.Str("reason"));
                    continue;
                }
                Assert.Equal("relay", m.Type());
                var data = m.GetProperty("data");
                if (data.TryGetProperty("end", out var end))
                    return (received, end.GetInt32());
                Assert.Equal(received, data.GetProperty("n").GetInt32()); // nothing lost, nothing reordered
                received++;
                window.Release();
            }
        });
        var sent = 0;
        while (Volatile.Read(ref slowReason) is null && sent < maxMessages)
        {
            if (!await window.WaitAsync(TimeSpan.FromSeconds(10)))
                Assert.Fail($"the fast member stalled after {sent} messages: reader {reader.Status} {reader.Exception?.InnerException?.Message}");
            await host.RelayAsync("broadcast", new { n = sent, payload });
            sent++;
        }
        await host.RelayAsync("broadcast", new { end = sent });
        var (got, total) = await reader.WaitAsync(TimeSpan.FromSeconds(20));
        Assert.Equal(sent, total);
        Assert.Equal(sent, got);
        Assert.Equal("slow consumer", slowReason);
        Assert.True(clock.Elapsed < TimeSpan.FromSeconds(20), $"fan-out took {clock.Elapsed}");

        // The reason 'slow consumer' is what the room reports for a member closed with 4008 by the connection layer.
        var left = await host.NextAsync("client_left");
        Assert.Equal((slowId, "slow consumer"), (left.Str("clientId"), left.Str("reason")));
        output.WriteLine($"{sent} relays of 16 KB until the slow member was dropped; fast member received all in {clock.Elapsed.TotalSeconds:F2} s");
        var info = await gw.Api.GetStringAsync($"v1/api/rooms/{id}");
        Assert.DoesNotContain(slowId, info, StringComparison.Ordinal);
    }
}
