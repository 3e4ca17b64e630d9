using System.Net.Http.Json;
using System.Text.Json;
using Microsoft.Extensions.DependencyInjection;
using Npgsql;
using Switchboard.Server.Nodes;
using Switchboard.Server.Storage;
using Switchboard.Server.Tests.Channels;
using Switchboard.Server.Tests.Infrastructure;
using Switchboard.Storage.Postgres;
using Switchboard.Storage.Postgres.Tests;

namespace Switchboard.Server.Tests.Cluster;

/// <summary>Channels across three real nodes on one PostgreSQL database.</summary>
public sealed class ChannelClusterTests(PostgresFixture fixture) : IClassFixture<PostgresFixture>
{
    private static async Task<TestSocket> SubscribeAsync(TestGateway node, string channel, object? since = null)
    {
        var socket = await node.ConnectChannelsAsync();
        await socket.SendJsonAsync(since is null ? new { type = "subscribe", channel } : new { type = "subscribe", channel, since });
        await socket.ReceiveTypeAsync("subscribed");
        return socket;
    }

    private static async Task ExpectMessagesAsync(TestSocket socket, long from, long to, Func<long, string> data)
    {
        for (var offset = from; offset <= to; offset++)
        {
            var m = await socket.ReceiveTypeAsync("message");
            Assert.Equal(offset, m.GetProperty("offset").GetInt64());
            Assert.Equal(data(offset), m.GetProperty("data").GetString());
        }
    }

    [Fact]
    public async Task Publish_on_one_node_reaches_subscribers_on_all_three_in_order()
    {
        await using var cluster = await TestCluster.StartAsync(fixture, 3);
        var subscribers = new List<TestSocket>();
        foreach (var node in cluster.Nodes)
        {
            subscribers.Add(await SubscribeAsync(node, "cl:one"));
            subscribers.Add(await SubscribeAsync(node, "cl:one"));
        }
        for (var i = 1; i <= 60; i++)
        {
            var (offset, _) = await ChannelRecoveryTests.PublishAsync(cluster[0], "cl:one", "m" + i);
            Assert.Equal(i, offset);
        }
        await Task.WhenAll(subscribers.Select(s => ExpectMessagesAsync(s, 1, 60, o => "m" + o)));

        // The bus instruments are exported, each node its own (the three nodes share this process): the publishing node
        // sent, each other node received and recorded the lag of all 60.
        var sender = await cluster[0].Api.GetStringAsync("metrics");
        Assert.Contains("switchboard_bus_notifications_sent_total{route=\"inline\"}", sender);
        foreach (var node in new[] { cluster[1], cluster[2] })
        {
            var metrics = await node.Api.GetStringAsync("metrics");
            Assert.Contains("switchboard_bus_notifications_received_total{origin=\"peer\"}", metrics);
            var lagCount = metrics.Split('\n').Where(l => l.StartsWith("switchboard_bus_lag_seconds_count", StringComparison.Ordinal))
                .Sum(l => long.Parse(l[(l.LastIndexOf(' ') + 1)..], System.Globalization.CultureInfo.InvariantCulture));
            Assert.True(lagCount >= 60, $"bus lag recorded {lagCount} times on a receiving node"); // 60 messages
        }
    }

    [Fact]
    public async Task Publishers_on_every_node_share_one_order_that_every_subscriber_sees()
    {
        await using var cluster = await TestCluster.StartAsync(fixture, 3);
        var subscribers = new List<TestSocket>();
        foreach (var node in cluster.Nodes)
            subscribers.Add(await SubscribeAsync(node, "cl:mixed"));
        // Concurrent publishers on three nodes: offsets come from the database, so every node dispatches the same order.
        var published = await Task.WhenAll(Enumerable.Range(0, 3).Select(n => Task.Run(async () =>
        {
            var mine = new List<(long Offset, string Data)>();
            for (var i = 0; i < 25; i++)
            {
                var data = $"n{n}-{i}";
                mine.Add(((await ChannelRecoveryTests.PublishAsync(cluster[n], "cl:mixed", data)).Offset, data));
            }
            return mine;
        })));
        var byOffset = published.SelectMany(p => p).ToDictionary(p => p.Offset, p => p.Data);
        Assert.Equal(Enumerable.Range(1, 75).Select(i => (long)i), byOffset.Keys.Order());
        await Task.WhenAll(subscribers.Select(s => ExpectMessagesAsync(s, 1, 75, o => byOffset[o])));
    }

    [Fact]
    public async Task Subscriber_moving_to_another_node_with_since_recovers_exactly_what_it_missed()
    {
        await using var cluster = await TestCluster.StartAsync(fixture, 3);
        string epoch;
        await using (var first = await SubscribeAsync(cluster[0], "cl:move"))
        {
            for (var i = 1; i <= 3; i++)
                epoch = (await ChannelRecoveryTests.PublishAsync(cluster[1], "cl:move", "m" + i)).Epoch;
            await ExpectMessagesAsync(first, 1, 3, o => "m" + o);
        }
        epoch = "";
        for (var i = 4; i <= 8; i++)
            epoch = (await ChannelRecoveryTests.PublishAsync(cluster[1], "cl:move", "m" + i)).Epoch;

        await using var second = await cluster[2].ConnectChannelsAsync();
        await second.SendJsonAsync(new { type = "subscribe", channel = "cl:move", since = new { offset = 3, epoch } });
        var subscribed = await second.ReceiveTypeAsync("subscribed");
        Assert.True(subscribed.GetProperty("recovered").GetBoolean());
        Assert.Equal(8, subscribed.GetProperty("offset").GetInt64());
        await ExpectMessagesAsync(second, 4, 8, o => "m" + o);
        // Then live, from a third node, with nothing duplicated in between.
        await ChannelRecoveryTests.PublishAsync(cluster[0], "cl:move", "m9");
        await ExpectMessagesAsync(second, 9, 9, o => "m" + o);
    }

    [Fact]
    public async Task Node_whose_bus_connection_is_killed_catches_up_its_subscribers()
    {
        await using var cluster = await TestCluster.StartAsync(fixture, 2);
        await using var subscriber = await SubscribeAsync(cluster[1], "cl:deaf");
        await ChannelRecoveryTests.PublishAsync(cluster[0], "cl:deaf", "m1");
        await ExpectMessagesAsync(subscriber, 1, 1, o => "m" + o);

        var bus = cluster[1].Services.GetRequiredService<PostgresBus>();
        await using (var admin = new NpgsqlConnection(cluster.ConnectionString))
        {
            await admin.OpenAsync();
            await using var kill = new NpgsqlCommand("SELECT pg_terminate_backend($1)", admin) { Parameters = { new() { Value = bus.ListenerProcessId } } };
            await kill.ExecuteScalarAsync();
        }
        // Published while node 2 is (probably) deaf, and nothing after: only the catch-up after reconnecting can deliver these.
        for (var i = 2; i <= 6; i++)
            await ChannelRecoveryTests.PublishAsync(cluster[0], "cl:deaf", "m" + i);
        await ExpectMessagesAsync(subscriber, 2, 6, o => "m" + o);
        Assert.Equal(1, bus.Reconnects);
    }

    [Fact]
    public async Task Nodes_endpoint_lists_live_nodes_and_forgets_stale_and_stopped_ones()
    {
        await using var cluster = await TestCluster.StartAsync(fixture, 3);
        // A node that crashed long ago: its heartbeat is stale.
        await using (var connection = new NpgsqlConnection(cluster.ConnectionString))
        {
            await connection.OpenAsync();
            await using var cmd = new NpgsqlCommand("INSERT INTO nodes (id, address, heartbeat_at) VALUES ('crashed', 'http://127.0.0.1:1', now() - interval '1 minute')", connection);
            await cmd.ExecuteNonQueryAsync();
        }
        var list = await cluster[0].Api.GetFromJsonAsync<JsonElement>("api/v1/nodes");
        Assert.Equal("node-1", list.GetProperty("self").GetString());
        var nodes = list.GetProperty("nodes").EnumerateArray().ToList();
        Assert.Equal(["node-1", "node-2", "node-3"], nodes.Select(n => n.GetProperty("id").GetString()));
        for (var i = 0; i < 3; i++)
            Assert.Equal(cluster[i].BaseUri.ToString().TrimEnd('/'), nodes[i].GetProperty("address").GetString());
        Assert.Equal(System.Net.HttpStatusCode.Unauthorized, (await cluster[0].Http.GetAsync("api/v1/nodes")).StatusCode);

        await cluster[2].DisposeAsync();
        cluster.Nodes.RemoveAt(2);
        var after = await cluster[1].Services.GetRequiredService<INodeRegistry>().ListAsync(default);
        Assert.Equal(["node-1", "node-2"], after.Select(n => n.Id));
    }

    [Fact]
    public async Task Each_publish_costs_one_notification_whatever_the_subscribers()
    {
        await using var cluster = await TestCluster.StartAsync(fixture, 3);
        var subscribers = new List<TestSocket>();
        foreach (var node in cluster.Nodes)
            for (var i = 0; i < 5; i++)
                subscribers.Add(await SubscribeAsync(node, "cl:cost"));
        // Count what crosses the database: a LISTEN on the bus channel sees every notification any node sends.
        await using var probe = new NpgsqlConnection(cluster.ConnectionString);
        await probe.OpenAsync();
        var notifications = 0;
        probe.Notification += (_, _) => Interlocked.Increment(ref notifications);
        await using (var listen = new NpgsqlCommand("LISTEN switchboard_bus", probe))
            await listen.ExecuteNonQueryAsync();

        for (var i = 1; i <= 10; i++)
            await ChannelRecoveryTests.PublishAsync(cluster[0], "cl:cost", "m" + i);
        await Task.WhenAll(subscribers.Select(s => ExpectMessagesAsync(s, 1, 10, o => "m" + o)));
        while (await probe.WaitAsync(TimeSpan.FromMilliseconds(300)))
        {
        }
        Assert.Equal(10, notifications);
    }
}
