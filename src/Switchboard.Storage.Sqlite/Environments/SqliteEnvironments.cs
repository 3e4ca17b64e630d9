using Microsoft.Extensions.DependencyInjection;
using Switchboard.Server.Environments;

namespace Switchboard.Storage.Sqlite.Environments;

internal static class SqliteEnvironments
{
    public static IServiceCollection AddSqliteEnvironments(this IServiceCollection services)
    {
        foreach (var m in SqliteEnvironmentStore.Migrations)
            services.AddSingleton(m);
        services.AddSingleton<IEnvironmentStore, SqliteEnvironmentStore>();
        return services;
    }
}
