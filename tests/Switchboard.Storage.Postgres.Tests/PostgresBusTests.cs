using System.Security.Cryptography;
using System.Text;
using System.Threading.Channels;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Options;
using Npgsql;
using Switchboard.Server;
using Switchboard.Server.Nodes;
using Switchboard.Server.Storage;

namespace Switchboard.Storage.Postgres.Tests;

/// <summary>Two bus instances on one database behave as two nodes.</summary>
public sealed class PostgresBusTests(PostgresFixture fixture) : IClassFixture<PostgresFixture>, IAsyncLifetime
{
    private readonly List<ServiceProvider> _providers = [];
    private string _cs = "";

    public async Task InitializeAsync()
    {
        _cs = await fixture.CreateSchemaAsync();
        _ = await fixture.OpenAsync(_cs); // migrated schema (bus_payloads)
    }

    public async Task DisposeAsync()
    {
        foreach (var p in _providers)
            await p.DisposeAsync();
    }

    private async Task<(PostgresBus Bus, CatchUpProbe CatchUp)> StartNodeAsync(string nodeId, string channel = "bus_test")
    {
        var services = new ServiceCollection();
        services.AddLogging();
        services.AddMetrics();
        services.AddSingleton(TimeProvider.System);
        services.AddSingleton(_ => new PostgresDatabase(_cs)); // disposed with the provider
        services.AddSingleton(Options.Create(new SwitchboardOptions { NodeId = nodeId }));
        services.AddSingleton(Options.Create(new PostgresBusOptions { Channel = channel, ReconnectMinDelay = TimeSpan.FromMilliseconds(50) }));
        services.AddSingleton<BusMetrics>();
        services.AddSingleton<CatchUpProbe>();
        services.AddSingleton<IBusCatchUp>(sp => sp.GetRequiredService<CatchUpProbe>());
        services.AddSingleton<PostgresBus>();
        var provider = services.BuildServiceProvider();
        _providers.Add(provider);
        var bus = provider.GetRequiredService<PostgresBus>();
        using var timeout = new CancellationTokenSource(TimeSpan.FromSeconds(10));
        await bus.StartAsync(timeout.Token);
        return (bus, provider.GetRequiredService<CatchUpProbe>());
    }

    private static Channel<BusMessage> Collect(IMessageBus bus, string topic, out IDisposable subscription)
    {
        var received = Channel.CreateBounded<BusMessage>(100_000);
        subscription = bus.Subscribe(topic, (m, _) =>
        {
            received.Writer.TryWrite(new BusMessage(m.Topic, m.SourceNode, m.Payload.ToArray()));
            return ValueTask.CompletedTask;
        });
        return received;
    }

    private static async Task<BusMessage> NextAsync(Channel<BusMessage> channel, Func<BusMessage, bool>? where = null)
    {
        using var timeout = new CancellationTokenSource(TimeSpan.FromSeconds(10));
        while (true)
        {
            var m = await channel.Reader.ReadAsync(timeout.Token);
            if (where is null || where(m))
                return m;
        }
    }

    private static byte[] Bytes(string s) => Encoding.UTF8.GetBytes(s);

    [Fact]
    public async Task Messages_reach_the_other_node_in_order_per_topic_with_the_source_node()
    {
        var (a, _) = await StartNodeAsync("node-a");
        var (b, _) = await StartNodeAsync("node-b");
        var one = Collect(b, "t:one", out var s1);
        var all = Collect(b, "t:*", out var s2);
        for (var i = 0; i < 300; i++)
        {
            await a.PublishAsync("t:one", Bytes("1-" + i), default);
            await a.PublishAsync("t:two", Bytes("2-" + i), default);
        }
        for (var i = 0; i < 300; i++)
        {
            var m = await NextAsync(one);
            Assert.Equal("node-a", m.SourceNode);
            Assert.Equal("t:one", m.Topic);
            Assert.Equal("1-" + i, Encoding.UTF8.GetString(m.Payload.Span));
        }
        var next = new Dictionary<string, int> { ["t:one"] = 0, ["t:two"] = 0 };
        for (var i = 0; i < 600; i++)
        {
            var m = await NextAsync(all);
            var expected = (m.Topic == "t:one" ? "1-" : "2-") + next[m.Topic]++;
            Assert.Equal(expected, Encoding.UTF8.GetString(m.Payload.Span));
        }
        s1.Dispose();
        s2.Dispose();
    }

    [Fact]
    public async Task Own_messages_come_back_marked_with_this_node()
    {
        var (a, _) = await StartNodeAsync("node-a");
        var mine = Collect(a, "self", out _);
        await a.PublishAsync("self", Bytes("hello"), default);
        var m = await NextAsync(mine);
        Assert.Equal(a.NodeId, m.SourceNode);
        Assert.Equal("hello", Encoding.UTF8.GetString(m.Payload.Span));
    }

    [Fact]
    public async Task Binary_and_large_payloads_arrive_intact_and_large_ones_go_through_the_table()
    {
        var (a, _) = await StartNodeAsync("node-a");
        var (b, _) = await StartNodeAsync("node-b");
        var received = Collect(b, "big", out _);
        var small = RandomNumberGenerator.GetBytes(4000); // ~5.3 KB of base64: inline
        var large = RandomNumberGenerator.GetBytes(200_000);
        await a.PublishAsync("big", small, default);
        Assert.Equal(small, (await NextAsync(received)).Payload.ToArray());
        Assert.Equal(0, await CountPayloadRowsAsync());
        await a.PublishAsync("big", large, default);
        var m = await NextAsync(received);
        Assert.Equal("node-a", m.SourceNode);
        Assert.Equal(large, m.Payload.ToArray());
        Assert.Equal(1, await CountPayloadRowsAsync());
    }

    [Fact]
    public async Task Unsubscribed_handlers_receive_nothing_more()
    {
        var (a, _) = await StartNodeAsync("node-a");
        var (b, _) = await StartNodeAsync("node-b");
        var kept = Collect(b, "u", out _);
        var dropped = Collect(b, "u", out var subscription);
        await a.PublishAsync("u", Bytes("1"), default);
        await NextAsync(dropped);
        subscription.Dispose();
        await a.PublishAsync("u", Bytes("2"), default);
        await NextAsync(kept);
        Assert.Equal("2", Encoding.UTF8.GetString((await NextAsync(kept)).Payload.Span));
        Assert.False(dropped.Reader.TryRead(out _));
    }

    [Fact]
    public async Task Listener_killed_by_the_server_reconnects_then_runs_catch_up()
    {
        var (a, _) = await StartNodeAsync("node-a");
        var (b, catchUp) = await StartNodeAsync("node-b");
        var received = Collect(b, "r", out _);
        await a.PublishAsync("r", Bytes("before"), default);
        Assert.Equal("before", Encoding.UTF8.GetString((await NextAsync(received)).Payload.Span));
        var pid = b.ListenerProcessId;
        Assert.NotEqual(0, pid);

        await using (var admin = new NpgsqlConnection(_cs))
        {
            await admin.OpenAsync();
            await using var kill = new NpgsqlCommand("SELECT pg_terminate_backend($1)", admin) { Parameters = { new() { Value = pid } } };
            Assert.True((bool)(await kill.ExecuteScalarAsync())!);
        }
        await catchUp.Called.Task.WaitAsync(TimeSpan.FromSeconds(10));
        Assert.True(b.IsListening);
        Assert.Equal(1, b.Reconnects);
        Assert.NotEqual(pid, b.ListenerProcessId);

        await a.PublishAsync("r", Bytes("after"), default);
        Assert.Equal("after", Encoding.UTF8.GetString((await NextAsync(received)).Payload.Span));
    }

    private async Task<long> CountPayloadRowsAsync()
    {
        await using var connection = new NpgsqlConnection(_cs);
        await connection.OpenAsync();
        await using var cmd = new NpgsqlCommand("SELECT count(*) FROM bus_payloads", connection);
        return (long)(await cmd.ExecuteScalarAsync())!;
    }

    private sealed class CatchUpProbe : IBusCatchUp
    {
        public TaskCompletionSource Called { get; } = new(TaskCreationOptions.RunContinuationsAsynchronously);

        public Task CatchUpAsync(CancellationToken cancellationToken)
        {
            Called.TrySetResult();
            return Task.CompletedTask;
        }
    }
}
