using Microsoft.Extensions.DependencyInjection;

namespace Switchboard.Storage.Postgres.Tunnels;

/// <summary>Hook for the tunnel registry on PostgreSQL (called by <c>AddSwitchboardPostgres</c>).</summary>
internal static class PostgresTunnels
{
    public static IServiceCollection AddPostgresTunnels(this IServiceCollection services) => services;
}
