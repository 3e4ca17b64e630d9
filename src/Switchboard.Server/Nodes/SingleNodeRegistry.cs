using Microsoft.AspNetCore.Hosting.Server;
using Microsoft.AspNetCore.Hosting.Server.Features;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Options;

namespace Switchboard.Server.Nodes;

/// <summary>The registry of a single-node deployment (embedded store): exactly this node, always live.</summary>
public sealed class SingleNodeRegistry(IOptions<SwitchboardOptions> options, IOptions<NodeOptions> nodeOptions, IServiceProvider services, TimeProvider time) : INodeRegistry
{
    private readonly DateTimeOffset _startedAt = time.GetUtcNow();

    public string NodeId { get; } = options.Value.NodeId;

    public ValueTask<IReadOnlyList<NodeInfo>> ListAsync(CancellationToken cancellationToken) =>
        ValueTask.FromResult<IReadOnlyList<NodeInfo>>([Self()]);

    public ValueTask<NodeInfo?> GetAsync(string nodeId, CancellationToken cancellationToken) =>
        ValueTask.FromResult(nodeId == NodeId ? Self() : null);

    private NodeInfo Self() => new(NodeId, NodeAddress.Resolve(nodeOptions.Value, services), _startedAt, time.GetUtcNow());
}

/// <summary>Works out the address this node advertises to the others.</summary>
public static class NodeAddress
{
    public static string? Resolve(NodeOptions options, IServiceProvider services)
    {
        if (!string.IsNullOrWhiteSpace(options.AdvertiseUrl))
            return options.AdvertiseUrl.TrimEnd('/');
        var addresses = services.GetService<IServer>()?.Features.Get<IServerAddressesFeature>()?.Addresses;
        var first = addresses?.FirstOrDefault();
        if (first is null || !Uri.TryCreate(first.Replace("://+", "://0.0.0.0", StringComparison.Ordinal).Replace("://*", "://0.0.0.0", StringComparison.Ordinal), UriKind.Absolute, out var uri))
            return null;
        var host = uri.Host is "0.0.0.0" or "[::]" or "::" ? "127.0.0.1" : uri.Host;
        return $"{uri.Scheme}://{host}:{uri.Port}";
    }
}
