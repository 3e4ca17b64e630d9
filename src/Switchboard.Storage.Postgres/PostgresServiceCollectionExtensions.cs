using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.DependencyInjection.Extensions;
using Microsoft.Extensions.Hosting;
using Switchboard.Server.Nodes;
using Switchboard.Server.Storage;
using Switchboard.Storage.Postgres.Environments;
using Switchboard.Storage.Postgres.Tunnels;

namespace Switchboard.Storage.Postgres;

public static class PostgresServiceCollectionExtensions
{
    /// <summary>
    /// Several nodes on one PostgreSQL database: the channel and room stores, the LISTEN/NOTIFY bus and the node
    /// registry. Migrations run at start-up before any other hosted service (safe when several nodes start at once).
    /// Call after <c>AddSwitchboard()</c>; the registrations here replace the single-node defaults.
    /// </summary>
    public static IServiceCollection AddSwitchboardPostgres(this IServiceCollection services, string connectionString)
    {
        _ = new Npgsql.NpgsqlConnectionStringBuilder(connectionString); // fail fast on a malformed string
        services.AddSingleton(_ => new PostgresDatabase(connectionString)); // disposed with the host: closes the pool
        foreach (var m in AllMigrations)
            services.AddSingleton(m);
        services.AddOptions<PostgresBusOptions>().BindConfiguration(PostgresBusOptions.Section);
        services.TryAddSingleton<BusMetrics>();
        services.Replace(ServiceDescriptor.Singleton<IChannelStore, PostgresChannelStore>());
        services.Replace(ServiceDescriptor.Singleton<IRoomStore, PostgresRoomStore>());
        services.AddSingleton<PostgresBus>();
        services.Replace(ServiceDescriptor.Singleton<IMessageBus>(sp => sp.GetRequiredService<PostgresBus>()));
        services.AddSingleton<PostgresNodeRegistry>();
        services.Replace(ServiceDescriptor.Singleton<INodeRegistry>(sp => sp.GetRequiredService<PostgresNodeRegistry>()));
        services.AddPostgresTunnels();
        services.AddPostgresEnvironments();
        // Order at start-up: migrations, then the bus (listening before anything publishes), then the registry, then the rest.
        services.Insert(0, ServiceDescriptor.Singleton<IHostedService, PostgresMigrator>());
        services.Insert(1, ServiceDescriptor.Singleton<IHostedService>(sp => sp.GetRequiredService<PostgresBus>()));
        services.Insert(2, ServiceDescriptor.Singleton<IHostedService>(sp => sp.GetRequiredService<PostgresNodeRegistry>()));
        return services;
    }

    /// <summary>Every migration of the PostgreSQL store, in order.</summary>
    public static IEnumerable<PostgresMigration> AllMigrations =>
        PostgresChannelStore.Migrations.Concat(PostgresRoomStore.Migrations).Concat(PostgresBus.Migrations).Concat(PostgresNodeRegistry.Migrations)
            .Concat(PostgresTunnelRegistry.Migrations).Concat(PostgresEnvironmentStore.Migrations);
}

/// <summary>Applies every registered <see cref="PostgresMigration"/> at start-up.</summary>
internal sealed class PostgresMigrator(PostgresDatabase db, IEnumerable<PostgresMigration> migrations) : IHostedService
{
    public Task StartAsync(CancellationToken cancellationToken) => db.MigrateAsync(migrations, cancellationToken);

    public Task StopAsync(CancellationToken cancellationToken) => Task.CompletedTask;
}
