using System.Net;
using System.Net.WebSockets;
using System.Text;
using Switchboard.Protocol;
using Switchboard.Server.Tests.Infrastructure;

namespace Switchboard.Server.Tests.Connections;

public sealed class CloseCodeTests
{
    [Fact]
    public async Task Missing_token_closes_4401()
    {
        await using var gw = await TestGateway.StartAsync();
        await using var s = await gw.ConnectAsync("api/v1/ws");
        Assert.Equal(CloseCodes.Unauthorized, await s.WaitForCloseAsync());
        Assert.Contains("missing token", s.Socket.CloseStatusDescription);
    }

    [Fact]
    public async Task Expired_not_yet_valid_badly_signed_and_foreign_audience_tokens_close_4401()
    {
        await using var gw = await TestGateway.StartAsync(o => o.Auth.ClockSkew = TimeSpan.Zero);
        var expired = gw.Token(lifetime: TimeSpan.FromSeconds(-10), notBefore: DateTimeOffset.UtcNow.AddMinutes(-5));
        var future = gw.Token(notBefore: DateTimeOffset.UtcNow.AddMinutes(10), lifetime: TimeSpan.FromHours(1));
        var good = gw.Token();
        var tampered = good[..^4] + (good[^4] == 'A' ? "BBBB" : "AAAA");

        var foreign = new Switchboard.Server.Auth.TokenService(
            Microsoft.Extensions.Options.Options.Create(new SwitchboardOptions { Auth = { JwtSecret = TestGateway.JwtSecret, Audience = "another-service" } }),
            TimeProvider.System).Create("alice", TimeSpan.FromHours(1), ["*"]);

        foreach (var (token, reason) in new[] { (expired, "expired"), (future, "not yet valid"), (tampered, "signature"), (foreign, "audience"), ("garbage", "") })
        {
            await using var s = await gw.ConnectAsync("api/v1/ws?token=" + Uri.EscapeDataString(token));
            Assert.Equal(CloseCodes.Unauthorized, await s.WaitForCloseAsync());
            Assert.Contains(reason, s.Socket.CloseStatusDescription);
        }
    }

    [Fact]
    public async Task Token_in_authorization_header_or_cookie_is_accepted()
    {
        await using var gw = await TestGateway.StartAsync();
        var token = gw.Token();
        await using (var viaHeader = await gw.ConnectAsync("api/v1/ws", o => o.SetRequestHeader("Authorization", "Bearer " + token)))
            Assert.Equal("welcome", (await viaHeader.ReceiveJsonAsync()).GetProperty("type").GetString());
        await using var viaCookie = await gw.ConnectAsync("api/v1/ws", o =>
        {
            o.Cookies = new CookieContainer();
            o.Cookies.Add(new Cookie("switchboard_token", token, "/", "127.0.0.1"));
        });
        Assert.Equal("welcome", (await viaCookie.ReceiveJsonAsync()).GetProperty("type").GetString());
    }

    [Fact]
    public async Task Malformed_json_closes_1008_and_unknown_type_closes_1008()
    {
        await using var gw = await TestGateway.StartAsync();
        await using (var s = await gw.ConnectChannelsAsync())
        {
            await s.SendTextAsync("{not json");
            Assert.Equal(CloseCodes.PolicyViolation, await s.WaitForCloseAsync());
        }
        await using var s2 = await gw.ConnectChannelsAsync();
        await s2.SendJsonAsync(new { type = "dance" });
        Assert.Equal(CloseCodes.PolicyViolation, await s2.WaitForCloseAsync());
        Assert.Contains("dance", s2.Socket.CloseStatusDescription);
    }

    [Fact]
    public async Task Oversized_message_closes_1009()
    {
        await using var gw = await TestGateway.StartAsync(o => o.Limits.MaxMessageBytes = 4096);
        await using var s = await gw.ConnectChannelsAsync();
        var big = "{\"type\":\"publish\",\"channel\":\"x\",\"data\":\"" + new string('a', 5000) + "\"}";
        await s.Socket.SendAsync(Encoding.UTF8.GetBytes(big), WebSocketMessageType.Text, true, CancellationToken.None);
        Assert.Equal(CloseCodes.MessageTooBig, await s.WaitForCloseAsync());
    }

    [Fact]
    public async Task Forbidden_channel_gives_an_error_message_and_keeps_the_connection()
    {
        await using var gw = await TestGateway.StartAsync();
        await using var s = await gw.ConnectChannelsAsync(gw.Token(channels: ["list:*"], publish: ["none"]));
        await s.SendJsonAsync(new { type = "subscribe", channel = "admin:1", id = "a" });
        var error = await s.ReceiveTypeAsync("error");
        Assert.Equal("forbidden", error.GetProperty("code").GetString());
        Assert.Equal("a", error.GetProperty("id").GetString());
        await s.SendJsonAsync(new { type = "publish", channel = "list:1", data = 1 });
        Assert.Equal("forbidden", (await s.ReceiveTypeAsync("error")).GetProperty("code").GetString());
        await s.SendJsonAsync(new { type = "subscribe", channel = "list:1" });
        Assert.Equal("subscribed", (await s.ReceiveJsonAsync()).GetProperty("type").GetString());
    }

    [Fact]
    public async Task Per_user_connection_limit_closes_4429_and_frees_on_close()
    {
        await using var gw = await TestGateway.StartAsync(o => o.Limits.MaxConnectionsPerUser = 2);
        var token = gw.Token("bob");
        var a = await gw.ConnectChannelsAsync(token);
        await using var b = await gw.ConnectChannelsAsync(token);
        await using (var c = await gw.ConnectAsync("api/v1/ws?token=" + token))
            Assert.Equal(CloseCodes.TooManyRequests, await c.WaitForCloseAsync());
        // Another user is not affected.
        await using (var other = await gw.ConnectChannelsAsync(gw.Token("carol"))) { }
        await a.DisposeAsync();
        await WaitUntilAsync(() => gw.Services.GetRequiredServiceCount("bob") < 2);
        await using var d = await gw.ConnectChannelsAsync(token);
    }

    [Fact]
    public async Task Connection_rate_per_ip_gives_429()
    {
        await using var gw = await TestGateway.StartAsync(o =>
        {
            o.Limits.ConnectionBurstPerIp = 3;
            o.Limits.ConnectionsPerIpPerSecond = 1;
        });
        var statuses = new List<HttpStatusCode>();
        for (var i = 0; i < 5; i++)
        {
            var ws = new ClientWebSocket();
            ws.Options.CollectHttpResponseDetails = true;
            try
            {
                await ws.ConnectAsync(new Uri(gw.WsBaseUri, "api/v1/ws?token=" + gw.Token()), CancellationToken.None);
                statuses.Add(ws.HttpStatusCode);
                ws.Abort();
            }
            catch (WebSocketException)
            {
                statuses.Add(ws.HttpStatusCode);
            }
            ws.Dispose();
        }
        Assert.Equal(3, statuses.Count(s => s == HttpStatusCode.SwitchingProtocols));
        Assert.Contains(HttpStatusCode.TooManyRequests, statuses);
    }

    [Fact]
    public async Task Foreign_origin_is_refused_403_and_allowed_origins_pass()
    {
        await using var gw = await TestGateway.StartAsync(o => o.AllowedOrigins = ["https://app.example.com"]);
        var ws = new ClientWebSocket();
        ws.Options.CollectHttpResponseDetails = true;
        ws.Options.SetRequestHeader("Origin", "https://evil.example.net");
        await Assert.ThrowsAsync<WebSocketException>(() => ws.ConnectAsync(new Uri(gw.WsBaseUri, "api/v1/ws?token=" + gw.Token()), CancellationToken.None));
        Assert.Equal(HttpStatusCode.Forbidden, ws.HttpStatusCode);
        ws.Dispose();

        await using var allowed = await gw.ConnectAsync("api/v1/ws?token=" + gw.Token(), o => o.SetRequestHeader("Origin", "https://app.example.com"));
        Assert.Equal("welcome", (await allowed.ReceiveJsonAsync()).GetProperty("type").GetString());
        await using var same = await gw.ConnectAsync("api/v1/ws?token=" + gw.Token(), o => o.SetRequestHeader("Origin", "http://" + gw.BaseUri.Authority));
        Assert.Equal("welcome", (await same.ReceiveJsonAsync()).GetProperty("type").GetString());
    }

    [Fact]
    public async Task Silent_client_is_closed_4000_after_heartbeat_timeout_and_answering_client_stays()
    {
        await using var gw = await TestGateway.StartAsync(o =>
        {
            // Short, but with slack for a loaded CI machine: the answering client has 2 s to pong.
            o.Heartbeat.Interval = TimeSpan.FromMilliseconds(250);
            o.Heartbeat.Timeout = TimeSpan.FromSeconds(2);
        });
        await using var silent = await gw.ConnectChannelsAsync();
        await using var polite = await gw.ConnectChannelsAsync();
        var answering = Task.Run(async () =>
        {
            while (true)
            {
                var m = await polite.ReceiveAsync(TimeSpan.FromSeconds(5));
                if (m is null)
                    return;
                if (Encoding.UTF8.GetString(m.Value.Data).Contains("\"ping\""))
                    await polite.SendTextAsync("{\"type\":\"pong\"}");
            }
        });
        Assert.Equal(CloseCodes.Stale, await silent.WaitForCloseAsync(TimeSpan.FromSeconds(10)));
        Assert.True(CloseCodes.ShouldReconnect(CloseCodes.Stale));
        await Task.Delay(500);
        Assert.Equal(WebSocketState.Open, polite.Socket.State);
    }

    [Fact]
    public async Task Slow_consumer_is_closed_4008_while_a_fast_one_gets_everything()
    {
        await using var gw = await TestGateway.StartAsync(o =>
        {
            o.Limits.MaxQueuedMessages = 64;
            o.Limits.MaxQueuedBytes = 256 * 1024;
            o.Limits.MaxMessageBytes = 64 * 1024;
        });
        // The slow client shrinks its receive buffer and never reads.
        await using var slow = await gw.ConnectAsync("api/v1/ws?token=" + gw.Token(), o => o.SetBuffer(1024, 1024));
        await slow.SendJsonAsync(new { type = "subscribe", channel = "flood" });
        await using var fast = await gw.ConnectChannelsAsync();
        await fast.SendJsonAsync(new { type = "subscribe", channel = "flood" });
        await fast.ReceiveTypeAsync("subscribed");
        await Task.Delay(200);

        var payload = new string('x', 8 * 1024);
        const int count = 3000;
        var reader = Task.Run(async () =>
        {
            var seen = 0L;
            while (seen < count)
            {
                var m = await fast.ReceiveJsonAsync(TimeSpan.FromSeconds(30));
                if (m.GetProperty("type").GetString() == "message")
                {
                    Assert.Equal(seen + 1, m.GetProperty("offset").GetInt64());
                    seen++;
                }
            }
            return seen;
        });
        var manager = (Switchboard.Server.Connections.ConnectionManager)gw.Services.GetService(typeof(Switchboard.Server.Connections.ConnectionManager))!;
        Task<int>? slowClose = null;
        for (var i = 0; i < count; i++)
        {
            await Channels.ChannelRecoveryTests.PublishAsync(gw, "flood", payload);
            if (slowClose is null && manager.Connections.Any(c => c.CloseCode == CloseCodes.SlowConsumer))
                slowClose = slow.WaitForCloseAsync(TimeSpan.FromSeconds(15)); // the slow reader now drains its socket and sees the close frame
        }
        Assert.Equal(count, await reader);
        Assert.NotNull(slowClose);
        Assert.Equal(CloseCodes.SlowConsumer, await slowClose);
    }

    [Fact]
    public async Task Shutdown_closes_every_socket_with_1001_after_flushing_queued_messages()
    {
        var gw = await TestGateway.StartAsync();
        var a = await gw.ConnectChannelsAsync();
        var b = await gw.ConnectChannelsAsync();
        await a.SendJsonAsync(new { type = "subscribe", channel = "s" });
        await a.ReceiveTypeAsync("subscribed");
        await Channels.ChannelRecoveryTests.PublishAsync(gw, "s", "last words");
        var stopwatch = System.Diagnostics.Stopwatch.StartNew();
        var stop = gw.App.StopAsync();
        var m = await a.ReceiveJsonAsync();
        Assert.Equal("last words", m.GetProperty("data").GetString());
        Assert.Equal(CloseCodes.GoingAway, await a.WaitForCloseAsync());
        Assert.Equal(CloseCodes.GoingAway, await b.WaitForCloseAsync());
        await a.DisposeAsync();
        await b.DisposeAsync();
        await stop;
        Assert.True(stopwatch.Elapsed < TimeSpan.FromSeconds(10), $"shutdown took {stopwatch.Elapsed}");
        await gw.DisposeAsync();
    }

    private static async Task WaitUntilAsync(Func<bool> condition)
    {
        for (var i = 0; i < 100 && !condition(); i++)
            await Task.Delay(50);
        Assert.True(condition());
    }
}

internal static class ServiceProviderExtensions
{
    public static int GetRequiredServiceCount(this IServiceProvider services, string subject) =>
        ((Switchboard.Server.Connections.ConnectionManager)services.GetService(typeof(Switchboard.Server.Connections.ConnectionManager))!).CountForUser(subject);
}

public sealed class ReviewRegressionTests
{
    [Fact]
    public async Task A_long_non_ascii_reason_still_closes_1008_with_a_reason_within_123_bytes()
    {
        await using var gw = await TestGateway.StartAsync();
        await using var s = await gw.ConnectChannelsAsync();
        await s.SendJsonAsync(new { type = new string('é', 200) });
        Assert.Equal(CloseCodes.PolicyViolation, await s.WaitForCloseAsync());
        Assert.True(Encoding.UTF8.GetByteCount(s.Socket.CloseStatusDescription!) <= 123);
    }

    [Fact]
    public async Task Http_publish_ignores_cookie_and_query_tokens()
    {
        await using var gw = await TestGateway.StartAsync();
        var token = gw.Token();
        using var viaQuery = new HttpRequestMessage(HttpMethod.Post, "api/v1/channels/c/messages?token=" + token)
        { Content = new StringContent("{\"data\":1}", Encoding.UTF8, "application/json") };
        Assert.Equal(HttpStatusCode.Unauthorized, (await gw.Http.SendAsync(viaQuery)).StatusCode);
        using var viaCookie = new HttpRequestMessage(HttpMethod.Post, "api/v1/channels/c/messages")
        { Content = new StringContent("{\"data\":1}", Encoding.UTF8, "application/json") };
        viaCookie.Headers.Add("Cookie", "switchboard_token=" + token);
        Assert.Equal(HttpStatusCode.Unauthorized, (await gw.Http.SendAsync(viaCookie)).StatusCode);
    }

    [Fact]
    public async Task Recovery_larger_than_the_connection_queue_says_recovered_false_instead_of_looping()
    {
        await using var gw = await TestGateway.StartAsync(o =>
        {
            o.Limits.MaxQueuedMessages = 32;
            o.Limits.MaxQueuedBytes = 128 * 1024;
            o.Limits.MaxMessageBytes = 64 * 1024;
        });
        var (_, epoch) = await Channels.ChannelRecoveryTests.PublishAsync(gw, "big", 0);
        for (var i = 0; i < 40; i++)
            await Channels.ChannelRecoveryTests.PublishAsync(gw, "big", i);
        await using var s = await gw.ConnectChannelsAsync();
        await s.SendJsonAsync(new { type = "subscribe", channel = "big", since = new { offset = 1, epoch } });
        var subscribed = await s.ReceiveTypeAsync("subscribed");
        Assert.False(subscribed.GetProperty("recovered").GetBoolean());
        Assert.Equal(WebSocketState.Open, s.Socket.State);
    }
}
