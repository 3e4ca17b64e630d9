using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.DependencyInjection.Extensions;
using Switchboard.Server.Environments;

namespace Switchboard.Storage.Postgres.Environments;

/// <summary>The environment store on PostgreSQL (called by <c>AddSwitchboardPostgres</c>).</summary>
internal static class PostgresEnvironments
{
    public static IServiceCollection AddPostgresEnvironments(this IServiceCollection services)
    {
        services.Replace(ServiceDescriptor.Singleton<IEnvironmentStore, PostgresEnvironmentStore>());
        return services;
    }
}
