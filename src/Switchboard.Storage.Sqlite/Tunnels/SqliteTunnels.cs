using Microsoft.Extensions.DependencyInjection;

namespace Switchboard.Storage.Sqlite.Tunnels;

internal static class SqliteTunnels
{
    public static IServiceCollection AddSqliteTunnels(this IServiceCollection services) => services;
}
