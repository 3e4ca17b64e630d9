using System.Net;
using System.Net.Http.Json;
using System.Text.Json;
using Microsoft.Extensions.DependencyInjection;
using Switchboard.Protocol;
using Switchboard.Server.Nodes;
using Switchboard.Server.Tests.Infrastructure;
using Switchboard.Server.Tests.Rooms;
using Switchboard.Storage.Postgres;
using Switchboard.Storage.Postgres.Tests;

namespace Switchboard.Server.Tests.Cluster;

/// <summary>One room whose members are connected to three real nodes on one PostgreSQL database.</summary>
public sealed class RoomClusterTests(PostgresFixture fixture) : IClassFixture<PostgresFixture>
{
    /// <summary>Joins one member on each node in turn (a on node 1, b on node 2, c on node 3) and consumes the join events.</summary>
    private static async Task<(string Id, string Secret, TestMember A, TestMember B, TestMember C)> RoomOnThreeNodesAsync(TestCluster cluster, string protocol)
    {
        var (id, secret, _) = await RoomTestKit.CreateRoomAsync(cluster[0], protocol);
        var a = await RoomTestKit.JoinAsync(cluster[0], id, secret);
        var b = await RoomTestKit.JoinAsync(cluster[1], id, secret);
        var c = await RoomTestKit.JoinAsync(cluster[2], id, secret);
        Assert.True(a.Host);
        Assert.False(b.Host);
        Assert.False(c.Host);
        // A member joining on another node is told who is already there, with the host, in join order.
        Assert.Equal([a.ClientId, b.ClientId], b.Connected.GetProperty("members").EnumerateArray().Select(m => m.Str("clientId")));
        Assert.Equal([a.ClientId, b.ClientId, c.ClientId], c.Connected.GetProperty("members").EnumerateArray().Select(m => m.Str("clientId")));
        Assert.Equal([true, false, false], c.Connected.GetProperty("members").EnumerateArray().Select(m => m.GetProperty("host").GetBoolean()));

        // ... and the members on the other nodes see it join.
        var joinedAtA = new[] { await a.NextAsync("client_joined"), await a.NextAsync("client_joined") };
        Assert.Equal(new[] { b.ClientId, c.ClientId }.Order(), joinedAtA.Select(j => j.Str("clientId")).Order());
        Assert.All(joinedAtA, j => Assert.False(j.GetProperty("host").GetBoolean()));
        Assert.Equal(c.ClientId, (await b.NextAsync("client_joined")).Str("clientId"));
        return (id, secret, a, b, c);
    }

    [Fact]
    public async Task Relays_reach_members_on_other_nodes_broadcast_direct_and_to_the_host()
    {
        await using var cluster = await TestCluster.StartAsync(fixture, 3);
        var (id, _, a, b, c) = await RoomOnThreeNodesAsync(cluster, "open");

        await a.RelayAsync("broadcast", new { move = "e4" });
        foreach (var r in new[] { b, c })
        {
            var m = await r.NextAsync();
            Assert.Equal("relay", m.Type());
            Assert.Equal(a.ClientId, m.Str("from"));
            Assert.Equal("broadcast", m.Str("to"));
            Assert.Equal("e4", m.GetProperty("data").Str("move"));
        }

        await c.RelayAsync(b.ClientId, new { secret = 42 });
        var direct = await b.NextAsync();
        Assert.Equal("relay", direct.Type());
        Assert.Equal(c.ClientId, direct.Str("from"));
        Assert.Equal("direct", direct.Str("to"));
        Assert.Equal(42, direct.GetProperty("data").GetProperty("secret").GetInt32());

        await b.RelayAsync("host", new[] { 1, 2, 3 });
        var toHost = await a.NextAsync();
        Assert.Equal("relay", toHost.Type());
        Assert.Equal(b.ClientId, toHost.Str("from"));
        Assert.Equal("host", toHost.Str("to"));

        // A direct relay reaches only its recipient: the others' next message is a probe sent after it.
        await a.AssertQuietAsync(b);
        await c.AssertQuietAsync(b);

        // Every node reports the whole room.
        foreach (var node in cluster.Nodes)
        {
            var info = await node.Api.GetFromJsonAsync<JsonElement>($"v1/api/rooms/{id}");
            Assert.Equal(3, info.GetProperty("memberCount").GetInt32());
            Assert.Equal(a.ClientId, info.Str("hostId"));
        }
    }

    [Fact]
    public async Task Host_protocol_rules_hold_across_nodes()
    {
        await using var cluster = await TestCluster.StartAsync(fixture, 3);
        var (_, _, a, b, c) = await RoomOnThreeNodesAsync(cluster, "host");
        // A member may not broadcast in a 'host' room, whichever node it is on.
        await c.RelayAsync("broadcast", new { x = 1 });
        Assert.Equal("forbidden", (await c.NextAsync("error")).Str("code"));
        // The host (node 1) broadcasts to nodes 2 and 3.
        await a.RelayAsync("broadcast", new { turn = 1 });
        Assert.Equal(1, (await b.NextAsync("relay")).GetProperty("data").GetProperty("turn").GetInt32());
        Assert.Equal(1, (await c.NextAsync("relay")).GetProperty("data").GetProperty("turn").GetInt32());
    }

    [Fact]
    public async Task Leaving_on_one_node_is_seen_on_the_others_and_the_host_migrates_to_the_oldest_member()
    {
        await using var cluster = await TestCluster.StartAsync(fixture, 3);
        var (id, _, a, b, c) = await RoomOnThreeNodesAsync(cluster, "host");

        await c.Socket.DisposeAsync();
        foreach (var r in new[] { a, b })
        {
            var left = await r.NextAsync("client_left");
            Assert.Equal(c.ClientId, left.Str("clientId"));
            Assert.Equal("left", left.Str("reason"));
        }

        // The host's connection (node 1) closes: node 2's member is the oldest left and becomes host everywhere.
        await a.Socket.DisposeAsync();
        var hostLeft = await b.NextAsync("client_left");
        Assert.Equal(a.ClientId, hostLeft.Str("clientId"));
        var assigned = await b.NextAsync("host_assigned");
        Assert.Equal(b.ClientId, assigned.Str("clientId"));
        Assert.Equal(a.ClientId, assigned.Str("previous"));
        Assert.Equal("host_left", assigned.Str("reason"));

        // Every node agrees on the one member left and its host (each applies the leave when its bus delivers it).
        foreach (var node in cluster.Nodes)
        {
            JsonElement info;
            var waited = System.Diagnostics.Stopwatch.StartNew();
            do
            {
                info = await node.Api.GetFromJsonAsync<JsonElement>($"v1/api/rooms/{id}");
                if (info.GetProperty("memberCount").GetInt32() == 1 || waited.Elapsed > TimeSpan.FromSeconds(5))
                    break;
                await Task.Delay(20);
            }
            while (true);
            Assert.Equal(1, info.GetProperty("memberCount").GetInt32());
            Assert.Equal(b.ClientId, info.Str("hostId"));
        }
    }

    [Fact]
    public async Task Host_kicks_and_grants_across_nodes()
    {
        await using var cluster = await TestCluster.StartAsync(fixture, 3);
        var (_, _, a, b, c) = await RoomOnThreeNodesAsync(cluster, "host");

        await a.Socket.SendJsonAsync(new { type = "kick", clientId = c.ClientId });
        Assert.Equal(CloseCodes.Kicked, await c.Socket.WaitForCloseAsync());
        var kicked = await b.NextAsync("client_left");
        Assert.Equal(c.ClientId, kicked.Str("clientId"));
        Assert.Equal("kicked", kicked.Str("reason"));
        Assert.Equal(c.ClientId, (await a.NextAsync("client_left")).Str("clientId"));

        await a.Socket.SendJsonAsync(new { type = "grant_host", clientId = b.ClientId });
        foreach (var r in new[] { a, b })
        {
            var assigned = await r.NextAsync("host_assigned");
            Assert.Equal(b.ClientId, assigned.Str("clientId"));
            Assert.Equal("granted", assigned.Str("reason"));
        }
        // Node 2 now lets its member act as host: it broadcasts to node 1.
        await b.RelayAsync("broadcast", new { now = "mine" });
        Assert.Equal("mine", (await a.NextAsync("relay")).GetProperty("data").Str("now"));
    }

    [Fact]
    public async Task Deleting_a_room_on_one_node_closes_its_members_on_every_node_with_4410()
    {
        await using var cluster = await TestCluster.StartAsync(fixture, 3);
        var (id, secret, a, b, c) = await RoomOnThreeNodesAsync(cluster, "open");

        var response = await cluster[1].Api.DeleteAsync($"v1/api/rooms/{id}?reason=game%20over");
        Assert.Equal(HttpStatusCode.NoContent, response.StatusCode);
        foreach (var m in new[] { a, b, c })
        {
            var closed = await m.NextAsync("room_closed");
            Assert.Equal("game over", closed.Str("reason"));
            Assert.Equal(CloseCodes.ResourceClosed, await m.Socket.WaitForCloseAsync());
        }
        foreach (var node in cluster.Nodes)
        {
            var again = await RoomTestKit.SendConnectAsync(node, id, secret);
            Assert.Equal(CloseCodes.NotFound, await again.WaitForCloseAsync());
        }
    }

    [Fact]
    public async Task A_member_reconnects_on_another_node_and_keeps_its_identity()
    {
        await using var cluster = await TestCluster.StartAsync(fixture, 3);
        var (id, _, a, b, c) = await RoomOnThreeNodesAsync(cluster, "open");

        // c's connection to node 3 ends; it comes back through node 2 within the grace period.
        await c.Socket.DisposeAsync();
        Assert.Equal(c.ClientId, (await a.NextAsync("client_left")).Str("clientId"));
        Assert.Equal(c.ClientId, (await b.NextAsync("client_left")).Str("clientId"));
        var socket = await cluster[1].ConnectAsync("v1/websocket");
        await socket.SendJsonAsync(new { type = "reconnect", room = id, clientId = c.ClientId, clientSecret = c.ClientSecret });
        var back = await RoomTestKit.ReadConnectedAsync(socket);
        Assert.Equal(c.ClientId, back.ClientId);
        Assert.True(back.Connected.GetProperty("reconnected").GetBoolean());
        var rejoined = await a.NextAsync("client_joined");
        Assert.Equal(c.ClientId, rejoined.Str("clientId"));
        Assert.True(rejoined.GetProperty("reconnected").GetBoolean());

        await a.RelayAsync(c.ClientId, new { hello = "again" });
        Assert.Equal("again", (await back.NextAsync("relay")).GetProperty("data").Str("hello"));
    }

    [Fact]
    public async Task Members_of_a_node_that_dies_are_removed_and_the_host_moves_on()
    {
        var cs = await fixture.CreateSchemaAsync();
        var nodes = await Task.WhenAll(Enumerable.Range(1, 3).Select(i => TestGateway.StartAsync(o => o.NodeId = "node-" + i, services: s =>
        {
            s.AddSwitchboardPostgres(cs);
            s.Configure<NodeOptions>(o => o.HeartbeatInterval = TimeSpan.FromMilliseconds(200));
        })));
        var cluster = new[] { nodes[0], nodes[1], nodes[2] };
        try
        {
            var (id, secret, _) = await RoomTestKit.CreateRoomAsync(cluster[0], "host");
            var a = await RoomTestKit.JoinAsync(cluster[0], id, secret);
            var b = await RoomTestKit.JoinAsync(cluster[1], id, secret);
            var c = await RoomTestKit.JoinAsync(cluster[2], id, secret);
            await a.NextAsync("client_joined");
            await a.NextAsync("client_joined");
            await b.NextAsync("client_joined");

            // Node 3 goes silent (no bus, no registry entry) without closing its connections: as if it had died.
            await DieAsync(cluster[2]);
            foreach (var r in new[] { a, b })
            {
                var left = await r.NextAsync("client_left");
                Assert.Equal(c.ClientId, left.Str("clientId"));
                Assert.Equal("node lost", left.Str("reason"));
            }

            // The host's node dies: the oldest remaining member becomes host.
            await DieAsync(cluster[0]);
            var hostLeft = await b.NextAsync("client_left");
            Assert.Equal(a.ClientId, hostLeft.Str("clientId"));
            var assigned = await b.NextAsync("host_assigned");
            Assert.Equal(b.ClientId, assigned.Str("clientId"));
            Assert.Equal("host_left", assigned.Str("reason"));
        }
        finally
        {
            await Task.WhenAll(nodes.Select(n => n.DisposeAsync().AsTask()));
        }
    }

    [Fact]
    public async Task A_node_that_was_deaf_to_the_bus_reconciles_its_members_when_it_listens_again()
    {
        var cs = await fixture.CreateSchemaAsync();
        // Node 2 waits 1.5 s before re-listening, so what happens meanwhile is certainly missed.
        var nodes = await Task.WhenAll(Enumerable.Range(1, 2).Select(i => TestGateway.StartAsync(o => o.NodeId = "node-" + i, services: s =>
        {
            s.AddSwitchboardPostgres(cs);
            s.Configure<PostgresBusOptions>(o => o.ReconnectMinDelay = TimeSpan.FromMilliseconds(1500));
        })));
        try
        {
            var (id, secret, _) = await RoomTestKit.CreateRoomAsync(nodes[0], "open");
            var a = await RoomTestKit.JoinAsync(nodes[0], id, secret);
            var b = await RoomTestKit.JoinAsync(nodes[1], id, secret);
            await a.NextAsync("client_joined");

            var bus = nodes[1].Services.GetRequiredService<PostgresBus>();
            await using (var admin = new Npgsql.NpgsqlConnection(cs))
            {
                await admin.OpenAsync();
                await using var kill = new Npgsql.NpgsqlCommand("SELECT pg_terminate_backend($1)", admin) { Parameters = { new() { Value = bus.ListenerProcessId } } };
                await kill.ExecuteScalarAsync();
            }
            // While node 2 is deaf: the host leaves and a newcomer joins on node 1.
            await a.Socket.DisposeAsync();
            var c = await RoomTestKit.JoinAsync(nodes[0], id, secret);

            // Node 2 listens again, asks node 1 for its members and tells its member what it missed.
            var left = await b.NextAsync("client_left");
            Assert.Equal(a.ClientId, left.Str("clientId"));
            Assert.Equal("connection lost", left.Str("reason"));
            var assigned = await b.NextAsync("host_assigned");
            Assert.Equal(b.ClientId, assigned.Str("clientId"));
            var joined = await b.NextAsync("client_joined");
            Assert.Equal(c.ClientId, joined.Str("clientId"));
            Assert.Equal(1, bus.Reconnects);

            // Both nodes agree again: relays flow both ways.
            await c.RelayAsync(b.ClientId, new { hi = 1 });
            Assert.Equal(c.ClientId, (await b.NextAsync("relay")).Str("from"));
            await b.RelayAsync(c.ClientId, new { hi = 2 });
            Assert.Equal(b.ClientId, (await c.NextAsync("relay")).Str("from"));
        }
        finally
        {
            await Task.WhenAll(nodes.Select(n => n.DisposeAsync().AsTask()));
        }
    }

    private static async Task DieAsync(TestGateway node)
    {
        await node.Services.GetRequiredService<PostgresBus>().StopAsync(CancellationToken.None);
        await node.Services.GetRequiredService<PostgresNodeRegistry>().StopAsync(CancellationToken.None);
    }
}
