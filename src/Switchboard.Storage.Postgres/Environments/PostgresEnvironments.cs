using Microsoft.Extensions.DependencyInjection;

namespace Switchboard.Storage.Postgres.Environments;

/// <summary>Hook for environment storage on PostgreSQL (called by <c>AddSwitchboardPostgres</c>).</summary>
internal static class PostgresEnvironments
{
    public static IServiceCollection AddPostgresEnvironments(this IServiceCollection services) => services;
}
