using System.Net;
using System.Text.Json;
using Switchboard.Client.Rooms;
using Switchboard.Protocol;
using Switchboard.Server.Tests.Infrastructure;

namespace Switchboard.Server.Tests.Rooms;

public sealed class RoomClientTests
{
    private static async Task<JsonElement> NextAsync(RoomClient client, string type)
    {
        using var timeout = new CancellationTokenSource(TimeSpan.FromSeconds(10));
        while (true)
        {
            var m = await client.Messages.ReadAsync(timeout.Token);
            if (m.GetProperty("type").GetString() == type)
                return m;
        }
    }

    [Fact]
    public async Task Client_library_joins_relays_answers_the_heartbeat_and_sees_the_room_close()
    {
        // Heartbeat: ping every 250 ms, stale after 3 s (room heartbeats are answered by the client library, so a loaded
        // machine must not starve it past the timeout); a client that did not answer would be closed with 4000.
        await using var gw = await TestGateway.StartAsync(o =>
        {
            o.Heartbeat.Interval = TimeSpan.FromMilliseconds(250);
            o.Heartbeat.Timeout = TimeSpan.FromSeconds(3);
        });
        var (id, secret, _) = await RoomTestKit.CreateRoomAsync(gw, "open");
        var options = new RoomClientOptions { AutoReconnect = false };
        await using var a = await RoomClient.ConnectAsync(gw.BaseUri, id, secret, options);
        await using var b = await RoomClient.ConnectAsync(gw.BaseUri, id, secret, options);
        Assert.True(a.IsHost);
        Assert.False(b.IsHost);
        Assert.Equal(2, b.Members.Count);
        Assert.Equal(b.ClientId, (await NextAsync(a, "client_joined")).GetProperty("clientId").GetString());

        await Task.Delay(4000); // more than the heartbeat timeout: both must still be members
        await b.RelayAsync("broadcast", JsonDocument.Parse("""{"chat":"hi"}""").RootElement);
        var relay = await NextAsync(a, "relay");
        Assert.Equal(b.ClientId, relay.GetProperty("from").GetString());
        Assert.Equal("hi", relay.GetProperty("data").GetProperty("chat").GetString());

        await a.KickAsync("nobody");
        Assert.Equal("unknown_client", (await NextAsync(a, "error")).GetProperty("code").GetString());

        Assert.Equal(HttpStatusCode.NoContent, (await gw.Api.DeleteAsync($"v1/api/rooms/{id}?reason=bye")).StatusCode);
        Assert.Equal("bye", (await NextAsync(b, "room_closed")).GetProperty("reason").GetString());
        var closed = await Assert.ThrowsAsync<RoomClosedException>(async () => await b.Messages.Completion.WaitAsync(TimeSpan.FromSeconds(10)));
        Assert.Equal(CloseCodes.ResourceClosed, closed.CloseCode);
    }

    [Fact]
    public async Task Client_library_reports_a_refused_join_with_its_close_code()
    {
        await using var gw = await TestGateway.StartAsync();
        var (id, _, _) = await RoomTestKit.CreateRoomAsync(gw);
        var refused = await Assert.ThrowsAsync<RoomClosedException>(() => RoomClient.ConnectAsync(gw.BaseUri, id, "wrong"));
        Assert.Equal(CloseCodes.Forbidden, refused.CloseCode);
        var unknown = await Assert.ThrowsAsync<RoomClosedException>(() => RoomClient.ConnectAsync(gw.BaseUri, "nope", "x"));
        Assert.Equal(CloseCodes.NotFound, unknown.CloseCode);
    }
}
