using System.Net;
using System.Net.Http.Json;
using System.Text.Json;
using Switchboard.Server.Tests.Infrastructure;

namespace Switchboard.Server.Tests.Channels;

public sealed class ChannelRecoveryTests
{
    internal static async Task<(long Offset, string Epoch)> PublishAsync(TestGateway gw, string channel, object data)
    {
        var response = await gw.Api.PostAsJsonAsync($"api/v1/channels/{Uri.EscapeDataString(channel)}/messages", new { data });
        Assert.Equal(HttpStatusCode.OK, response.StatusCode);
        var body = await response.Content.ReadFromJsonAsync<JsonElement>();
        return (body.GetProperty("offset").GetInt64(), body.GetProperty("epoch").GetString()!);
    }

    [Fact]
    public async Task Subscriber_receives_http_publish_with_increasing_offsets()
    {
        await using var gw = await TestGateway.StartAsync();
        await using var client = await gw.ConnectChannelsAsync();
        await client.SendJsonAsync(new { type = "subscribe", channel = "list:42" });
        var subscribed = await client.ReceiveTypeAsync("subscribed");
        Assert.Equal(0, subscribed.GetProperty("offset").GetInt64());
        Assert.False(subscribed.TryGetProperty("recovered", out _));

        var first = await PublishAsync(gw, "list:42", new { title = "milk" });
        var second = await PublishAsync(gw, "list:42", new { title = "eggs" });
        Assert.Equal(1, first.Offset);
        Assert.Equal(2, second.Offset);
        Assert.Equal(subscribed.GetProperty("epoch").GetString(), first.Epoch);

        var m1 = await client.ReceiveTypeAsync("message");
        var m2 = await client.ReceiveTypeAsync("message");
        Assert.Equal("list:42", m1.GetProperty("channel").GetString());
        Assert.Equal(1, m1.GetProperty("offset").GetInt64());
        Assert.Equal("milk", m1.GetProperty("data").GetProperty("title").GetString());
        Assert.Equal(2, m2.GetProperty("offset").GetInt64());
    }

    [Fact]
    public async Task Reconnect_with_since_gets_exactly_the_missed_messages_then_live()
    {
        await using var gw = await TestGateway.StartAsync();
        var (_, epoch) = await PublishAsync(gw, "list:1", "a");
        await using (var first = await gw.ConnectChannelsAsync())
        {
            await first.SendJsonAsync(new { type = "subscribe", channel = "list:1" });
            var s = await first.ReceiveTypeAsync("subscribed");
            Assert.Equal(1, s.GetProperty("offset").GetInt64());
        }
        await PublishAsync(gw, "list:1", "b");
        await PublishAsync(gw, "list:1", "c");

        await using var second = await gw.ConnectChannelsAsync();
        await second.SendJsonAsync(new { type = "subscribe", channel = "list:1", since = new { offset = 1, epoch } });
        var subscribed = await second.ReceiveTypeAsync("subscribed");
        Assert.True(subscribed.GetProperty("recovered").GetBoolean());
        Assert.Equal(3, subscribed.GetProperty("offset").GetInt64());
        var b = await second.ReceiveJsonAsync();
        var c = await second.ReceiveJsonAsync();
        Assert.Equal(("b", 2L), (b.GetProperty("data").GetString(), b.GetProperty("offset").GetInt64()));
        Assert.Equal(("c", 3L), (c.GetProperty("data").GetString(), c.GetProperty("offset").GetInt64()));

        await PublishAsync(gw, "list:1", "d");
        var d = await second.ReceiveJsonAsync();
        Assert.Equal(4, d.GetProperty("offset").GetInt64());
    }

    [Fact]
    public async Task Recovery_beyond_history_or_with_another_epoch_says_recovered_false()
    {
        await using var gw = await TestGateway.StartAsync(o => o.Channels.HistorySize = 3);
        var (_, epoch) = await PublishAsync(gw, "c", 1);
        for (var i = 2; i <= 6; i++)
            await PublishAsync(gw, "c", i);

        await using var client = await gw.ConnectChannelsAsync();
        await client.SendJsonAsync(new { type = "subscribe", channel = "c", since = new { offset = 1, epoch } });
        var s = await client.ReceiveTypeAsync("subscribed");
        Assert.False(s.GetProperty("recovered").GetBoolean());
        Assert.Equal(6, s.GetProperty("offset").GetInt64());

        await client.SendJsonAsync(new { type = "subscribe", channel = "d", since = new { offset = 0, epoch = "not-the-epoch" } });
        var s2 = await client.ReceiveTypeAsync("subscribed");
        Assert.False(s2.GetProperty("recovered").GetBoolean());

        // Within history: recovered.
        await client.SendJsonAsync(new { type = "unsubscribe", channel = "c" });
        await client.ReceiveTypeAsync("unsubscribed");
        await client.SendJsonAsync(new { type = "subscribe", channel = "c", since = new { offset = 4, epoch } });
        var s3 = await client.ReceiveTypeAsync("subscribed");
        Assert.True(s3.GetProperty("recovered").GetBoolean());
        Assert.Equal(5, (await client.ReceiveJsonAsync()).GetProperty("offset").GetInt64());
        Assert.Equal(6, (await client.ReceiveJsonAsync()).GetProperty("offset").GetInt64());
    }
}
