using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Routing;
using Microsoft.Extensions.DependencyInjection;

namespace Switchboard.Server.Tunnels;

public static class TunnelEndpoints
{
    public static IServiceCollection AddTunnels(this IServiceCollection services) => services;

    /// <summary>Middleware that routes requests for tunnel hosts before endpoint routing.</summary>
    public static IApplicationBuilder UseTunnels(this IApplicationBuilder app) => app;

    public static IEndpointRouteBuilder MapTunnels(this IEndpointRouteBuilder app) => app;
}
