using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.DependencyInjection.Extensions;
using Switchboard.Server.Tunnels;

namespace Switchboard.Storage.Sqlite.Tunnels;

internal static class SqliteTunnels
{
    public static IServiceCollection AddSqliteTunnels(this IServiceCollection services)
    {
        foreach (var m in SqliteTunnelRegistry.Migrations)
            services.AddSingleton(m);
        services.TryAddSingleton<ITunnelRegistry, SqliteTunnelRegistry>();
        return services;
    }
}
