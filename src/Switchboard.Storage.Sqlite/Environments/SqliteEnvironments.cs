using Microsoft.Extensions.DependencyInjection;

namespace Switchboard.Storage.Sqlite.Environments;

internal static class SqliteEnvironments
{
    public static IServiceCollection AddSqliteEnvironments(this IServiceCollection services) => services;
}
