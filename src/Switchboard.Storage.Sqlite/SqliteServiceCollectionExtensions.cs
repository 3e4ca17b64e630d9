using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.DependencyInjection.Extensions;
using Microsoft.Extensions.Hosting;
using Switchboard.Server.Storage;
using Switchboard.Storage.Sqlite.Environments;
using Switchboard.Storage.Sqlite.Tunnels;

namespace Switchboard.Storage.Sqlite;

public static class SqliteServiceCollectionExtensions
{
    /// <summary>The embedded defaults: a SQLite file <c>switchboard.db</c> in <paramref name="dataDir"/> and the in-process bus.</summary>
    public static IServiceCollection AddSwitchboardSqlite(this IServiceCollection services, string dataDir)
    {
        var db = new SqliteDatabase(Path.Combine(dataDir, "switchboard.db"));
        services.AddSingleton(db);
        foreach (var m in SqliteChannelStore.Migrations.Concat(SqliteRoomStore.Migrations))
            services.AddSingleton(m);
        services.TryAddSingleton<IChannelStore, SqliteChannelStore>();
        services.TryAddSingleton<IRoomStore, SqliteRoomStore>();
        services.TryAddSingleton<IMessageBus, InProcessBus>();
        services.AddSqliteTunnels();
        services.AddSqliteEnvironments();
        // Migrations run before any other hosted service starts.
        services.Insert(0, ServiceDescriptor.Singleton<IHostedService, SqliteMigrator>());
        return services;
    }
}

/// <summary>Applies every registered <see cref="SqliteMigration"/> at start-up.</summary>
internal sealed class SqliteMigrator(SqliteDatabase db, IEnumerable<SqliteMigration> migrations) : IHostedService
{
    public Task StartAsync(CancellationToken cancellationToken) => db.MigrateAsync(migrations, cancellationToken);

    public Task StopAsync(CancellationToken cancellationToken) => Task.CompletedTask;
}
