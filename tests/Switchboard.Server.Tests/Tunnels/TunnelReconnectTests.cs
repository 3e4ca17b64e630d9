using System.Net;
using System.Net.Http.Json;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.DependencyInjection.Extensions;
using Switchboard.Client.Tunnels;
using Switchboard.Server.Tests.Infrastructure;
using Switchboard.Server.Tunnels;
using Switchboard.Storage.Sqlite.Tunnels;

namespace Switchboard.Server.Tests.Tunnels;

/// <summary>An agent reconnecting while public traffic keeps arriving for its name.</summary>
public sealed class TunnelReconnectTests
{
    [Fact]
    public async Task Requests_arriving_during_a_slow_handshake_never_reach_the_agent_before_its_ack()
    {
        // The registry write of the handshake takes 400 ms (a slow or busy store): the window in which a public request
        // can find the new session while the handshake is still running.
        var slow = new SlowRegistration();
        await using var gateway = await TestGateway.StartAsync(services: s =>
            s.Replace(ServiceDescriptor.Singleton<ITunnelRegistry>(sp => new SlowRegistry(ActivatorUtilities.CreateInstance<SqliteTunnelRegistry>(sp), slow))));
        await using var local = await LocalApp.StartAsync();
        var token = gateway.Token("agent", tunnels: ["*"]);
        TunnelAgentOptions Options() => new() { Server = gateway.BaseUri, LocalTarget = local.Uri, Token = token, Subdomain = "steady" };
        await using var first = new TunnelAgent(Options());
        await first.StartAsync(CancellationToken.None);

        using var client = new HttpClient { BaseAddress = gateway.BaseUri };
        using var stop = new CancellationTokenSource();
        var statuses = new System.Collections.Concurrent.ConcurrentBag<HttpStatusCode>();
        var traffic = Task.Run(async () =>
        {
            while (!stop.IsCancellationRequested)
            {
                try
                {
                    using var r = await client.GetAsync("t/steady/hello", stop.Token);
                    statuses.Add(r.StatusCode);
                }
                catch (OperationCanceledException) when (stop.IsCancellationRequested)
                {
                }
            }
        });
        await Task.Delay(200);

        // A second connection for the same name and token replaces the first (what a reconnect does), with requests
        // flowing the whole time; its handshake is the slow one.
        slow.Delay = TimeSpan.FromMilliseconds(400);
        await using var second = new TunnelAgent(Options());
        var (ack, _) = await second.StartAsync(CancellationToken.None);
        Assert.Equal("steady", ack.Name);
        await Task.Delay(700); // the gateway's slow registry write runs after the ack; requests keep flowing meanwhile
        slow.Delay = TimeSpan.Zero;
        await stop.CancelAsync();
        await traffic;

        Assert.True(slow.Delayed > 0, "the handshake was not slowed down: the test did not exercise the window");
        Assert.Contains(HttpStatusCode.OK, statuses);
        // After the replacement the tunnel still serves.
        using var after = await client.GetAsync("t/steady/hello");
        Assert.Equal(HttpStatusCode.OK, after.StatusCode);
    }

    [Fact]
    public async Task Public_clients_dropping_mid_download_never_break_the_agents_connection()
    {
        // Every dropped download makes the gateway send an abort for its stream while the agent is busy sending that
        // stream's body frames. A stream's cancellation must stop only that stream: cancelling a WebSocket send in
        // flight would abort the agent's whole connection (1006) and every other request on it.
        await using var h = await TunnelHarness.StartAsync();
        var before = await ConnectionIdAsync(h);
        using var client = new HttpClient(new SocketsHttpHandler { MaxConnectionsPerServer = 100 }) { BaseAddress = h.Gateway.BaseUri };
        for (var round = 0; round < 4; round++)
        {
            await Task.WhenAll(Enumerable.Range(0, 24).Select(async i =>
            {
                using var cts = new CancellationTokenSource();
                try
                {
                    using var response = await client.GetAsync(h.Path("/download?size=" + (8 << 20)), HttpCompletionOption.ResponseHeadersRead, cts.Token);
                    await using var body = await response.Content.ReadAsStreamAsync(cts.Token);
                    var buffer = new byte[64 * 1024];
                    long read = 0;
                    var stopAt = (i % 6 + 1) * 200_000; // drop at different points of the body
                    while (read < stopAt)
                    {
                        var n = await body.ReadAsync(buffer, cts.Token);
                        if (n == 0)
                            break;
                        read += n;
                    }
                    await cts.CancelAsync(); // the public client goes away mid-body
                }
                catch (OperationCanceledException)
                {
                }
            }));
        }
        // Same agent connection as before, and it still serves.
        Assert.Equal(before, await ConnectionIdAsync(h));
        using var ok = await client.GetAsync(h.Path("/hello"));
        Assert.Equal(HttpStatusCode.OK, ok.StatusCode);
    }

    private static async Task<string> ConnectionIdAsync(TunnelHarness h)
    {
        var list = await h.Gateway.Api.GetFromJsonAsync<System.Text.Json.JsonElement>("api/v1/tunnels");
        var tunnel = list.GetProperty("tunnels").EnumerateArray().Single(t => t.GetProperty("name").GetString() == h.Ack!.Name);
        return tunnel.GetProperty("connectionId").GetString()!;
    }

    private sealed class SlowRegistration
    {
        public TimeSpan Delay { get; set; }
        public int Delayed;
    }

    private sealed class SlowRegistry(ITunnelRegistry inner, SlowRegistration slow) : ITunnelRegistry
    {
        public async ValueTask RegisterAsync(TunnelRegistration registration, CancellationToken cancellationToken)
        {
            if (slow.Delay > TimeSpan.Zero)
            {
                Interlocked.Increment(ref slow.Delayed);
                await Task.Delay(slow.Delay, cancellationToken);
            }
            await inner.RegisterAsync(registration, cancellationToken);
        }

        public ValueTask<string> ReserveAsync(string name, string owner, DateTimeOffset at, CancellationToken cancellationToken) => inner.ReserveAsync(name, owner, at, cancellationToken);
        public ValueTask<bool> UnregisterAsync(string name, string connectionId, CancellationToken cancellationToken) => inner.UnregisterAsync(name, connectionId, cancellationToken);
        public ValueTask<int> RemoveNodeAsync(string nodeId, CancellationToken cancellationToken) => inner.RemoveNodeAsync(nodeId, cancellationToken);
        public ValueTask<TunnelRegistration?> GetAsync(string name, CancellationToken cancellationToken) => inner.GetAsync(name, cancellationToken);
        public ValueTask<IReadOnlyList<TunnelRegistration>> ListAsync(CancellationToken cancellationToken) => inner.ListAsync(cancellationToken);
        public ValueTask CreateTokenAsync(AgentTokenRecord token, CancellationToken cancellationToken) => inner.CreateTokenAsync(token, cancellationToken);
        public ValueTask<AgentTokenRecord?> FindTokenAsync(byte[] hash, CancellationToken cancellationToken) => inner.FindTokenAsync(hash, cancellationToken);
        public ValueTask<IReadOnlyList<AgentTokenRecord>> ListTokensAsync(CancellationToken cancellationToken) => inner.ListTokensAsync(cancellationToken);
        public ValueTask<bool> RevokeTokenAsync(string id, DateTimeOffset at, CancellationToken cancellationToken) => inner.RevokeTokenAsync(id, at, cancellationToken);
    }
}
