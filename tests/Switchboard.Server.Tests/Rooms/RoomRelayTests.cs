using System.Net;
using System.Net.Http.Json;
using System.Text.Json;
using Switchboard.Protocol;
using Switchboard.Server.Tests.Infrastructure;

namespace Switchboard.Server.Tests.Rooms;

public sealed class RoomRelayTests
{
    [Fact]
    public async Task Connect_with_the_right_secret_gives_identity_host_and_members()
    {
        await using var gw = await TestGateway.StartAsync();
        var (id, secret, _) = await RoomTestKit.CreateRoomAsync(gw);
        var a = await RoomTestKit.JoinAsync(gw, id, secret);
        Assert.True(a.Host);
        Assert.Equal(id, a.Connected.Str("room"));
        Assert.False(a.Connected.GetProperty("reconnected").GetBoolean());
        Assert.True(a.ClientSecret.Length >= 32);
        Assert.Single(a.Connected.GetProperty("members").EnumerateArray());

        var b = await RoomTestKit.JoinAsync(gw, id, secret);
        Assert.False(b.Host);
        Assert.NotEqual(a.ClientId, b.ClientId);
        var members = b.Connected.GetProperty("members").EnumerateArray().ToList();
        Assert.Equal([a.ClientId, b.ClientId], members.Select(m => m.Str("clientId")));
        Assert.Equal([true, false], members.Select(m => m.GetProperty("host").GetBoolean()));

        var joined = await a.NextAsync();
        Assert.Equal("client_joined", joined.Type());
        Assert.Equal(b.ClientId, joined.Str("clientId"));
        Assert.False(joined.GetProperty("host").GetBoolean());
    }

    [Fact]
    public async Task Wrong_secret_unknown_room_and_full_room_are_refused_with_their_codes()
    {
        await using var gw = await TestGateway.StartAsync();
        var (id, secret, _) = await RoomTestKit.CreateRoomAsync(gw, maxClients: 1);

        var wrong = await RoomTestKit.SendConnectAsync(gw, id, "not-the-secret");
        Assert.Equal(CloseCodes.Forbidden, await wrong.WaitForCloseAsync());
        Assert.Equal("wrong room secret", wrong.Socket.CloseStatusDescription);

        var unknown = await RoomTestKit.SendConnectAsync(gw, "doesnotexist", secret);
        Assert.Equal(CloseCodes.NotFound, await unknown.WaitForCloseAsync());

        var a = await RoomTestKit.JoinAsync(gw, id, secret);
        var full = await RoomTestKit.SendConnectAsync(gw, id, secret);
        Assert.Equal(CloseCodes.TooManyRequests, await full.WaitForCloseAsync());
        Assert.Contains("full", full.Socket.CloseStatusDescription, StringComparison.Ordinal);
        // The refused clients never joined.
        var info = await gw.Api.GetFromJsonAsync<JsonElement>($"v1/api/rooms/{id}");
        Assert.Equal(1, info.GetProperty("memberCount").GetInt32());
    }

    [Fact]
    public async Task Host_protocol_relays_broadcast_host_and_direct_and_forbids_member_broadcast()
    {
        await using var gw = await TestGateway.StartAsync();
        var (id, secret, _) = await RoomTestKit.CreateRoomAsync(gw, "host");
        var a = await RoomTestKit.JoinAsync(gw, id, secret);
        var b = await RoomTestKit.JoinAsync(gw, id, secret);
        var c = await RoomTestKit.JoinAsync(gw, id, secret);
        await a.NextAsync("client_joined");
        await a.NextAsync("client_joined");
        await b.NextAsync("client_joined");

        await a.RelayAsync("broadcast", new { move = "e4" });
        foreach (var r in new[] { b, c })
        {
            var m = await r.NextAsync();
            Assert.Equal("relay", m.Type());
            Assert.Equal(a.ClientId, m.Str("from"));
            Assert.Equal("broadcast", m.Str("to"));
            Assert.Equal("e4", m.GetProperty("data").Str("move"));
        }

        await b.RelayAsync("host", new[] { 1, 2, 3 });
        var toHost = await a.NextAsync();
        Assert.Equal(b.ClientId, toHost.Str("from"));
        Assert.Equal("host", toHost.Str("to"));
        Assert.Equal(3, toHost.GetProperty("data").GetArrayLength());

        await a.RelayAsync(c.ClientId, "just for you");
        var direct = await c.NextAsync();
        Assert.Equal("direct", direct.Str("to"));
        Assert.Equal("just for you", direct.GetProperty("data").GetString());

        // A member may not broadcast or message another member in a host room; the connection stays open.
        await b.RelayAsync("broadcast", "hello all");
        var e1 = await b.NextAsync();
        Assert.Equal(("error", "forbidden"), (e1.Type(), e1.Str("code")));
        await b.RelayAsync(c.ClientId, "psst");
        Assert.Equal("forbidden", (await b.NextAsync()).Str("code"));
        await b.RelayAsync("nobody", 1);
        Assert.Equal("unknown_client", (await b.NextAsync()).Str("code"));
        await a.RelayAsync("host", 1);
        Assert.Equal("bad_target", (await a.NextAsync()).Str("code"));
        await c.AssertQuietAsync(a);

        await b.RelayAsync("host", "still here");
        Assert.Equal("still here", (await a.NextAsync()).GetProperty("data").GetString());
    }

    [Fact]
    public async Task Open_protocol_lets_every_member_broadcast_and_message_anyone()
    {
        await using var gw = await TestGateway.StartAsync();
        var (id, secret, _) = await RoomTestKit.CreateRoomAsync(gw, "open");
        var a = await RoomTestKit.JoinAsync(gw, id, secret);
        var b = await RoomTestKit.JoinAsync(gw, id, secret);
        var c = await RoomTestKit.JoinAsync(gw, id, secret);
        await a.NextAsync("client_joined");
        await a.NextAsync("client_joined");
        await b.NextAsync("client_joined");

        await b.RelayAsync("broadcast", new { chat = "hi" });
        foreach (var r in new[] { a, c })
        {
            var m = await r.NextAsync();
            Assert.Equal(b.ClientId, m.Str("from"));
            Assert.Equal("hi", m.GetProperty("data").Str("chat"));
        }
        await b.AssertQuietAsync(a); // not echoed to the sender

        await c.RelayAsync(b.ClientId, 42);
        var d = await b.NextAsync();
        Assert.Equal((c.ClientId, 42), (d.Str("from"), d.GetProperty("data").GetInt32()));
        await a.AssertQuietAsync(c);

        // Moderation stays with the host.
        await b.Socket.SendJsonAsync(new { type = "kick", clientId = c.ClientId });
        Assert.Equal("not_host", (await b.NextAsync()).Str("code"));
    }

    [Fact]
    public async Task Host_kicks_a_member_with_4411_and_the_member_cannot_rejoin_by_identity()
    {
        await using var gw = await TestGateway.StartAsync();
        var (id, secret, _) = await RoomTestKit.CreateRoomAsync(gw);
        var a = await RoomTestKit.JoinAsync(gw, id, secret);
        var b = await RoomTestKit.JoinAsync(gw, id, secret);
        var c = await RoomTestKit.JoinAsync(gw, id, secret);
        await a.NextAsync("client_joined");
        await a.NextAsync("client_joined");
        await b.NextAsync("client_joined");

        await b.Socket.SendJsonAsync(new { type = "kick", clientId = c.ClientId });
        Assert.Equal("not_host", (await b.NextAsync()).Str("code"));

        await a.Socket.SendJsonAsync(new { type = "kick", clientId = b.ClientId });
        Assert.Equal(CloseCodes.Kicked, await b.Socket.WaitForCloseAsync());
        foreach (var r in new[] { a, c })
        {
            var left = await r.NextAsync("client_left");
            Assert.Equal((b.ClientId, "kicked"), (left.Str("clientId"), left.Str("reason")));
        }

        var again = await gw.ConnectAsync("v1/websocket");
        await again.SendJsonAsync(new { type = "reconnect", room = id, clientId = b.ClientId, clientSecret = b.ClientSecret });
        var err = await again.ReceiveJsonAsync();
        Assert.Equal(("error", "reconnect_expired"), (err.Type(), err.Str("code")));
    }

    [Fact]
    public async Task Grant_host_moves_the_host_role_and_its_rights()
    {
        await using var gw = await TestGateway.StartAsync();
        var (id, secret, _) = await RoomTestKit.CreateRoomAsync(gw);
        var a = await RoomTestKit.JoinAsync(gw, id, secret);
        var b = await RoomTestKit.JoinAsync(gw, id, secret);
        await a.NextAsync("client_joined");

        await b.Socket.SendJsonAsync(new { type = "grant_host", clientId = b.ClientId });
        Assert.Equal("not_host", (await b.NextAsync()).Str("code"));

        await a.Socket.SendJsonAsync(new { type = "grant_host", clientId = b.ClientId });
        foreach (var r in new[] { a, b })
        {
            var h = await r.NextAsync("host_assigned");
            Assert.Equal(b.ClientId, h.Str("clientId"));
            Assert.Equal(a.ClientId, h.Str("previous"));
            Assert.Equal("granted", h.Str("reason"));
        }
        await a.RelayAsync("broadcast", "no longer allowed");
        Assert.Equal("forbidden", (await a.NextAsync()).Str("code"));
        await b.RelayAsync("broadcast", "now allowed");
        Assert.Equal("now allowed", (await a.NextAsync()).GetProperty("data").GetString());

        var info = await gw.Api.GetFromJsonAsync<JsonElement>($"v1/api/rooms/{id}");
        Assert.Equal(b.ClientId, info.Str("hostId"));
    }

    [Fact]
    public async Task Host_leaving_migrates_the_host_to_the_oldest_member()
    {
        await using var gw = await TestGateway.StartAsync();
        var (id, secret, _) = await RoomTestKit.CreateRoomAsync(gw);
        var a = await RoomTestKit.JoinAsync(gw, id, secret);
        var b = await RoomTestKit.JoinAsync(gw, id, secret);
        var c = await RoomTestKit.JoinAsync(gw, id, secret);
        await b.NextAsync("client_joined");

        a.Socket.Socket.Abort(); // the host vanishes without a close frame
        foreach (var r in new[] { b, c })
        {
            var left = await r.NextAsync();
            Assert.Equal(("client_left", a.ClientId), (left.Type(), left.Str("clientId")));
            var host = await r.NextAsync();
            Assert.Equal(("host_assigned", b.ClientId), (host.Type(), host.Str("clientId")));
            Assert.Equal("host_left", host.Str("reason"));
        }
        await b.RelayAsync("broadcast", "new boss");
        Assert.Equal(b.ClientId, (await c.NextAsync()).Str("from"));

        // The next one to leave cleanly: the last member becomes host.
        await b.Socket.DisposeAsync();
        var left2 = await c.NextAsync();
        Assert.Equal(("client_left", "left"), (left2.Type(), left2.Str("reason")));
        Assert.Equal(c.ClientId, (await c.NextAsync("host_assigned")).Str("clientId"));
    }

    [Fact]
    public async Task Reconnect_with_the_client_secret_restores_the_identity_and_a_wrong_one_is_refused()
    {
        await using var gw = await TestGateway.StartAsync();
        var (id, secret, _) = await RoomTestKit.CreateRoomAsync(gw, "open");
        var a = await RoomTestKit.JoinAsync(gw, id, secret);
        var b = await RoomTestKit.JoinAsync(gw, id, secret);
        await a.NextAsync("client_joined");

        b.Socket.Socket.Abort();
        var left = await a.NextAsync("client_left");
        Assert.Equal((b.ClientId, "connection lost"), (left.Str("clientId"), left.Str("reason")));

        var impostor = await gw.ConnectAsync("v1/websocket");
        await impostor.SendJsonAsync(new { type = "reconnect", room = id, clientId = b.ClientId, clientSecret = a.ClientSecret });
        Assert.Equal(CloseCodes.Forbidden, await impostor.WaitForCloseAsync());
        Assert.Equal("wrong client secret", impostor.Socket.CloseStatusDescription);

        var socket = await gw.ConnectAsync("v1/websocket");
        await socket.SendJsonAsync(new { type = "reconnect", room = id, clientId = b.ClientId, clientSecret = b.ClientSecret });
        var back = await RoomTestKit.ReadConnectedAsync(socket);
        Assert.Equal(b.ClientId, back.ClientId);
        Assert.True(back.Connected.GetProperty("reconnected").GetBoolean());
        var joined = await a.NextAsync("client_joined");
        Assert.Equal(b.ClientId, joined.Str("clientId"));
        Assert.True(joined.GetProperty("reconnected").GetBoolean());

        await a.RelayAsync(b.ClientId, "welcome back");
        Assert.Equal("welcome back", (await back.NextAsync()).GetProperty("data").GetString());

        // Replacing a live connection (half-open on the client's side) keeps membership without leave/join events.
        var replacement = await gw.ConnectAsync("v1/websocket");
        await replacement.SendJsonAsync(new { type = "reconnect", room = id, clientId = b.ClientId, clientSecret = back.ClientSecret });
        var again = await RoomTestKit.ReadConnectedAsync(replacement);
        Assert.Equal(b.ClientId, again.ClientId);
        Assert.Equal(CloseCodes.Normal, await back.Socket.WaitForCloseAsync());
        await a.RelayAsync(b.ClientId, "to the new connection");
        Assert.Equal("to the new connection", (await again.NextAsync()).GetProperty("data").GetString());
        await a.AssertQuietAsync(again); // no client_left / client_joined for the swap
    }

    [Fact]
    public async Task Reconnect_after_the_grace_period_is_refused_but_connect_still_works()
    {
        await using var gw = await TestGateway.StartAsync(o => o.Rooms.ReconnectGracePeriod = TimeSpan.FromMilliseconds(200));
        var (id, secret, _) = await RoomTestKit.CreateRoomAsync(gw);
        var a = await RoomTestKit.JoinAsync(gw, id, secret);
        var b = await RoomTestKit.JoinAsync(gw, id, secret);
        await a.NextAsync("client_joined");
        b.Socket.Socket.Abort();
        await a.NextAsync("client_left");
        await Task.Delay(400);

        var socket = await gw.ConnectAsync("v1/websocket");
        await socket.SendJsonAsync(new { type = "reconnect", room = id, clientId = b.ClientId, clientSecret = b.ClientSecret });
        Assert.Equal("reconnect_expired", (await socket.ReceiveJsonAsync()).Str("code"));
        await socket.SendJsonAsync(new { type = "connect", room = id, secret });
        var fresh = await RoomTestKit.ReadConnectedAsync(socket);
        Assert.NotEqual(b.ClientId, fresh.ClientId);
    }

    [Fact]
    public async Task Deleting_a_room_closes_every_member_with_4410_and_a_reason()
    {
        await using var gw = await TestGateway.StartAsync();
        var (id, secret, _) = await RoomTestKit.CreateRoomAsync(gw);
        var a = await RoomTestKit.JoinAsync(gw, id, secret);
        var b = await RoomTestKit.JoinAsync(gw, id, secret);
        await a.NextAsync("client_joined");

        Assert.Equal(HttpStatusCode.NoContent, (await gw.Api.DeleteAsync($"v1/api/rooms/{id}?reason=game%20over")).StatusCode);
        foreach (var r in new[] { a, b })
        {
            var closed = await r.NextAsync();
            Assert.Equal(("room_closed", "game over", id), (closed.Type(), closed.Str("reason"), closed.Str("room")));
            Assert.Equal(CloseCodes.ResourceClosed, await r.Socket.WaitForCloseAsync());
            Assert.Equal("game over", r.Socket.Socket.CloseStatusDescription);
        }
        var late = await RoomTestKit.SendConnectAsync(gw, id, secret);
        Assert.Equal(CloseCodes.NotFound, await late.WaitForCloseAsync());
        var summary = await gw.Api.GetFromJsonAsync<JsonElement>("v1/api/summary");
        Assert.Equal((0, 0), (summary.GetProperty("rooms").GetInt32(), summary.GetProperty("clients").GetInt32()));
    }

    [Fact]
    public async Task Malformed_messages_and_messages_before_connect_close_with_1008()
    {
        await using var gw = await TestGateway.StartAsync();
        var (id, secret, _) = await RoomTestKit.CreateRoomAsync(gw);

        var early = await gw.ConnectAsync("v1/websocket");
        await early.SendJsonAsync(new { type = "relay", to = "broadcast", data = 1 });
        Assert.Equal(CloseCodes.PolicyViolation, await early.WaitForCloseAsync());

        var garbage = await gw.ConnectAsync("v1/websocket");
        await garbage.SendTextAsync("{\"type\":\"connect\",");
        Assert.Equal(CloseCodes.PolicyViolation, await garbage.WaitForCloseAsync());

        var a = await RoomTestKit.JoinAsync(gw, id, secret);
        await a.Socket.SendJsonAsync(new { type = "relay", to = "broadcast" });
        Assert.Equal(CloseCodes.PolicyViolation, await a.Socket.WaitForCloseAsync());

        var unknownType = await RoomTestKit.JoinAsync(gw, id, secret);
        await unknownType.Socket.SendJsonAsync(new { type = "teleport" });
        Assert.Equal(CloseCodes.PolicyViolation, await unknownType.Socket.WaitForCloseAsync());
    }

    [Fact]
    public async Task A_token_must_grant_the_room_when_one_is_given()
    {
        await using var gw = await TestGateway.StartAsync();
        var (id, secret, _) = await RoomTestKit.CreateRoomAsync(gw);

        var noGrant = await RoomTestKit.SendConnectAsync(gw, id, secret, gw.Token(rooms: ["other-*"]));
        Assert.Equal(CloseCodes.Forbidden, await noGrant.WaitForCloseAsync());
        Assert.Contains("token", noGrant.Socket.CloseStatusDescription, StringComparison.Ordinal);

        var bad = await RoomTestKit.SendConnectAsync(gw, id, secret, "not.a.jwt");
        Assert.Equal(CloseCodes.Unauthorized, await bad.WaitForCloseAsync());

        var granted = await RoomTestKit.JoinAsync(gw, id, secret, gw.Token(rooms: [id]));
        Assert.True(granted.Host);

        // A token does not replace the secret.
        var noSecret = await RoomTestKit.SendConnectAsync(gw, id, "wrong", gw.Token(rooms: ["*"]));
        Assert.Equal(CloseCodes.Forbidden, await noSecret.WaitForCloseAsync());
    }
}
