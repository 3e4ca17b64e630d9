using System.Globalization;
using System.Security.Cryptography;
using Switchboard.Client.Tunnels;
using Switchboard.Server.Tests.Tunnels;
using Switchboard.Storage.Postgres.Tests;

namespace Switchboard.Server.Tests.Cluster;

/// <summary>
/// Three nodes, a real nginx (the shipped config) and an agent that reaches them through it, so that its data-path
/// requests land on nodes without the agent. Many moving parts in one process, and a stall of several seconds under
/// the parallel suite's load cannot be told from a real one: the test runs alone, after the parallel collections.
/// </summary>
[Collection("Serial")]
public sealed class TunnelDataPathClusterTests(PostgresFixture fixture) : IClassFixture<PostgresFixture>
{
    [Fact]
    public async Task Data_path_requests_that_nginx_sends_to_another_node_are_relayed_to_the_agents_node()
    {
        await using var cluster = await TestCluster.StartAsync(fixture, 3);
        await using var nginx = await NginxProcess.StartAsync(cluster.Nodes.Select(n => n.BaseUri.Port));
        await using var local = await LocalApp.StartAsync();
        var lb = new Uri($"http://127.0.0.1:{nginx.Port}/");
        // The agent reaches the cluster through nginx: its WebSocket holds a connection to one node, so least_conn sends
        // its data-path requests (one upstream connection each) to the other nodes, and nginx answers their
        // Expect: 100-continue itself, so the agent is already sending the body when a node sees the request.
        await using var agent = new TunnelAgent(new TunnelAgentOptions
        {
            Server = lb,
            LocalTarget = local.Uri,
            Token = cluster[0].Token("agent", tunnels: ["*"]),
            Subdomain = "xn-data",
        });
        var (ack, _) = await agent.StartAsync(CancellationToken.None);
        Assert.True(ack.OffersDataPath);
        using var client = new HttpClient { BaseAddress = lb, Timeout = TimeSpan.FromSeconds(30) };
        const long size = 3L * 1024 * 1024;
        var expected = Convert.ToHexStringLower(SHA256.HashData(LocalApp.Pattern(size)));
        for (var i = 0; i < 4; i++)
        {
            byte[] body;
            try
            {
                body = await client.GetByteArrayAsync($"t/{ack.Name}/download?size={size}");
            }
            catch (Exception ex) when (ex is HttpRequestException or TaskCanceledException)
            {
                // What each node saw of the data path and the relays, for a failure that only shows under load.
                var seen = new List<string>();
                foreach (var node in cluster.Nodes)
                    seen.AddRange((await node.Api.GetStringAsync("metrics")).Split('\n').Where(l => l.StartsWith("switchboard_tunnels_", StringComparison.Ordinal)).Select(l => node.BaseUri.Port + " " + l));
                throw new InvalidOperationException($"download {i + 1} failed ({ex.Message}); agent: {agent.DataPathBodies} bodies, {agent.DataPathRefusals} refusals; nodes:\n{string.Join('\n', seen)}\nnginx:\n{nginx.ErrorLogTail()}", ex);
            }
            Assert.Equal(expected, Convert.ToHexStringLower(SHA256.HashData(body)));
        }
        // The agent and the nodes count a body when its data request ends, which may trail the last byte the client read.
        long relayed = 0, delivered = 0;
        var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(10);
        while (true)
        {
            relayed = delivered = 0;
            foreach (var node in cluster.Nodes)
            {
                var metrics = await node.Api.GetStringAsync("metrics");
                relayed += Counter(metrics, "switchboard_tunnels_data_path_total{result=\"relayed\"}");
                delivered += Counter(metrics, "switchboard_tunnels_data_path_total{result=\"delivered\"}");
            }
            if ((agent.DataPathBodies == 4 && delivered == 4) || DateTime.UtcNow > deadline)
                break;
            await Task.Delay(50);
        }
        Assert.Equal(4, agent.DataPathBodies);
        Assert.Equal(0, agent.DataPathRefusals);
        Assert.Equal(4, delivered);
        Assert.True(relayed >= 1, "no data-path request was relayed: nginx sent them all to the agent's node");
    }

    private static long Counter(string metrics, string series) => metrics.Split('\n')
        .Where(l => l.StartsWith(series + " ", StringComparison.Ordinal))
        .Sum(l => long.Parse(l[(l.LastIndexOf(' ') + 1)..], CultureInfo.InvariantCulture));
}
