using System.Diagnostics;
using System.Net;
using System.Net.Http.Headers;
using System.Net.WebSockets;
using System.Text;
using System.Text.Json;
using Microsoft.Extensions.DependencyInjection;
using Switchboard.Client.Tunnels;
using Switchboard.Protocol;
using Switchboard.Protocol.Tunnels;
using Switchboard.Server.Tunnels;

namespace Switchboard.Server.Tests.Tunnels;

public sealed class TunnelAgentTests
{
    [Fact]
    public async Task WebSocket_echo_through_the_tunnel_text_binary_and_close_code()
    {
        await using var h = await TunnelHarness.StartAsync();
        using var ws = new ClientWebSocket();
        ws.Options.AddSubProtocol("echo.v1");
        await ws.ConnectAsync(new Uri(h.Gateway.WsBaseUri, h.Path("/ws")), CancellationToken.None);
        Assert.Equal("echo.v1", ws.SubProtocol);

        await ws.SendAsync(Encoding.UTF8.GetBytes("hello tunnel"), WebSocketMessageType.Text, true, CancellationToken.None);
        var (type, data) = await ReceiveAsync(ws);
        Assert.Equal(WebSocketMessageType.Text, type);
        Assert.Equal("hello tunnel", Encoding.UTF8.GetString(data));

        var big = LocalApp.Pattern(700_000); // larger than a window: flow control in the WebSocket path too
        await ws.SendAsync(big, WebSocketMessageType.Binary, true, CancellationToken.None);
        (type, data) = await ReceiveAsync(ws);
        Assert.Equal(WebSocketMessageType.Binary, type);
        Assert.Equal(big, data);

        // The local server closes with 4001: the public client sees 4001.
        await ws.SendAsync(Encoding.UTF8.GetBytes("close-me"), WebSocketMessageType.Text, true, CancellationToken.None);
        (type, _) = await ReceiveAsync(ws);
        Assert.Equal(WebSocketMessageType.Close, type);
        Assert.Equal(4001, (int?)ws.CloseStatus);
        Assert.Equal("closed by server", ws.CloseStatusDescription);

        // And a public client's close code reaches the local server, which echoes it back.
        using var ws2 = new ClientWebSocket();
        await ws2.ConnectAsync(new Uri(h.Gateway.WsBaseUri, h.Path("/ws")), CancellationToken.None);
        await ws2.CloseAsync((WebSocketCloseStatus)4123, "bye", CancellationToken.None);
        Assert.Equal(4123, (int?)ws2.CloseStatus);
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

    [Fact]
    public async Task Agent_killed_mid_response_fails_fast_then_reconnects_under_the_same_name()
    {
        await using var h = await TunnelHarness.StartAsync();
        var name = h.Ack!.Name;
        var reconnected = new TaskCompletionSource<TunnelHelloAck>(TaskCreationOptions.RunContinuationsAsynchronously);
        h.Agent!.Connected += ack => reconnected.TrySetResult(ack);

        // A started response (streaming) and a request still waiting for its head.
        using var trickle = await h.Client.GetAsync(h.Path("/trickle"), HttpCompletionOption.ResponseHeadersRead);
        var body = await trickle.Content.ReadAsStreamAsync();
        var buffer = new byte[100];
        Assert.True(await body.ReadAsync(buffer) > 0);
        var waiting = h.Client.GetAsync(h.Path("/hang"));
        await Task.Delay(200);

        var clock = Stopwatch.StartNew();
        h.Agent.DropConnection();
        using var failed = await waiting;
        Assert.Equal(HttpStatusCode.BadGateway, failed.StatusCode);
        await Assert.ThrowsAnyAsync<IOException>(async () =>
        {
            while (await body.ReadAsync(buffer) > 0)
            {
            }
        });
        Assert.True(clock.Elapsed < TimeSpan.FromSeconds(2), $"failing in-flight requests took {clock.ElapsedMilliseconds} ms");

        var again = await reconnected.Task.WaitAsync(TimeSpan.FromSeconds(10));
        Assert.Equal(name, again.Name);
        Assert.StartsWith("hello /hello", await h.Client.GetStringAsync(h.Path("/hello")));
    }

    [Fact]
    public async Task Public_client_disconnect_cancels_the_local_request()
    {
        await using var h = await TunnelHarness.StartAsync();
        using var cancel = new CancellationTokenSource(TimeSpan.FromMilliseconds(300));
        await Assert.ThrowsAnyAsync<OperationCanceledException>(() => h.Client.GetAsync(h.Path("/hang"), cancel.Token));
        await h.Local.HangAborted.Task.WaitAsync(TimeSpan.FromSeconds(3));
    }

    [Fact]
    public async Task A_newer_agent_for_the_same_name_and_owner_takes_over_and_the_old_one_stops()
    {
        await using var h = await TunnelHarness.StartAsync(connect: false);
        var token = await h.AgentTokenAsync();
        await using var old = new TunnelAgent(h.AgentOptions(o =>
        {
            o.Token = token;
            o.Subdomain = "same";
        }));
        var (_, running) = await old.StartAsync(CancellationToken.None);
        await h.StartAgentAsync(o =>
        {
            o.Token = token;
            o.Subdomain = "same";
        });
        var ex = await Assert.ThrowsAsync<TunnelRefusedException>(() => running.WaitAsync(TimeSpan.FromSeconds(5)));
        Assert.Equal(CloseCodes.ResourceClosed, ex.Code);
        using var response = await h.Client.GetAsync("t/same/hello");
        Assert.Equal(HttpStatusCode.OK, response.StatusCode);
        Assert.Single(JsonDocument.Parse(await h.Gateway.Api.GetStringAsync("api/v1/tunnels")).RootElement.GetProperty("tunnels").EnumerateArray());
    }

    [Fact]
    public async Task Bad_agent_token_and_bad_jwt_are_refused_with_4401()
    {
        await using var h = await TunnelHarness.StartAsync(connect: false);
        var ex = await Assert.ThrowsAsync<TunnelRefusedException>(() => h.StartAgentAsync(o => o.Token = "sbat_not-a-real-token"));
        Assert.Equal(CloseCodes.Unauthorized, ex.Code);
        Assert.Contains("agent token", ex.Message);
        ex = await Assert.ThrowsAsync<TunnelRefusedException>(() => h.StartAgentAsync(o => o.Token = "not.a.jwt"));
        Assert.Equal(CloseCodes.Unauthorized, ex.Code);

        // A revoked token stops working.
        var token = await h.AgentTokenAsync();
        var (agent, _) = await h.StartAgentAsync(o => o.Token = token);
        await agent.DisposeAsync();
        var registry = h.Gateway.Services.GetRequiredService<ITunnelRegistry>();
        var id = (await registry.ListTokensAsync(default)).Single().Id;
        Assert.True(await registry.RevokeTokenAsync(id, DateTimeOffset.UtcNow, default));
        ex = await Assert.ThrowsAsync<TunnelRefusedException>(() => h.StartAgentAsync(o => o.Token = token));
        Assert.Equal(CloseCodes.Unauthorized, ex.Code);
    }

    [Fact]
    public async Task Subdomain_reserved_by_one_token_is_refused_to_another_and_kept_by_its_owner()
    {
        await using var h = await TunnelHarness.StartAsync(connect: false);
        var alice = await h.AgentTokenAsync("alice");
        var bob = await h.AgentTokenAsync("bob");
        var (first, ack) = await h.StartAgentAsync(o =>
        {
            o.Token = alice;
            o.Subdomain = "shared";
        });
        Assert.Equal("shared", ack.Name);
        var ex = await Assert.ThrowsAsync<TunnelRefusedException>(() => h.StartAgentAsync(o =>
        {
            o.Token = bob;
            o.Subdomain = "shared";
        }));
        Assert.Equal(CloseCodes.Forbidden, ex.Code);
        Assert.Contains("reserved by another token", ex.Message);

        // Still refused after alice disconnects; alice herself gets it back.
        await first.DisposeAsync();
        await Assert.ThrowsAsync<TunnelRefusedException>(() => h.StartAgentAsync(o =>
        {
            o.Token = bob;
            o.Subdomain = "shared";
        }));
        var (_, back) = await h.StartAgentAsync(o =>
        {
            o.Token = alice;
            o.Subdomain = "shared";
        });
        Assert.Equal("shared", back.Name);

        // A JWT may only take names its tunnels claim allows; a random name follows the pattern's prefix.
        var jwt = h.Gateway.Token("carol", tunnels: ["team-*"]);
        ex = await Assert.ThrowsAsync<TunnelRefusedException>(() => h.StartAgentAsync(o =>
        {
            o.Token = jwt;
            o.Subdomain = "other";
        }));
        Assert.Equal(CloseCodes.Forbidden, ex.Code);
        var (_, random) = await h.StartAgentAsync(o => o.Token = jwt);
        Assert.StartsWith("team-", random.Name);
    }

    [Fact]
    public async Task Basic_auth_and_cidr_allow_list_are_enforced_at_the_gateway()
    {
        await using var h = await TunnelHarness.StartAsync(agent: o => o.BasicAuth = "user:s3cret");
        using var anonymous = await h.Client.GetAsync(h.Path("/hello"));
        Assert.Equal(HttpStatusCode.Unauthorized, anonymous.StatusCode);
        Assert.StartsWith("Basic", anonymous.Headers.WwwAuthenticate.ToString());

        using var wrong = new HttpRequestMessage(HttpMethod.Get, h.Path("/hello"));
        wrong.Headers.Authorization = new AuthenticationHeaderValue("Basic", Convert.ToBase64String(Encoding.UTF8.GetBytes("user:nope")));
        Assert.Equal(HttpStatusCode.Unauthorized, (await h.Client.SendAsync(wrong)).StatusCode);

        using var right = new HttpRequestMessage(HttpMethod.Get, h.Path("/hello"));
        right.Headers.Authorization = new AuthenticationHeaderValue("Basic", Convert.ToBase64String(Encoding.UTF8.GetBytes("user:s3cret")));
        using var ok = await h.Client.SendAsync(right);
        Assert.Equal(HttpStatusCode.OK, ok.StatusCode);
        Assert.Contains("\nAuthorization=\n", await ok.Content.ReadAsStringAsync() + "\n"); // the gateway's login is not forwarded

        var (_, denied) = await h.StartAgentAsync(o => o.AllowCidrs = ["10.0.0.0/8"]);
        using var refused = await h.Client.GetAsync($"t/{denied.Name}/hello");
        Assert.Equal(HttpStatusCode.Forbidden, refused.StatusCode);
        var (_, allowed) = await h.StartAgentAsync(o => o.AllowCidrs = ["10.0.0.0/8", "127.0.0.0/8"]);
        using var admitted = await h.Client.GetAsync($"t/{allowed.Name}/hello");
        Assert.Equal(HttpStatusCode.OK, admitted.StatusCode);

        var ex = await Assert.ThrowsAsync<TunnelRefusedException>(() => h.StartAgentAsync(o => o.AllowCidrs = ["not-a-cidr"]));
        Assert.Equal(CloseCodes.PolicyViolation, ex.Code);
    }

    [Fact]
    public async Task Inspection_lists_tunnels_and_recent_requests_and_replays_one()
    {
        await using var h = await TunnelHarness.StartAsync();
        var name = h.Ack!.Name;
        Assert.Equal(HttpStatusCode.Unauthorized, (await h.Client.GetAsync("api/v1/tunnels")).StatusCode);

        using var post = await h.Client.PostAsync(h.Path("/echo"), new StringContent("payload-1"));
        Assert.Equal("POST:payload-1", await post.Content.ReadAsStringAsync());
        await h.Client.GetStringAsync(h.Path("/cookies"));

        var list = JsonDocument.Parse(await h.Gateway.Api.GetStringAsync("api/v1/tunnels")).RootElement.GetProperty("tunnels");
        var tunnel = list.EnumerateArray().Single(t => t.GetProperty("name").GetString() == name);
        Assert.Equal("user:agent", tunnel.GetProperty("owner").GetString());
        Assert.True(tunnel.GetProperty("totalRequests").GetInt64() >= 2);

        var registration = await h.Gateway.Services.GetRequiredService<ITunnelRegistry>().GetAsync(name, default);
        Assert.NotNull(registration);
        Assert.Equal(tunnel.GetProperty("connectionId").GetString(), registration.ConnectionId);

        var requests = JsonDocument.Parse(await h.Gateway.Api.GetStringAsync($"api/v1/tunnels/{name}/requests")).RootElement.GetProperty("requests");
        Assert.Equal(2, requests.GetArrayLength());
        var cookies = requests[0];
        Assert.Equal("/cookies", cookies.GetProperty("path").GetString());
        Assert.Equal(200, cookies.GetProperty("status").GetInt32());
        Assert.Equal(2, cookies.GetProperty("responseHeaders").EnumerateArray().Count(x => x.GetProperty("name").GetString() == "Set-Cookie"));
        var posted = requests[1];
        Assert.Equal("POST", posted.GetProperty("method").GetString());
        Assert.Equal(9, posted.GetProperty("requestBytes").GetInt64());
        Assert.True(posted.GetProperty("replayable").GetBoolean());

        using var replay = await h.Gateway.Api.PostAsync($"api/v1/tunnels/{name}/requests/{posted.GetProperty("id").GetInt64()}/replay", null);
        Assert.Equal(HttpStatusCode.OK, replay.StatusCode);
        var result = JsonDocument.Parse(await replay.Content.ReadAsStringAsync()).RootElement;
        Assert.Equal(201, result.GetProperty("status").GetInt32());
        Assert.Equal("POST:payload-1", result.GetProperty("body").GetString());

        Assert.Equal(HttpStatusCode.NotFound, (await h.Gateway.Api.PostAsync($"api/v1/tunnels/{name}/requests/999/replay", null)).StatusCode);
    }
}

public sealed class TunnelCliTests
{
    [Fact]
    public async Task Cli_agent_killed_mid_response_gives_502_and_a_restarted_agent_serves_the_same_url()
    {
        await using var h = await TunnelHarness.StartAsync(connect: false);
        var token = await h.AgentTokenAsync("cli");
        string[] args = ["tunnel", "http", h.Local.Uri.Port.ToString(System.Globalization.CultureInfo.InvariantCulture), "--server", h.Gateway.BaseUri.ToString(),
            "--token", token, "--subdomain", "proc"];
        using (var first = await CliAgentProcess.StartAsync(args))
        {
            Assert.Contains($"Forwarding  http://proc.localhost:{h.Gateway.BaseUri.Port}  ->  http://127.0.0.1:{h.Local.Uri.Port}", first.Output);
            Assert.Contains($"Forwarding  {h.Gateway.BaseUri}t/proc/", first.Output);
            Assert.StartsWith("hello /hello", await h.Client.GetStringAsync("t/proc/hello"));
            await first.WaitForOutputAsync("/hello", TimeSpan.FromSeconds(5)); // the live request line

            using var trickle = await h.Client.GetAsync("t/proc/trickle", HttpCompletionOption.ResponseHeadersRead);
            var body = await trickle.Content.ReadAsStreamAsync();
            Assert.True(await body.ReadAsync(new byte[16]) > 0);
            var waiting = h.Client.GetAsync("t/proc/hang");
            await Task.Delay(300);
            var clock = Stopwatch.StartNew();
            first.Kill();
            using var failed = await waiting;
            Assert.Equal(HttpStatusCode.BadGateway, failed.StatusCode);
            Assert.True(clock.Elapsed < TimeSpan.FromSeconds(3), $"502 took {clock.ElapsedMilliseconds} ms");
            await Assert.ThrowsAnyAsync<IOException>(async () =>
            {
                while (await body.ReadAsync(new byte[1024]) > 0)
                {
                }
            });
        }
        using var second = await CliAgentProcess.StartAsync(args);
        Assert.StartsWith("hello /hello", await h.Client.GetStringAsync("t/proc/hello"));

        // Another token asking for the name: the CLI prints the refusal and exits.
        var other = await h.AgentTokenAsync("other");
        var ex = await Assert.ThrowsAnyAsync<Exception>(() => CliAgentProcess.StartAsync(["tunnel", "http", "1", "--server", h.Gateway.BaseUri.ToString(), "--token", other, "--subdomain", "proc"]));
        Assert.Contains("error: the gateway refused the tunnel (4403): subdomain 'proc' is reserved by another token", ex.Message);
    }
}
