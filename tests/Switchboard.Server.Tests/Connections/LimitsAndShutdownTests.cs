using System.Globalization;
using System.Net.WebSockets;
using System.Text.RegularExpressions;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.DependencyInjection.Extensions;
using Switchboard.Protocol;
using Switchboard.Server.Connections;
using Switchboard.Server.Storage;
using Switchboard.Server.Tests.Channels;
using Switchboard.Server.Tests.Infrastructure;
using Switchboard.Storage.Sqlite;

namespace Switchboard.Server.Tests.Connections;

/// <summary>
/// Promises of docs/protocol.md about limits, the slow-consumer metrics, internal errors and the shutdown drain,
/// checked against a real gateway over real sockets.
/// </summary>
public sealed class LimitsAndShutdownTests
{
    [Fact]
    public async Task During_the_shutdown_drain_new_connections_and_healthz_get_503_while_the_listener_stays_open()
    {
        await using var gw = await TestGateway.StartAsync(o => o.ShutdownDrainTimeout = TimeSpan.FromSeconds(3));
        // Never reads again, so it never answers the server's 1001: the drain stays open until its timeout.
        await using var stuck = await gw.ConnectChannelsAsync();
        var stop = gw.App.StopAsync();

        // A new connection each time (no keep-alive reuse): the listener must still accept and answer.
        using var fresh = new HttpClient(new SocketsHttpHandler { PooledConnectionLifetime = TimeSpan.Zero }) { BaseAddress = gw.BaseUri };
        fresh.DefaultRequestHeaders.ConnectionClose = true;
        HttpResponseMessage health;
        var waited = System.Diagnostics.Stopwatch.StartNew();
        while (true)
        {
            health = await fresh.GetAsync("healthz");
            if (health.StatusCode == System.Net.HttpStatusCode.ServiceUnavailable || waited.Elapsed > TimeSpan.FromSeconds(2))
                break;
            health.Dispose();
            await Task.Delay(20);
        }
        using (health)
        {
            Assert.Equal(System.Net.HttpStatusCode.ServiceUnavailable, health.StatusCode);
            Assert.Equal("shutting down\n", await health.Content.ReadAsStringAsync());
        }

        using var late = new ClientWebSocket();
        late.Options.CollectHttpResponseDetails = true;
        await Assert.ThrowsAsync<WebSocketException>(() => late.ConnectAsync(new Uri(gw.WsBaseUri, "api/v1/ws?token=" + gw.Token()), CancellationToken.None));
        Assert.Equal(System.Net.HttpStatusCode.ServiceUnavailable, late.HttpStatusCode);

        Assert.False(stop.IsCompleted); // still draining the stuck client
        await stop.WaitAsync(TimeSpan.FromSeconds(10));
    }

    [Fact]
    public async Task Subscribing_beyond_the_limit_gives_too_many_subscriptions_and_earlier_subscriptions_keep_working()
    {
        await using var gw = await TestGateway.StartAsync(o => o.Limits.MaxSubscriptionsPerConnection = 3);
        await using var s = await gw.ConnectChannelsAsync();
        foreach (var channel in new[] { "a", "b", "c" })
        {
            await s.SendJsonAsync(new { type = "subscribe", channel, id = "s-" + channel });
            var subscribed = await s.ReceiveJsonAsync();
            Assert.Equal("subscribed", subscribed.GetProperty("type").GetString());
            Assert.Equal(channel, subscribed.GetProperty("channel").GetString());
        }

        // The fourth: an error message (documented code), not a close.
        await s.SendJsonAsync(new { type = "subscribe", channel = "d", id = "s-d" });
        var error = await s.ReceiveJsonAsync();
        Assert.Equal("error", error.GetProperty("type").GetString());
        Assert.Equal("too_many_subscriptions", error.GetProperty("code").GetString());
        Assert.Equal("d", error.GetProperty("channel").GetString());
        Assert.Equal("s-d", error.GetProperty("id").GetString());
        Assert.Equal(WebSocketState.Open, s.Socket.State);
        Assert.Null(s.CloseStatus);

        // "d" was not subscribed: its message never arrives; the earlier subscriptions still deliver.
        await ChannelRecoveryTests.PublishAsync(gw, "d", "not for you");
        await ChannelRecoveryTests.PublishAsync(gw, "a", "to a");
        await ChannelRecoveryTests.PublishAsync(gw, "c", "to c");
        var first = await s.ReceiveJsonAsync();
        Assert.Equal("message", first.GetProperty("type").GetString());
        Assert.Equal("a", first.GetProperty("channel").GetString());
        Assert.Equal("to a", first.GetProperty("data").GetString());
        var second = await s.ReceiveJsonAsync();
        Assert.Equal("c", second.GetProperty("channel").GetString());
        Assert.Equal("to c", second.GetProperty("data").GetString());

        // The limit counts current subscriptions: unsubscribing frees a slot.
        await s.SendJsonAsync(new { type = "unsubscribe", channel = "a" });
        Assert.Equal("unsubscribed", (await s.ReceiveJsonAsync()).GetProperty("type").GetString());
        await s.SendJsonAsync(new { type = "subscribe", channel = "d", id = "s-d2" });
        var resubscribed = await s.ReceiveJsonAsync();
        Assert.Equal("subscribed", resubscribed.GetProperty("type").GetString());
        Assert.Equal("d", resubscribed.GetProperty("channel").GetString());
        Assert.Equal(1, resubscribed.GetProperty("offset").GetInt64()); // the earlier publish to "d"
    }

    [Fact]
    public async Task Slow_consumer_close_is_counted_in_metrics_by_endpoint_and_close_code()
    {
        await using var gw = await TestGateway.StartAsync(o =>
        {
            o.Limits.MaxQueuedMessages = 16;
            o.Limits.MaxQueuedBytes = 128 * 1024;
            o.Limits.MaxMessageBytes = 64 * 1024;
        });
        var before = await gw.Api.GetStringAsync("metrics");
        Assert.Null(MetricValue(before, "switchboard_connections_slow_consumer_total{endpoint=\"channels\"}"));
        Assert.Null(MetricValue(before, "switchboard_connections_closed_total{endpoint=\"channels\",code=\"4008\"}"));

        // Reads its welcome and subscribed, then never reads again (small client buffer).
        await using var slow = await gw.ConnectAsync("api/v1/ws?token=" + gw.Token(), o => o.SetBuffer(1024, 1024));
        var welcome = await slow.ReceiveJsonAsync();
        var slowId = welcome.GetProperty("connectionId").GetString()!;
        await slow.SendJsonAsync(new { type = "subscribe", channel = "flood" });
        Assert.Equal("subscribed", (await slow.ReceiveJsonAsync()).GetProperty("type").GetString());

        var manager = gw.Services.GetRequiredService<ConnectionManager>();
        var payload = new string('x', 32 * 1024);
        Task<int>? slowClose = null;
        for (var i = 0; i < 3000 && slowClose is null; i++)
        {
            await ChannelRecoveryTests.PublishAsync(gw, "flood", payload);
            if (!manager.TryGet(slowId, out var connection) || connection!.CloseCode == CloseCodes.SlowConsumer)
                slowClose = slow.WaitForCloseAsync(TimeSpan.FromSeconds(15)); // read through the socket to the close frame
        }
        Assert.NotNull(slowClose);
        Assert.Equal(CloseCodes.SlowConsumer, await slowClose);
        await AnswerCloseAsync(slow);

        // The close is recorded when the connection ends: poll briefly.
        var text = "";
        for (var i = 0; i < 60; i++)
        {
            text = await gw.Api.GetStringAsync("metrics");
            if (MetricValue(text, "switchboard_connections_closed_total{endpoint=\"channels\",code=\"4008\"}") is not null)
                break;
            await Task.Delay(50);
        }
        Assert.Contains("# TYPE switchboard_connections_slow_consumer_total counter", text);
        Assert.Equal(1, MetricValue(text, "switchboard_connections_slow_consumer_total{endpoint=\"channels\"}"));
        Assert.Equal(1, MetricValue(text, "switchboard_connections_closed_total{endpoint=\"channels\",code=\"4008\"}"));
        Assert.Equal(0, MetricValue(text, "switchboard_connections_active{endpoint=\"channels\"}"));
    }

    [Fact]
    public async Task Handler_exception_closes_1011_and_the_server_keeps_serving_others()
    {
        // A real SQLite store, wrapped so that appends to one channel throw an unexpected (non-database) exception.
        await using var gw = await TestGateway.StartAsync(services: services =>
        {
            services.TryAddSingleton<SqliteChannelStore>();
            services.Replace(ServiceDescriptor.Singleton<IChannelStore>(sp => new FailingChannelStore(sp.GetRequiredService<SqliteChannelStore>(), "boom")));
        });
        await using var bystander = await gw.ConnectChannelsAsync();
        await bystander.SendJsonAsync(new { type = "subscribe", channel = "ok" });
        await bystander.ReceiveTypeAsync("subscribed");

        await using var victim = await gw.ConnectChannelsAsync();
        await victim.SendJsonAsync(new { type = "publish", channel = "boom", data = 1, id = "p1" });
        Assert.Equal(CloseCodes.InternalError, await victim.WaitForCloseAsync());
        await AnswerCloseAsync(victim);

        // Other connections, and new ones, are still served.
        await ChannelRecoveryTests.PublishAsync(gw, "ok", "after");
        var m = await bystander.ReceiveTypeAsync("message");
        Assert.Equal("ok", m.GetProperty("channel").GetString());
        Assert.Equal("after", m.GetProperty("data").GetString());
        await using var fresh = await gw.ConnectChannelsAsync();
        await fresh.SendJsonAsync(new { type = "publish", channel = "ok", data = "fresh", id = "p2" });
        var published = await fresh.ReceiveTypeAsync("published");
        Assert.Equal(2, published.GetProperty("offset").GetInt64());
        Assert.Equal("fresh", (await bystander.ReceiveTypeAsync("message")).GetProperty("data").GetString());
        Assert.Equal(WebSocketState.Open, bystander.Socket.State);

        var text = "";
        for (var i = 0; i < 60; i++)
        {
            text = await gw.Api.GetStringAsync("metrics");
            if (MetricValue(text, "switchboard_connections_closed_total{endpoint=\"channels\",code=\"1011\"}") is not null)
                break;
            await Task.Delay(50);
        }
        Assert.Equal(1, MetricValue(text, "switchboard_connections_closed_total{endpoint=\"channels\",code=\"1011\"}"));
    }

    /// <summary>Completes the close handshake the server started, so the server ends the connection at once.</summary>
    private static async Task AnswerCloseAsync(TestSocket socket)
    {
        if (socket.Socket.State == WebSocketState.CloseReceived)
            await socket.Socket.CloseOutputAsync(WebSocketCloseStatus.NormalClosure, "bye", CancellationToken.None);
    }

    /// <summary>The value of one exported series (exact name and labels), or null when it is not exported.</summary>
    private static double? MetricValue(string text, string series)
    {
        var match = Regex.Match(text, "(?m)^" + Regex.Escape(series) + @" (\S+)$");
        return match.Success ? double.Parse(match.Groups[1].Value, CultureInfo.InvariantCulture) : null;
    }

    /// <summary>The real store, except that appending to <paramref name="failing"/> throws an unexpected exception.</summary>
    private sealed class FailingChannelStore(IChannelStore inner, string failing) : IChannelStore
    {
        public ValueTask<ChannelPosition> GetPositionAsync(string channel, CancellationToken cancellationToken) =>
            inner.GetPositionAsync(channel, cancellationToken);

        public ValueTask<AppendResult> AppendAsync(string channel, ReadOnlyMemory<byte> data, int retain, CancellationToken cancellationToken) =>
            channel == failing
                ? throw new InvalidOperationException("injected failure")
                : inner.AppendAsync(channel, data, retain, cancellationToken);

        public ValueTask<ChannelHistory> ReadAsync(string channel, long afterOffset, int limit, CancellationToken cancellationToken) =>
            inner.ReadAsync(channel, afterOffset, limit, cancellationToken);

        public ValueTask<int> TrimOlderThanAsync(DateTimeOffset olderThan, CancellationToken cancellationToken) =>
            inner.TrimOlderThanAsync(olderThan, cancellationToken);
    }
}
