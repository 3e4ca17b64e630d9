using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Routing;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.DependencyInjection.Extensions;
using Switchboard.Server.Channels;
using Switchboard.Server.Http;

namespace Switchboard.Server.Nodes;

/// <summary>Node registry services and <c>GET /api/v1/nodes</c>.</summary>
public static class NodeEndpoints
{
    /// <summary>Registers the defaults a store may replace: the single-node registry, bus metrics, and the channel catch-up after a bus reconnect.</summary>
    public static IServiceCollection AddNodes(this IServiceCollection services)
    {
        services.AddOptions<NodeOptions>().BindConfiguration(NodeOptions.Section);
        services.TryAddSingleton<INodeRegistry, SingleNodeRegistry>();
        services.TryAddSingleton<BusMetrics>();
        services.TryAddSingleton<NodeRelay>();
        services.TryAddEnumerable(ServiceDescriptor.Singleton<IBusCatchUp, ChannelCatchUp>());
        return services;
    }

    public static IEndpointRouteBuilder MapNodes(this IEndpointRouteBuilder app)
    {
        app.MapGet("/api/v1/nodes", async (INodeRegistry registry, CancellationToken cancellationToken) =>
        {
            var nodes = await registry.ListAsync(cancellationToken);
            return Results.Json(new NodeListResponse(registry.NodeId, [.. nodes.Select(n => new NodeItem(n.Id, n.Address, n.StartedAt, n.LastHeartbeat))]),
                NodesJsonContext.Default.NodeListResponse);
        }).AddEndpointFilter<ApiKeyFilter>();
        return app;
    }

    /// <summary>Channels with local subscribers re-read what they missed from the store.</summary>
    private sealed class ChannelCatchUp(ChannelHub hub) : IBusCatchUp
    {
        public Task CatchUpAsync(CancellationToken cancellationToken) => hub.CatchUpAllAsync(cancellationToken);
    }
}
