using Microsoft.Extensions.DependencyInjection;
using Switchboard.Client.Channels;
using Switchboard.Client.Connections;
using Switchboard.Protocol;
using Switchboard.Server.Connections;
using Switchboard.Server.Tests.Infrastructure;

namespace Switchboard.Server.Tests.Channels;

public sealed class ChannelClientTests
{
    [Fact]
    public async Task Client_reconnects_after_a_drop_and_recovers_exactly_the_missed_messages()
    {
        await using var gw = await TestGateway.StartAsync();
        await using var client = new ChannelClient(gw.BaseUri, _ => ValueTask.FromResult(gw.Token()),
            new ReconnectPolicy { InitialDelay = TimeSpan.FromMilliseconds(300) });
        await client.ConnectAsync(CancellationToken.None);
        var events = client.Subscribe("list:9");
        await WaitForAsync(() => client.PositionOf("list:9")?.Epoch is { Length: > 0 });

        await ChannelRecoveryTests.PublishAsync(gw, "list:9", "a");
        Assert.Equal(1, (await ReadAsync(events)).Offset);

        // The server drops the connection (1011: retry with backoff); two messages are published meanwhile.
        var manager = gw.Services.GetRequiredService<ConnectionManager>();
        foreach (var c in manager.Connections)
            c.Close(CloseCodes.InternalError, "test drop", drain: false);
        await WaitForAsync(() => client.LastCloseCode == CloseCodes.InternalError);
        await ChannelRecoveryTests.PublishAsync(gw, "list:9", "b");
        await ChannelRecoveryTests.PublishAsync(gw, "list:9", "c");

        var b = await ReadAsync(events);
        var c2 = await ReadAsync(events);
        Assert.Equal((2L, "b"), (b.Offset, b.Data.GetString()));
        Assert.Equal((3L, "c"), (c2.Offset, c2.Data.GetString()));
        Assert.False(b.IsReset);
        Assert.Equal(2, client.Connections);

        await ChannelRecoveryTests.PublishAsync(gw, "list:9", "d");
        Assert.Equal(4, (await ReadAsync(events)).Offset);
    }

    [Fact]
    public async Task Client_stops_reconnecting_after_4401()
    {
        await using var gw = await TestGateway.StartAsync();
        var calls = 0;
        await using var client = new ChannelClient(gw.BaseUri, _ =>
        {
            calls++;
            return ValueTask.FromResult(calls == 1 ? gw.Token() : "expired-or-bad");
        }, new ReconnectPolicy { InitialDelay = TimeSpan.FromMilliseconds(50) });
        await client.ConnectAsync(CancellationToken.None);
        foreach (var c in gw.Services.GetRequiredService<ConnectionManager>().Connections)
            c.Close(CloseCodes.GoingAway, "restart", drain: false);
        await client.Completion.WaitAsync(TimeSpan.FromSeconds(10));
        Assert.Equal(CloseCodes.Unauthorized, client.LastCloseCode);
        Assert.Equal(2, calls);
    }

    private static async Task<ChannelEvent> ReadAsync(System.Threading.Channels.ChannelReader<ChannelEvent> reader)
    {
        using var cts = new CancellationTokenSource(TimeSpan.FromSeconds(10));
        return await reader.ReadAsync(cts.Token);
    }

    private static async Task WaitForAsync(Func<bool> condition)
    {
        for (var i = 0; i < 200 && !condition(); i++)
            await Task.Delay(25);
        Assert.True(condition());
    }
}
