using System.Globalization;
using System.Net;
using System.Net.WebSockets;
using System.Security.Cryptography;
using System.Text;
using System.Text.Json;
using Microsoft.Extensions.DependencyInjection;
using Switchboard.Client.Tunnels;
using Switchboard.Protocol.Tunnels;
using Switchboard.Server.Tests.Infrastructure;
using Switchboard.Server.Tests.Tunnels;
using Switchboard.Server.Tunnels;
using Switchboard.Storage.Postgres.Tests;

namespace Switchboard.Server.Tests.Cluster;

/// <summary>Tunnels across three real nodes on one PostgreSQL database: the agent on one node, public traffic entering at another.</summary>
public sealed class TunnelClusterTests(PostgresFixture fixture) : IClassFixture<PostgresFixture>
{
    /// <summary>Three nodes, a real local app and a real agent connected to node A (index 0).</summary>
    private sealed class Setup : IAsyncDisposable
    {
        public required TestCluster Cluster { get; init; }
        public required LocalApp Local { get; init; }
        public required TunnelAgent Agent { get; init; }
        public required TunnelHelloAck Ack { get; init; }

        /// <summary>Client of node C (index 2): no redirects, no cookies, no decompression.</summary>
        public required HttpClient EntryC { get; init; }

        public string Path(string path) => $"t/{Ack.Name}{path}";

        public async ValueTask DisposeAsync()
        {
            EntryC.Dispose();
            await Agent.DisposeAsync();
            await Local.DisposeAsync();
            await Cluster.DisposeAsync();
        }
    }

    private async Task<Setup> StartAsync(string subdomain)
    {
        var cluster = await TestCluster.StartAsync(fixture, 3);
        var local = await LocalApp.StartAsync();
        var agent = new TunnelAgent(new TunnelAgentOptions
        {
            Server = cluster[0].BaseUri,
            LocalTarget = local.Uri,
            Token = cluster[0].Token("agent", tunnels: ["*"]),
            Subdomain = subdomain,
            MinBackoff = TimeSpan.FromMilliseconds(50),
            MaxBackoff = TimeSpan.FromMilliseconds(500),
        });
        var (ack, _) = await agent.StartAsync(CancellationToken.None);
        var client = new HttpClient(new SocketsHttpHandler { AllowAutoRedirect = false, UseCookies = false, AutomaticDecompression = DecompressionMethods.None })
        {
            BaseAddress = cluster[2].BaseUri,
            Timeout = TimeSpan.FromSeconds(30),
        };
        return new Setup { Cluster = cluster, Local = local, Agent = agent, Ack = ack, EntryC = client };
    }

    [Fact]
    public async Task Request_entering_at_node_C_is_served_by_the_agent_on_node_A()
    {
        await using var s = await StartAsync("xn-http");
        // Node C does not hold the agent; the registry says node A does.
        Assert.Null(s.Cluster[2].Services.GetRequiredService<TunnelHub>().Find("xn-http"));
        Assert.NotNull(s.Cluster[0].Services.GetRequiredService<TunnelHub>().Find("xn-http"));

        var hello = await s.EntryC.GetStringAsync(s.Path("/hello?x=1"));
        Assert.StartsWith("hello /hello?x=1", hello);
        Assert.Contains("\nX-Forwarded-For=127.0.0.1\n", hello); // the public client's address, once: the internal hop is invisible
        Assert.Contains("X-Forwarded-Prefix=/t/xn-http", hello);
        Assert.Contains($"X-Forwarded-Host={s.Cluster[2].BaseUri.Authority}", hello);

        // Host routing: the Host header survives the hop.
        using (var byHost = new HttpRequestMessage(HttpMethod.Get, "hello"))
        {
            byHost.Headers.Host = $"xn-http.localhost:{s.Cluster[2].BaseUri.Port}";
            using var response = await s.EntryC.SendAsync(byHost);
            Assert.Equal(HttpStatusCode.OK, response.StatusCode);
            var text = await response.Content.ReadAsStringAsync();
            Assert.StartsWith("hello /hello", text);
            Assert.Contains($"X-Forwarded-Host=xn-http.localhost:{s.Cluster[2].BaseUri.Port}", text);
        }

        // Byte-exact bodies both ways.
        const int size = 3 * 1024 * 1024 + 17;
        var download = await s.EntryC.GetByteArrayAsync(s.Path($"/download?size={size}"));
        Assert.Equal(LocalApp.Pattern(size), download);
        var upload = LocalApp.Pattern(2 * 1024 * 1024 + 5);
        using (var post = await s.EntryC.PostAsync(s.Path("/upload"), new ByteArrayContent(upload)))
        {
            Assert.Equal(HttpStatusCode.OK, post.StatusCode);
            Assert.Equal($"{upload.Length}:{Convert.ToHexStringLower(SHA256.HashData(upload))}", await post.Content.ReadAsStringAsync());
        }
        // A body without Content-Length (chunked) streams through the hop too.
        using (var chunked = new StreamContent(new MemoryStream(upload)))
        {
            using var request = new HttpRequestMessage(HttpMethod.Post, s.Path("/upload")) { Content = chunked };
            request.Headers.TransferEncodingChunked = true;
            using var post = await s.EntryC.SendAsync(request);
            Assert.Equal($"{upload.Length}:{Convert.ToHexStringLower(SHA256.HashData(upload))}", await post.Content.ReadAsStringAsync());
        }
        using (var put = await s.EntryC.PutAsync(s.Path("/echo"), new StringContent("body-put")))
        {
            Assert.Equal(HttpStatusCode.Created, put.StatusCode);
            Assert.Equal("PUT:body-put", await put.Content.ReadAsStringAsync());
        }

        // Repeated response headers stay apart; redirects are passed on, not followed.
        using (var cookies = await s.EntryC.GetAsync(s.Path("/cookies")))
            Assert.Equal(["a=1; Path=/", "b=2; Path=/; HttpOnly"], cookies.Headers.GetValues("Set-Cookie"));
        using (var redirect = await s.EntryC.GetAsync(s.Path("/redirect")))
        {
            Assert.Equal(HttpStatusCode.Redirect, redirect.StatusCode);
            Assert.Equal("/hello", redirect.Headers.Location!.OriginalString);
        }
        using (var bare = await s.EntryC.GetAsync("t/xn-http"))
        {
            Assert.Equal(HttpStatusCode.PermanentRedirect, bare.StatusCode);
            Assert.Equal("/t/xn-http/", bare.Headers.Location!.OriginalString);
        }

        // An unknown tunnel is still a 404 at any node.
        using (var ghost = await s.EntryC.GetAsync("t/xn-ghost/"))
        {
            Assert.Equal(HttpStatusCode.NotFound, ghost.StatusCode);
            Assert.Contains("tunnel_not_found", await ghost.Content.ReadAsStringAsync());
        }

        var metrics = await s.Cluster[2].Api.GetStringAsync("metrics");
        var forwarded = metrics.Split('\n').Where(l => l.StartsWith("switchboard_tunnels_forwarded_total{kind=\"http\",result=\"ok\"}", StringComparison.Ordinal))
            .Sum(l => long.Parse(l[(l.LastIndexOf(' ') + 1)..], CultureInfo.InvariantCulture));
        Assert.True(forwarded >= 8, $"forwarded counter is {forwarded}");
    }

    [Fact]
    public async Task Server_sent_events_through_node_C_arrive_one_by_one()
    {
        await using var s = await StartAsync("xn-sse");
        using var response = await s.EntryC.GetAsync(s.Path("/sse?n=4"), HttpCompletionOption.ResponseHeadersRead);
        Assert.Equal(HttpStatusCode.OK, response.StatusCode);
        Assert.Equal("text/event-stream", response.Content.Headers.ContentType!.MediaType);
        using var reader = new StreamReader(await response.Content.ReadAsStreamAsync());
        for (var i = 0; i < 4; i++)
        {
            using var timeout = new CancellationTokenSource(TimeSpan.FromSeconds(5));
            Assert.Equal($"id: {i}", await reader.ReadLineAsync(timeout.Token));
            Assert.Equal($"data: event {i}", await reader.ReadLineAsync(timeout.Token));
            Assert.Equal("", await reader.ReadLineAsync(timeout.Token));
            lock (s.Local.SseProduced)
                Assert.Equal(i + 1, s.Local.SseProduced.Count); // event i+1 is produced only after event i arrived through two nodes
            s.Local.SseGate.Release();
        }
    }

    [Fact]
    public async Task WebSocket_through_node_C_reaches_the_local_server_behind_the_agent_on_node_A()
    {
        await using var s = await StartAsync("xn-ws");
        using var ws = new ClientWebSocket();
        ws.Options.AddSubProtocol("echo.v1");
        await ws.ConnectAsync(new Uri(s.Cluster[2].WsBaseUri, s.Path("/ws")), CancellationToken.None);
        Assert.Equal("echo.v1", ws.SubProtocol);

        await ws.SendAsync(Encoding.UTF8.GetBytes("hello across nodes"), WebSocketMessageType.Text, true, CancellationToken.None);
        var (type, data) = await ReceiveAsync(ws);
        Assert.Equal(WebSocketMessageType.Text, type);
        Assert.Equal("hello across nodes", Encoding.UTF8.GetString(data));

        var big = LocalApp.Pattern(700_000);
        await ws.SendAsync(big, WebSocketMessageType.Binary, true, CancellationToken.None);
        (type, data) = await ReceiveAsync(ws);
        Assert.Equal(WebSocketMessageType.Binary, type);
        Assert.Equal(big, data);

        // The local server's close code crosses both hops.
        await ws.SendAsync(Encoding.UTF8.GetBytes("close-me"), WebSocketMessageType.Text, true, CancellationToken.None);
        (type, _) = await ReceiveAsync(ws);
        Assert.Equal(WebSocketMessageType.Close, type);
        Assert.Equal(4001, (int?)ws.CloseStatus);
        Assert.Equal("closed by server", ws.CloseStatusDescription);

        // And the public client's close code reaches the local server, which echoes it back.
        using var ws2 = new ClientWebSocket();
        await ws2.ConnectAsync(new Uri(s.Cluster[2].WsBaseUri, s.Path("/ws")), CancellationToken.None);
        await ws2.CloseAsync((WebSocketCloseStatus)4123, "bye", CancellationToken.None);
        Assert.Equal(4123, (int?)ws2.CloseStatus);
        Assert.Equal("bye", ws2.CloseStatusDescription);

        // An upgrade the local app refuses comes back with its status through both nodes.
        using var refused = new ClientWebSocket();
        refused.Options.CollectHttpResponseDetails = true;
        await Assert.ThrowsAsync<WebSocketException>(() => refused.ConnectAsync(new Uri(s.Cluster[2].WsBaseUri, s.Path("/nope")), CancellationToken.None));
        Assert.Equal(HttpStatusCode.NotFound, refused.HttpStatusCode);

        var metrics = await s.Cluster[2].Api.GetStringAsync("metrics");
        Assert.Contains("switchboard_tunnels_forwarded_total{kind=\"websocket\",result=\"ok\"}", metrics);
    }

    [Fact]
    public async Task Forged_relay_headers_are_refused_and_a_valid_one_is_never_relayed_again()
    {
        await using var s = await StartAsync("xn-sec");
        var now = DateTimeOffset.UtcNow.ToUnixTimeSeconds().ToString(CultureInfo.InvariantCulture);
        // Signed with a key that is not the deployment's (an outsider guessing the format), sent to the node that holds the agent.
        var wrongKey = HMACSHA256.HashData("not-the-api-key"u8.ToArray(), "switchboard tunnel relay v1"u8);
        var wrongSig = Convert.ToBase64String(HMACSHA256.HashData(wrongKey, Encoding.UTF8.GetBytes($"node-2\n10.9.8.7\nhttp\n{now}")))
            .Replace('+', '-').Replace('/', '_').TrimEnd('=');
        foreach (var forged in new[] { $"v1 node-2 10.9.8.7 http {now} {wrongSig}", "v1 node-2 10.9.8.7 http 1 AAAA", "anything" })
        {
            foreach (var node in new[] { s.Cluster[0], s.Cluster[2] })
            {
                using var request = new HttpRequestMessage(HttpMethod.Get, s.Path("/hello"));
                request.Headers.TryAddWithoutValidation(TunnelRelay.Header, forged);
                using var response = await node.Http.SendAsync(request);
                Assert.Equal(HttpStatusCode.Forbidden, response.StatusCode);
                var doc = JsonDocument.Parse(await response.Content.ReadAsStringAsync());
                Assert.Equal("invalid_relay", doc.RootElement.GetProperty("error").GetString());
            }
        }

        // A genuine relay header (as node B would make it) is served by the holder with the vouched-for client address...
        var relayB = s.Cluster[1].Services.GetRequiredService<TunnelRelay>();
        using (var request = new HttpRequestMessage(HttpMethod.Get, s.Path("/hello")))
        {
            request.Headers.TryAddWithoutValidation(TunnelRelay.Header, relayB.CreateHeader(IPAddress.Parse("10.9.8.7"), "https"));
            using var response = await s.Cluster[0].Http.SendAsync(request);
            Assert.Equal(HttpStatusCode.OK, response.StatusCode);
            var text = await response.Content.ReadAsStringAsync();
            Assert.Contains("\nX-Forwarded-For=10.9.8.7\n", text);
            Assert.Contains("\nX-Forwarded-Proto=https\n", text);
        }
        // ...and at a node that does not hold the agent it is answered there (404), never relayed a second time.
        using (var request = new HttpRequestMessage(HttpMethod.Get, s.Path("/hello")))
        {
            request.Headers.TryAddWithoutValidation(TunnelRelay.Header, relayB.CreateHeader(IPAddress.Loopback, "http"));
            using var response = await s.Cluster[2].Http.SendAsync(request);
            Assert.Equal(HttpStatusCode.NotFound, response.StatusCode);
        }
    }

    [Fact]
    public async Task Tunnel_held_by_a_node_that_is_gone_answers_502()
    {
        await using var cluster = await TestCluster.StartAsync(fixture, 2);
        // A registration left by a node that crashed (no row in the live node list).
        var registry = cluster[0].Services.GetRequiredService<ITunnelRegistry>();
        await registry.RegisterAsync(new TunnelRegistration("xn-dead", "node-crashed", "conn-1", "user:agent", DateTimeOffset.UtcNow), default);
        using var response = await cluster[1].Http.GetAsync("t/xn-dead/hello");
        Assert.Equal(HttpStatusCode.BadGateway, response.StatusCode);
        var doc = JsonDocument.Parse(await response.Content.ReadAsStringAsync());
        Assert.Equal("tunnel_node_unreachable", doc.RootElement.GetProperty("error").GetString());
        Assert.Contains("node-crashed", doc.RootElement.GetProperty("message").GetString());
    }

    private static async Task<(WebSocketMessageType, byte[])> ReceiveAsync(ClientWebSocket ws)
    {
        using var timeout = new CancellationTokenSource(TimeSpan.FromSeconds(10));
        var buffer = new byte[1024 * 1024];
        var length = 0;
        while (true)
        {
            var r = await ws.ReceiveAsync(buffer.AsMemory(length), timeout.Token);
            if (r.MessageType == WebSocketMessageType.Close)
                return (WebSocketMessageType.Close, []);
            length += r.Count;
            if (r.EndOfMessage)
                return (r.MessageType, buffer[..length]);
        }
    }
}
