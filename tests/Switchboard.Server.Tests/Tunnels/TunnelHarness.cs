using Microsoft.Extensions.DependencyInjection;
using Switchboard.Client.Tunnels;
using Switchboard.Protocol.Tunnels;
using Switchboard.Server.Tests.Infrastructure;
using Switchboard.Server.Tunnels;

namespace Switchboard.Server.Tests.Tunnels;

/// <summary>A real gateway, a real local server and a real agent between them.</summary>
public sealed class TunnelHarness : IAsyncDisposable
{
    private readonly List<TunnelAgent> _agents = [];

    private TunnelHarness(TestGateway gateway, LocalApp local)
    {
        Gateway = gateway;
        Local = local;
        Client = new HttpClient(new SocketsHttpHandler { AllowAutoRedirect = false, MaxConnectionsPerServer = 1000, UseCookies = false })
        {
            BaseAddress = gateway.BaseUri,
            Timeout = TimeSpan.FromSeconds(60),
        };
    }

    public TestGateway Gateway { get; }
    public LocalApp Local { get; }
    public HttpClient Client { get; }
    public TunnelAgent? Agent { get; private set; }
    public TunnelHelloAck? Ack { get; private set; }

    public static async Task<TunnelHarness> StartAsync(Action<TunnelOptions>? tunnels = null, Action<TunnelAgentOptions>? agent = null, bool connect = true)
    {
        var gateway = await TestGateway.StartAsync(services: s =>
        {
            if (tunnels is not null)
                s.Configure(tunnels);
        });
        var local = await LocalApp.StartAsync();
        var harness = new TunnelHarness(gateway, local);
        if (connect)
            (harness.Agent, harness.Ack) = await harness.StartAgentAsync(agent);
        return harness;
    }

    /// <summary>Mints an agent token in the gateway's registry.</summary>
    public async Task<string> AgentTokenAsync(string label = "test")
    {
        var (secret, record) = TunnelHub.NewAgentToken(label, DateTimeOffset.UtcNow);
        await Gateway.Services.GetRequiredService<ITunnelRegistry>().CreateTokenAsync(record, default);
        return secret;
    }

    public TunnelAgentOptions AgentOptions(Action<TunnelAgentOptions>? configure = null)
    {
        var o = new TunnelAgentOptions
        {
            Server = Gateway.BaseUri,
            LocalTarget = Local.Uri,
            Token = Gateway.Token("agent", tunnels: ["*"]),
            MinBackoff = TimeSpan.FromMilliseconds(50),
            MaxBackoff = TimeSpan.FromMilliseconds(500),
        };
        configure?.Invoke(o);
        return o;
    }

    public async Task<(TunnelAgent, TunnelHelloAck)> StartAgentAsync(Action<TunnelAgentOptions>? configure = null)
    {
        var agent = new TunnelAgent(AgentOptions(configure));
        _agents.Add(agent);
        var (ack, _) = await agent.StartAsync(CancellationToken.None);
        return (agent, ack);
    }

    /// <summary>Path-routed URL of the harness tunnel.</summary>
    public string Path(string path) => $"t/{Ack!.Name}{path}";

    public async ValueTask DisposeAsync()
    {
        foreach (var a in _agents)
            await a.DisposeAsync();
        Client.Dispose();
        await Local.DisposeAsync();
        await Gateway.DisposeAsync();
    }
}
