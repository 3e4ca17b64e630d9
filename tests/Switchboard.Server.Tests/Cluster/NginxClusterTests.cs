using System.Net;
using Switchboard.Server.Tests.Channels;
using Switchboard.Server.Tests.Infrastructure;
using Switchboard.Storage.Postgres.Tests;

namespace Switchboard.Server.Tests.Cluster;

/// <summary>Three nodes behind a real nginx using the shipped <c>deploy/nginx.conf</c>.</summary>
public sealed class NginxClusterTests(PostgresFixture fixture) : IClassFixture<PostgresFixture>
{
    [Fact]
    public async Task Clients_through_nginx_survive_losing_a_node_and_recover_with_since()
    {
        await using var cluster = await TestCluster.StartAsync(fixture, 3);
        await using var nginx = await NginxProcess.StartAsync(cluster.Nodes.Select(n => n.BaseUri.Port));
        // A gateway handle whose URLs point at nginx: tokens and API key are the same on every node.
        var lb = new Uri($"http://127.0.0.1:{nginx.Port}/");
        using var api = new HttpClient { BaseAddress = lb };
        api.DefaultRequestHeaders.Authorization = cluster[0].Api.DefaultRequestHeaders.Authorization;

        var clients = new List<LbClient>();
        for (var i = 0; i < 6; i++)
            clients.Add(await LbClient.ConnectAsync(cluster[0].Token(), lb, "lb:list", null));
        // least_conn spreads six concurrent sockets over the three nodes.
        Assert.All(cluster.Nodes, n => Assert.True(ConnectionCount(n) >= 1, "every node holds at least one client"));

        for (var i = 1; i <= 10; i++)
            await PublishAsync(api, "lb:list", i);
        foreach (var c in clients)
            await c.ExpectAsync(1, 10);

        // Node 2 goes away: its clients are closed (1001) and reconnect through nginx to a surviving node.
        var victim = cluster[1];
        var onVictim = ConnectionCount(victim);
        Assert.True(onVictim >= 1);
        cluster.Nodes.Remove(victim);
        await victim.DisposeAsync();
        for (var i = 11; i <= 20; i++)
            await PublishAsync(api, "lb:list", i);

        var reconnected = 0;
        for (var i = 0; i < clients.Count; i++)
        {
            // Read on until 20; a client whose node went away reconnects through nginx with its position.
            while (true)
            {
                try
                {
                    await clients[i].ExpectAsync((int)clients[i].Offset + 1, 20);
                    break;
                }
                catch (Exception ex) when (ex is InvalidOperationException or System.Net.WebSockets.WebSocketException && clients[i].IsClosed)
                {
                    reconnected++;
                    var old = clients[i];
                    await old.DisposeAsync();
                    clients[i] = await LbClient.ConnectAsync(cluster[0].Token(), lb, "lb:list", old);
                    Assert.True(clients[i].Recovered);
                }
            }
        }
        Assert.Equal(onVictim, reconnected);
        await PublishAsync(api, "lb:list", 21);
        foreach (var c in clients)
        {
            await c.ExpectAsync(21, 21);
            await c.DisposeAsync();
        }
    }

    private static int ConnectionCount(TestGateway node) =>
        ((Switchboard.Server.Connections.ConnectionManager)node.Services.GetService(typeof(Switchboard.Server.Connections.ConnectionManager))!).Count;

    private static async Task PublishAsync(HttpClient api, string channel, int n)
    {
        var response = await System.Net.Http.Json.HttpClientJsonExtensions.PostAsJsonAsync(api, $"api/v1/channels/{channel}/messages", new { data = "m" + n });
        Assert.Equal(HttpStatusCode.OK, response.StatusCode);
    }
}
