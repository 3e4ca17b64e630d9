using System.Net;
using System.Net.Http.Headers;
using System.Net.Http.Json;
using System.Security.Cryptography;
using System.Text;
using System.Text.Json;
using Switchboard.Server.Tests.Infrastructure;

namespace Switchboard.Server.Tests.Channels;

public sealed class ChannelHttpTests
{
    [Fact]
    public async Task Publish_requires_credentials_and_validates_input()
    {
        await using var gw = await TestGateway.StartAsync();
        var anonymous = await gw.Http.PostAsJsonAsync("api/v1/channels/c/messages", new { data = 1 });
        Assert.Equal(HttpStatusCode.Unauthorized, anonymous.StatusCode);

        using var wrongKey = new HttpRequestMessage(HttpMethod.Post, "api/v1/channels/c/messages") { Content = JsonContent.Create(new { data = 1 }) };
        wrongKey.Headers.Authorization = new AuthenticationHeaderValue("Bearer", "not-the-key-not-the-key");
        Assert.Equal(HttpStatusCode.Unauthorized, (await gw.Http.SendAsync(wrongKey)).StatusCode);

        var noData = await gw.Api.PostAsync("api/v1/channels/c/messages", new StringContent("{}", Encoding.UTF8, "application/json"));
        Assert.Equal(HttpStatusCode.BadRequest, noData.StatusCode);
        var badJson = await gw.Api.PostAsync("api/v1/channels/c/messages", new StringContent("{oops", Encoding.UTF8, "application/json"));
        Assert.Equal(HttpStatusCode.BadRequest, badJson.StatusCode);
        var badName = await gw.Api.PostAsJsonAsync("api/v1/channels/a*b/messages", new { data = 1 });
        Assert.Equal(HttpStatusCode.BadRequest, badName.StatusCode);

        // A JWT with a publish grant may publish to matching channels only.
        using var jwt = new HttpRequestMessage(HttpMethod.Post, "api/v1/channels/list:1/messages") { Content = JsonContent.Create(new { data = 1 }) };
        jwt.Headers.Authorization = new AuthenticationHeaderValue("Bearer", gw.Token(publish: ["list:*"]));
        Assert.Equal(HttpStatusCode.OK, (await gw.Http.SendAsync(jwt)).StatusCode);
        using var jwtOther = new HttpRequestMessage(HttpMethod.Post, "api/v1/channels/admin/messages") { Content = JsonContent.Create(new { data = 1 }) };
        jwtOther.Headers.Authorization = new AuthenticationHeaderValue("Bearer", gw.Token(publish: ["list:*"]));
        Assert.Equal(HttpStatusCode.Forbidden, (await gw.Http.SendAsync(jwtOther)).StatusCode);
    }

    [Fact]
    public async Task Oversized_http_publish_is_413()
    {
        await using var gw = await TestGateway.StartAsync(o => o.Limits.MaxHttpBodyBytes = 2048);
        var response = await gw.Api.PostAsJsonAsync("api/v1/channels/c/messages", new { data = new string('a', 4000) });
        Assert.Equal(HttpStatusCode.RequestEntityTooLarge, response.StatusCode);
    }

    [Fact]
    public async Task History_endpoint_returns_messages_after_since()
    {
        await using var gw = await TestGateway.StartAsync();
        for (var i = 1; i <= 4; i++)
            await ChannelRecoveryTests.PublishAsync(gw, "h", new { n = i });
        var body = await gw.Api.GetFromJsonAsync<JsonElement>("api/v1/channels/h/messages?since=2");
        Assert.Equal(4, body.GetProperty("offset").GetInt64());
        Assert.True(body.GetProperty("recovered").GetBoolean());
        var messages = body.GetProperty("messages").EnumerateArray().ToList();
        Assert.Equal([3L, 4L], messages.Select(m => m.GetProperty("offset").GetInt64()));
        Assert.Equal(3, messages[0].GetProperty("data").GetProperty("n").GetInt32());
        Assert.Equal(HttpStatusCode.Unauthorized, (await gw.Http.GetAsync("api/v1/channels/h/messages")).StatusCode);
    }

    [Fact]
    public async Task Exclude_connection_skips_the_publishers_own_socket()
    {
        await using var gw = await TestGateway.StartAsync();
        await using var author = await gw.ConnectChannelsAsync();
        await using var viewer = await gw.ConnectChannelsAsync();
        foreach (var s in new[] { author, viewer })
        {
            await s.SendJsonAsync(new { type = "subscribe", channel = "list:7" });
            await s.ReceiveTypeAsync("subscribed");
        }
        var response = await gw.Api.PostAsJsonAsync("api/v1/channels/list:7/messages", new { data = "edit", excludeConnection = author.ConnectionId });
        response.EnsureSuccessStatusCode();
        await ChannelRecoveryTests.PublishAsync(gw, "list:7", "second");
        Assert.Equal(1, (await viewer.ReceiveJsonAsync()).GetProperty("offset").GetInt64());
        // The author's first message is the second publish: the first was excluded.
        Assert.Equal(2, (await author.ReceiveJsonAsync()).GetProperty("offset").GetInt64());
    }

    [Fact]
    public async Task Fan_out_to_many_subscribers_delivers_every_message_in_order_to_each()
    {
        // 40 subscribers: the fan-out starts their senders in several chunks (SenderStarts), concurrently with
        // publishes from four HTTP clients; one subscriber is excluded from every fifth message.
        await using var gw = await TestGateway.StartAsync();
        var subscribers = new List<TestSocket>();
        for (var i = 0; i < 40; i++)
        {
            var s = await gw.ConnectChannelsAsync();
            await s.SendJsonAsync(new { type = "subscribe", channel = "fan" });
            await s.ReceiveTypeAsync("subscribed");
            subscribers.Add(s);
        }
        var excluded = subscribers[17];
        var excludedOffsets = new System.Collections.Concurrent.ConcurrentBag<long>();
        await Task.WhenAll(Enumerable.Range(0, 4).Select(async p =>
        {
            for (var k = 0; k < 30; k++)
            {
                var exclude = k % 5 == 0 ? excluded.ConnectionId : null;
                var response = await gw.Api.PostAsJsonAsync("api/v1/channels/fan/messages", new { data = new { p, k }, excludeConnection = exclude });
                response.EnsureSuccessStatusCode();
                if (exclude is not null)
                    excludedOffsets.Add((await response.Content.ReadFromJsonAsync<JsonElement>()).GetProperty("offset").GetInt64());
            }
        }));
        Assert.Equal(24, excludedOffsets.Count);
        await Task.WhenAll(subscribers.Select(async s =>
        {
            var expected = Enumerable.Range(1, 120).Select(o => (long)o).Where(o => s != excluded || !excludedOffsets.Contains(o)).ToList();
            var received = new List<long>();
            while (received.Count < expected.Count)
                received.Add((await s.ReceiveTypeAsync("message")).GetProperty("offset").GetInt64());
            Assert.Equal(expected, received);
        }));
        foreach (var s in subscribers)
            await s.DisposeAsync();
    }

    [Fact]
    public async Task Websocket_publish_replies_published_and_reaches_subscribers_in_order()
    {
        await using var gw = await TestGateway.StartAsync();
        await using var sub = await gw.ConnectChannelsAsync();
        await sub.SendJsonAsync(new { type = "subscribe", channel = "room:1" });
        await sub.ReceiveTypeAsync("subscribed");
        var publishers = new List<TestSocket>();
        for (var i = 0; i < 4; i++)
            publishers.Add(await gw.ConnectChannelsAsync());
        await Task.WhenAll(publishers.Select(async (p, i) =>
        {
            for (var k = 0; k < 25; k++)
            {
                await p.SendJsonAsync(new { type = "publish", channel = "room:1", data = new { p = i, k }, id = $"{i}-{k}" });
                var ack = await p.ReceiveTypeAsync("published");
                Assert.Equal($"{i}-{k}", ack.GetProperty("id").GetString());
            }
        }));
        var last = new int[4];
        for (var expected = 1; expected <= 100; expected++)
        {
            var m = await sub.ReceiveJsonAsync();
            Assert.Equal(expected, m.GetProperty("offset").GetInt64());
            var p = m.GetProperty("data").GetProperty("p").GetInt32();
            var k = m.GetProperty("data").GetProperty("k").GetInt32();
            Assert.Equal(last[p], k); // each publisher's messages arrive in its publish order
            last[p] = k + 1;
        }
        foreach (var p in publishers)
            await p.DisposeAsync();
    }

    [Fact]
    public async Task Sse_streams_with_offset_and_epoch_as_ids_and_resumes_from_last_event_id()
    {
        await using var gw = await TestGateway.StartAsync();
        await ChannelRecoveryTests.PublishAsync(gw, "feed", "one");
        await ChannelRecoveryTests.PublishAsync(gw, "feed", "two");
        using var request = new HttpRequestMessage(HttpMethod.Get, "api/v1/sse?channel=feed&token=" + gw.Token());
        request.Headers.Add("Last-Event-ID", "1");
        using var response = await gw.Http.SendAsync(request, HttpCompletionOption.ResponseHeadersRead);
        Assert.Equal("text/event-stream", response.Content.Headers.ContentType?.MediaType);
        using var reader = new StreamReader(await response.Content.ReadAsStreamAsync());
        var subscribed = await ReadEventAsync(reader);
        Assert.Equal("subscribed", subscribed.Event);
        var hello = JsonDocument.Parse(subscribed.Data).RootElement;
        Assert.True(hello.GetProperty("recovered").GetBoolean());
        var epoch = hello.GetProperty("epoch").GetString();
        Assert.False(string.IsNullOrEmpty(epoch));
        var missed = await ReadEventAsync(reader);
        Assert.Equal(($"2:{epoch}", "message"), (missed.Id, missed.Event));
        Assert.Equal("two", JsonDocument.Parse(missed.Data).RootElement.GetProperty("data").GetString());
        await ChannelRecoveryTests.PublishAsync(gw, "feed", "three");
        var live = await ReadEventAsync(reader);
        Assert.Equal($"3:{epoch}", live.Id);

        // The browser's automatic Last-Event-ID (OFFSET:EPOCH) resumes exactly after it.
        using var resume = new HttpRequestMessage(HttpMethod.Get, "api/v1/sse?channel=feed&token=" + gw.Token());
        resume.Headers.Add("Last-Event-ID", $"2:{epoch}");
        using var resumed = await gw.Http.SendAsync(resume, HttpCompletionOption.ResponseHeadersRead);
        using var resumedReader = new StreamReader(await resumed.Content.ReadAsStreamAsync());
        Assert.True(JsonDocument.Parse((await ReadEventAsync(resumedReader)).Data).RootElement.GetProperty("recovered").GetBoolean());
        Assert.Equal($"3:{epoch}", (await ReadEventAsync(resumedReader)).Id);

        // An id from another epoch (history was reset since) is never resumed silently.
        using var stale = new HttpRequestMessage(HttpMethod.Get, "api/v1/sse?channel=feed&token=" + gw.Token());
        stale.Headers.Add("Last-Event-ID", "2:not-this-epoch");
        using var staleResponse = await gw.Http.SendAsync(stale, HttpCompletionOption.ResponseHeadersRead);
        using var staleReader = new StreamReader(await staleResponse.Content.ReadAsStreamAsync());
        Assert.False(JsonDocument.Parse((await ReadEventAsync(staleReader)).Data).RootElement.GetProperty("recovered").GetBoolean());

        Assert.Equal(HttpStatusCode.BadRequest, (await gw.Http.GetAsync("api/v1/sse?channel=feed&since=x:1&token=" + gw.Token())).StatusCode);
        Assert.Equal(HttpStatusCode.BadRequest, (await gw.Http.GetAsync("api/v1/sse?channel=feed&since=2:&token=" + gw.Token())).StatusCode);
        var denied = await gw.Http.GetAsync("api/v1/sse?channel=feed&token=" + gw.Token(channels: ["other"]));
        Assert.Equal(HttpStatusCode.Forbidden, denied.StatusCode);
        Assert.Equal(HttpStatusCode.Unauthorized, (await gw.Http.GetAsync("api/v1/sse?channel=feed")).StatusCode);
    }

    [Fact]
    public async Task Sse_streams_count_against_the_per_user_connection_limit_with_websockets()
    {
        await using var gw = await TestGateway.StartAsync(o => o.Limits.MaxConnectionsPerUser = 2);
        await using var ws = await gw.ConnectChannelsAsync(gw.Token("bob"));
        using var first = await gw.Http.GetAsync("api/v1/sse?channel=feed&token=" + gw.Token("bob"), HttpCompletionOption.ResponseHeadersRead);
        Assert.Equal(HttpStatusCode.OK, first.StatusCode);
        using var second = await gw.Http.GetAsync("api/v1/sse?channel=feed&token=" + gw.Token("bob"), HttpCompletionOption.ResponseHeadersRead);
        Assert.Equal((HttpStatusCode)429, second.StatusCode);
        Assert.NotNull(second.Headers.RetryAfter);
        Assert.Contains("too_many_connections", await second.Content.ReadAsStringAsync());
        // Another user is not affected, and closing the stream frees its slot.
        using (var other = await gw.Http.GetAsync("api/v1/sse?channel=feed&token=" + gw.Token("carol"), HttpCompletionOption.ResponseHeadersRead))
            Assert.Equal(HttpStatusCode.OK, other.StatusCode);
        first.Dispose();
        var manager = (Switchboard.Server.Connections.ConnectionManager)gw.Services.GetService(typeof(Switchboard.Server.Connections.ConnectionManager))!;
        var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(10);
        while (manager.CountForUser("bob") > 1 && DateTime.UtcNow < deadline)
            await Task.Delay(20);
        using var third = await gw.Http.GetAsync("api/v1/sse?channel=feed&token=" + gw.Token("bob"), HttpCompletionOption.ResponseHeadersRead);
        Assert.Equal(HttpStatusCode.OK, third.StatusCode);
    }

    private static async Task<(string? Id, string? Event, string Data)> ReadEventAsync(StreamReader reader)
    {
        using var cts = new CancellationTokenSource(TimeSpan.FromSeconds(10));
        string? id = null, ev = null;
        var data = new StringBuilder();
        while (true)
        {
            var line = await reader.ReadLineAsync(cts.Token) ?? throw new EndOfStreamException();
            if (line.Length == 0)
            {
                if (data.Length > 0)
                    return (id, ev, data.ToString());
                continue;
            }
            if (line.StartsWith(':'))
                continue;
            if (line.StartsWith("id: ", StringComparison.Ordinal)) id = line[4..];
            else if (line.StartsWith("event: ", StringComparison.Ordinal)) ev = line[7..];
            else if (line.StartsWith("data: ", StringComparison.Ordinal)) data.Append(line[6..]);
        }
    }

    [Fact]
    public async Task GitHub_webhook_with_valid_signature_publishes_and_bad_signature_is_401()
    {
        const string secret = "webhook-secret";
        await using var gw = await TestGateway.StartAsync(o => o.Auth.GitHubWebhookSecret = secret);
        await using var sub = await gw.ConnectChannelsAsync();
        await sub.SendJsonAsync(new { type = "subscribe", channel = "github:acme/app" });
        await sub.ReceiveTypeAsync("subscribed");

        var payload = "{\"action\":\"opened\",\"repository\":{\"full_name\":\"acme/app\"}}"u8.ToArray();
        var bad = Send(payload, "sha256=" + new string('0', 64));
        Assert.Equal(HttpStatusCode.Unauthorized, (await gw.Http.SendAsync(bad)).StatusCode);
        var missing = Send(payload, "");
        Assert.Equal(HttpStatusCode.Unauthorized, (await gw.Http.SendAsync(missing)).StatusCode);

        var good = Send(payload, "sha256=" + Convert.ToHexStringLower(HMACSHA256.HashData(Encoding.UTF8.GetBytes(secret), payload)));
        var response = await gw.Http.SendAsync(good);
        Assert.Equal(HttpStatusCode.OK, response.StatusCode);
        var m = await sub.ReceiveJsonAsync();
        Assert.Equal(1, m.GetProperty("offset").GetInt64()); // the bad deliveries published nothing
        Assert.Equal("pull_request", m.GetProperty("data").GetProperty("event").GetString());
        Assert.Equal("opened", m.GetProperty("data").GetProperty("payload").GetProperty("action").GetString());

        static HttpRequestMessage Send(byte[] body, string signature)
        {
            var r = new HttpRequestMessage(HttpMethod.Post, "api/v1/webhooks/github") { Content = new ByteArrayContent(body) };
            r.Headers.Add("X-GitHub-Event", "pull_request");
            r.Headers.Add("X-GitHub-Delivery", Guid.NewGuid().ToString());
            if (signature.Length > 0)
                r.Headers.Add("X-Hub-Signature-256", signature);
            return r;
        }
    }
}
