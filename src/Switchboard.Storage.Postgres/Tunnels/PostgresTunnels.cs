using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.DependencyInjection.Extensions;
using Switchboard.Server.Tunnels;

namespace Switchboard.Storage.Postgres.Tunnels;

/// <summary>The tunnel registry on PostgreSQL (called by <c>AddSwitchboardPostgres</c>).</summary>
internal static class PostgresTunnels
{
    public static IServiceCollection AddPostgresTunnels(this IServiceCollection services)
    {
        services.Replace(ServiceDescriptor.Singleton<ITunnelRegistry, PostgresTunnelRegistry>());
        return services;
    }
}
