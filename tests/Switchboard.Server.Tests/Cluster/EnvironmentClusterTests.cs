using System.Globalization;
using System.Net;
using System.Net.Http.Json;
using System.Net.WebSockets;
using System.Text;
using System.Text.Json;
using Microsoft.Extensions.DependencyInjection;
using Switchboard.Server.Environments;
using Switchboard.Server.Tests.Environments;
using Switchboard.Server.Tests.Infrastructure;
using Switchboard.Storage.Postgres.Tests;

namespace Switchboard.Server.Tests.Cluster;

/// <summary>
/// Environments across three real nodes on one PostgreSQL database (and a real nginx with the shipped config): the
/// process runs on the node that created it; REST calls and the logs, terminal and status sockets entering at any
/// other node are relayed to it.
/// </summary>
[Collection("Environments")]
public sealed class EnvironmentClusterTests(PostgresFixture fixture) : IClassFixture<PostgresFixture>
{
    /// <summary>A process printing n1, n2, … every 20 ms: on its first run the message of line SEQ is "nSEQ".</summary>
    private const string Counter = "i=0; while true; do i=$((i+1)); echo \"n$i\"; sleep 0.02; done";

    [Fact]
    public async Task Logs_terminal_status_and_actions_reach_the_owner_from_any_node_and_through_nginx()
    {
        await using var cluster = await TestCluster.StartAsync(fixture, 3);
        await using var nginx = await NginxProcess.StartAsync(cluster.Nodes.Select(n => n.BaseUri.Port));
        TestGateway a = cluster[0], b = cluster[1], c = cluster[2];

        var created = await a.CreateShAsync("counter", Counter);
        var id = created.GetProperty("id").GetString()!;
        Assert.Equal("node-1", created.GetProperty("node").GetString());
        // Only node A runs it.
        Assert.NotNull(await Manager(a).FindAsync(id));
        Assert.Null(await Manager(c).FindAsync(id));

        // Any node lists every node's environments, with their node; a GET on a non-owner (by id or by name) is relayed.
        foreach (var node in new[] { b, c })
        {
            var listed = Assert.Single(await ListAsync(node), e => e.GetProperty("id").GetString() == id);
            Assert.Equal("node-1", listed.GetProperty("node").GetString());
            Assert.Equal("running", listed.GetProperty("status").GetString());
            Assert.True(listed.GetProperty("pid").GetInt32() > 0);
        }
        Assert.Equal(id, (await c.GetEnvAsync("counter")).GetProperty("id").GetString());
        await WaitUntilAsync(async () => (await c.GetEnvAsync(id)).GetProperty("lastSeq").GetInt64() >= 30, "30 lines");

        // Logs through node C: the history batch, then live lines, in order, without gap or duplicate.
        var status = await c.ConnectEnvAsync(id, "status");
        Assert.Equal("running", (await status.ReceiveTypeAsync("status")).GetProperty("status").GetString());
        long last;
        await using (var logs = await c.ConnectEnvAsync(id, "logs", "&tail=10000"))
        {
            var history = await logs.ReceiveJsonAsync();
            Assert.Equal("batch", history.GetProperty("type").GetString());
            Assert.False(history.GetProperty("live").GetBoolean());
            var lines = new List<SeenLine>();
            EnvTestKit.Collect(history, lines);
            var historyLast = history.GetProperty("lastSeq").GetInt64();
            Assert.True(historyLast >= 30, $"history ends at {historyLast}");
            await logs.ReadLinesUntilAsync(l => l.Count > 0 && l[^1].Seq >= historyLast + 25, lines);
            AssertCounting(lines, from: 1);
            last = lines[^1].Seq;
        }

        // Logs through nginx, resuming with since: whichever node nginx picks, the lines after SEQ arrive in order.
        var lb = new Uri($"ws://127.0.0.1:{nginx.Port}/");
        await using (var viaNginx = await ConnectAsync(new Uri(lb, $"api/v1/ws/environments/{id}/logs?since={last}&token={Uri.EscapeDataString(a.Token())}")))
        {
            var lines = await viaNginx.ReadLinesUntilAsync(l => l.Count > 0 && l[^1].Seq >= last + 20);
            AssertCounting(lines, from: last + 1);
            last = lines[^1].Seq;
        }

        // A terminal opened through node B runs on node A (the environment's variables are there) and echoes input.
        await using (var terminal = await b.ConnectEnvAsync(id, "terminal"))
        {
            Assert.Equal("ready", (await terminal.ReceiveJsonAsync()).GetProperty("type").GetString());
            await terminal.SendJsonAsync(new { type = "input", data = "echo \"$((6*7)):$HOME\"\r" });
            var output = new StringBuilder();
            var home = created.GetProperty("env").GetProperty("HOME").GetString();
            while (!output.ToString().Contains($"42:{home}", StringComparison.Ordinal))
            {
                var m = await terminal.ReceiveJsonAsync();
                if (m.GetProperty("type").GetString() == "output")
                    output.Append(m.GetProperty("data").GetString());
            }
            await terminal.SendJsonAsync(new { type = "input", data = "exit 5\r" });
            JsonElement exit;
            do
                exit = await terminal.ReceiveJsonAsync();
            while (exit.GetProperty("type").GetString() != "exit");
            Assert.Equal(5, exit.GetProperty("code").GetInt32());
            Assert.Equal(1000, await terminal.WaitForCloseAsync()); // the owner's close code passes through the relay
        }

        // Stop and start through node C act on node A; the status socket (also through C) sees both.
        using (var stop = await c.Api.PostAsync($"api/v1/environments/{id}/stop", null))
        {
            Assert.Equal(HttpStatusCode.OK, stop.StatusCode);
            var body = JsonDocument.Parse(await stop.Content.ReadAsStringAsync()).RootElement;
            Assert.Equal("stopped", body.GetProperty("status").GetString());
            Assert.Equal("node-1", body.GetProperty("node").GetString());
        }
        Assert.Equal("stopped", (await a.GetEnvAsync(id)).GetProperty("status").GetString());
        await ReceiveStatusAsync(status, "stopped");
        var stoppedAt = (await a.GetEnvAsync(id)).GetProperty("lastSeq").GetInt64();
        using (var start = await c.Api.PostAsync($"api/v1/environments/{id}/start", null))
            Assert.Equal(HttpStatusCode.OK, start.StatusCode);
        await ReceiveStatusAsync(status, "running");
        Assert.Equal("running", (await a.GetEnvAsync(id)).GetProperty("status").GetString());
        await using (var logs = await c.ConnectEnvAsync(id, "logs", $"&since={stoppedAt}"))
        {
            // The restarted process counts from n1 again; its lines continue the sequence.
            var lines = await logs.ReadLinesUntilAsync(l => l.Any(x => x.Message == "n5"));
            Assert.Equal(Enumerable.Range(0, lines.Count).Select(i => stoppedAt + 1 + i), lines.Select(l => l.Seq));
        }
        await status.DisposeAsync();

        // Refusals decided by the owner reach the client through the relay with their close codes.
        await using (var unknown = await b.ConnectEnvAsync("env_0000000000000000", "logs"))
            Assert.Equal(4404, await unknown.WaitForCloseAsync());
        await using (var badToken = await b.ConnectEnvAsync(id, "logs", token: "not-a-token"))
            Assert.Equal(4401, await badToken.WaitForCloseAsync());
        await using (var otherEnv = await b.ConnectEnvAsync(id, "status", token: b.Token(envs: ["other"])))
            Assert.Equal(4403, await otherEnv.WaitForCloseAsync());
        // The owner counts the relayed sockets against the per-environment limit (10): the eleventh gets 4429.
        var owned = (await Manager(a).FindAsync(id))!;
        await EnvTestKit.WaitUntilAsync(() => owned.ConnectionCount == 0, because: "earlier sockets to end on the owner");
        var open = new List<TestSocket>();
        for (var i = 0; i < 10; i++)
        {
            open.Add(await (i % 2 == 0 ? b : c).ConnectEnvAsync(id, "status"));
            await open[^1].ReceiveTypeAsync("status");
        }
        await using (var eleventh = await c.ConnectEnvAsync(id, "status"))
            Assert.Equal(4429, await eleventh.WaitForCloseAsync());
        foreach (var s in open)
            await s.DisposeAsync();

        // Unknown ids over REST: 404 from a non-owner, as on one node.
        using (var missing = await c.Api.GetAsync("api/v1/environments/env_0000000000000000"))
            Assert.Equal(HttpStatusCode.NotFound, missing.StatusCode);

        // Created through nginx: the environment runs on the node the request landed on.
        using var api = new HttpClient { BaseAddress = new Uri($"http://127.0.0.1:{nginx.Port}/") };
        api.DefaultRequestHeaders.Authorization = a.Api.DefaultRequestHeaders.Authorization;
        using (var viaLb = await api.PostAsJsonAsync("api/v1/environments", new { name = "via-lb", command = "/bin/sh", args = new[] { "-c", "sleep 60" } }))
        {
            Assert.Equal(HttpStatusCode.Created, viaLb.StatusCode);
            var body = JsonDocument.Parse(await viaLb.Content.ReadAsStringAsync()).RootElement;
            var node = cluster.Nodes.Single(n => n.Services.GetRequiredService<Switchboard.Server.Nodes.INodeRegistry>().NodeId == body.GetProperty("node").GetString());
            Assert.NotNull(await Manager(node).FindAsync(body.GetProperty("id").GetString()!));
            Assert.Equal(2, (await ListAsync(c)).Count);
        }

        var metrics = await c.Api.GetStringAsync("metrics");
        Assert.True(Sum(metrics, "switchboard_environments_forwarded_total{kind=\"websocket\",result=\"ok\"}") >= 5, metrics);
        Assert.True(Sum(metrics, "switchboard_environments_forwarded_total{kind=\"http\",result=\"ok\"}") >= 3, metrics);
    }

    [Fact]
    public async Task Environments_of_a_node_that_is_gone_are_listed_unavailable_refused_with_4503_and_can_be_deleted()
    {
        await using var cluster = await TestCluster.StartAsync(fixture, 3);
        TestGateway a = cluster[0], b = cluster[1], c = cluster[2];
        var id = (await a.CreateShAsync("orphan", Counter)).GetProperty("id").GetString()!;
        await WaitUntilAsync(async () => (await a.GetEnvAsync(id)).GetProperty("lastSeq").GetInt64() >= 5, "5 lines");
        await using (var logs = await c.ConnectEnvAsync(id, "logs"))
        {
            await logs.ReceiveJsonAsync();
            // Node A stops (a deploy): its process ends with it, and so do the connections relayed to it.
            cluster.Nodes.Remove(a);
            await a.DisposeAsync();
            Assert.Equal(1001, await logs.WaitForCloseAsync());
        }

        var listed = Assert.Single(await ListAsync(b));
        Assert.Equal(id, listed.GetProperty("id").GetString());
        Assert.Equal("unavailable", listed.GetProperty("status").GetString());
        Assert.Equal("node-1", listed.GetProperty("node").GetString());
        Assert.Contains("node-1", listed.GetProperty("error").GetString());
        using (var get = await b.Api.GetAsync("api/v1/environments/" + id))
        {
            Assert.Equal(HttpStatusCode.ServiceUnavailable, get.StatusCode);
            Assert.Contains("node_unavailable", await get.Content.ReadAsStringAsync());
        }
        using (var start = await c.Api.PostAsync("api/v1/environments/orphan/start", null))
            Assert.Equal(HttpStatusCode.ServiceUnavailable, start.StatusCode);
        using (var anonymous = await c.Http.GetAsync("api/v1/environments/" + id))
            Assert.Equal(HttpStatusCode.Unauthorized, anonymous.StatusCode);

        await using (var logs = await c.ConnectEnvAsync(id, "logs"))
            Assert.Equal(4503, await logs.WaitForCloseAsync());
        await using (var badToken = await c.ConnectEnvAsync(id, "terminal", token: "not-a-token"))
            Assert.Equal(4401, await badToken.WaitForCloseAsync());
        await using (var otherEnv = await c.ConnectEnvAsync(id, "status", token: c.Token(envs: ["other"])))
            Assert.Equal(4403, await otherEnv.WaitForCloseAsync());

        // Its definition and logs can be deleted from any node, which frees the name.
        using (var delete = await b.Api.DeleteAsync("api/v1/environments/" + id))
            Assert.Equal(HttpStatusCode.NoContent, delete.StatusCode);
        using (var gone = await c.Api.GetAsync("api/v1/environments/" + id))
            Assert.Equal(HttpStatusCode.NotFound, gone.StatusCode);
        Assert.Empty(await ListAsync(c));
        Assert.Equal("node-3", (await c.CreateShAsync("orphan", "sleep 60")).GetProperty("node").GetString());
    }

    [Fact]
    public async Task A_node_restarted_with_its_id_gets_its_environments_back_and_a_new_node_does_not_take_them()
    {
        await using var cluster = await TestCluster.StartAsync(fixture, 2);
        var a = cluster[0];
        var id = (await a.CreateShAsync("comeback", "echo hello; exec sleep 60")).GetProperty("id").GetString()!;
        await WaitUntilAsync(async () => (await a.GetEnvAsync(id)).GetProperty("lastSeq").GetInt64() >= 1, "the first line");
        await Task.Delay(500); // let the persister write it
        cluster.Nodes.Remove(a);
        await a.DisposeAsync();

        // A node that starts now loads only its own environments (none).
        cluster.Nodes.Add(await TestCluster.StartNodeAsync(cluster.ConnectionString, "node-3"));
        var c = cluster.Nodes[^1];
        Assert.Null(await Manager(c).FindAsync(id));
        Assert.Equal("unavailable", Assert.Single(await ListAsync(c)).GetProperty("status").GetString());

        // node-1 comes back: it loads its environment (stopped, as after any restart) and every node routes to it again.
        cluster.Nodes.Add(await TestCluster.StartNodeAsync(cluster.ConnectionString, "node-1"));
        // Other nodes learn that node-1 is live again from the node registry, which they read periodically.
        await WaitUntilAsync(async () => Assert.Single(await ListAsync(c)).GetProperty("status").GetString() != "unavailable", "node-1 is seen live again");
        var again = Assert.Single(await ListAsync(c));
        Assert.Equal("stopped", again.GetProperty("status").GetString());
        Assert.Equal("node-1", again.GetProperty("node").GetString());
        using (var start = await c.Api.PostAsync($"api/v1/environments/{id}/start", null))
            Assert.Equal(HttpStatusCode.OK, start.StatusCode);
        await using var logs = await cluster[0].ConnectEnvAsync(id, "logs");
        var lines = await logs.ReadLinesUntilAsync(l => l.Count >= 2);
        Assert.Equal([(1L, "hello"), (2L, "hello")], lines.Select(l => (l.Seq, l.Message)));
    }

    private static EnvironmentManager Manager(TestGateway node) => node.Services.GetRequiredService<EnvironmentManager>();

    private static async Task<List<JsonElement>> ListAsync(TestGateway node)
    {
        var body = await node.Api.GetStringAsync("api/v1/environments");
        return [.. JsonDocument.Parse(body).RootElement.GetProperty("environments").EnumerateArray()];
    }

    /// <summary>Lines of the counter's first run: consecutive seqs from <paramref name="from"/>, message "nSEQ".</summary>
    private static void AssertCounting(List<SeenLine> lines, long from)
    {
        Assert.Equal(Enumerable.Range(0, lines.Count).Select(i => from + i), lines.Select(l => l.Seq));
        Assert.All(lines, l => Assert.Equal("n" + l.Seq.ToString(CultureInfo.InvariantCulture), l.Message));
    }

    private static async Task ReceiveStatusAsync(TestSocket socket, string expected)
    {
        while (true)
        {
            var m = await socket.ReceiveTypeAsync("status");
            if (m.GetProperty("status").GetString() == expected)
                return;
        }
    }

    private static async Task<TestSocket> ConnectAsync(Uri uri)
    {
        var ws = new ClientWebSocket();
        ws.Options.KeepAliveInterval = TimeSpan.Zero;
        using var timeout = new CancellationTokenSource(TimeSpan.FromSeconds(10));
        await ws.ConnectAsync(uri, timeout.Token);
        return new TestSocket(ws);
    }

    private static async Task WaitUntilAsync(Func<Task<bool>> condition, string what)
    {
        var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(15);
        while (!await condition())
        {
            if (DateTime.UtcNow > deadline)
                throw new TimeoutException("waiting for " + what);
            await Task.Delay(50);
        }
    }

    private static long Sum(string metrics, string prefix) =>
        metrics.Split('\n').Where(l => l.StartsWith(prefix, StringComparison.Ordinal)).Sum(l => long.Parse(l[(l.LastIndexOf(' ') + 1)..], CultureInfo.InvariantCulture));
}
