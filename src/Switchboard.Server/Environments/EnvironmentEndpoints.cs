using Microsoft.AspNetCore.Routing;
using Microsoft.Extensions.DependencyInjection;

namespace Switchboard.Server.Environments;

public static class EnvironmentEndpoints
{
    public static IServiceCollection AddEnvironments(this IServiceCollection services) => services;

    public static IEndpointRouteBuilder MapEnvironments(this IEndpointRouteBuilder app) => app;
}
