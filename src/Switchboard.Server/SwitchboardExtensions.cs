using System.Security.Cryptography.X509Certificates;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Connections;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Routing;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.DependencyInjection.Extensions;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Options;
using Switchboard.Server.Auth;
using Switchboard.Server.Channels;
using Switchboard.Server.Connections;
using Switchboard.Server.Diagnostics;
using Switchboard.Server.Environments;
using Switchboard.Server.Http;
using Switchboard.Server.Limits;
using Switchboard.Server.Nodes;
using Switchboard.Server.Rooms;
using Switchboard.Server.Tunnels;

namespace Switchboard.Server;

/// <summary>Composition root: <c>AddSwitchboard()</c> registers every service, <c>MapSwitchboard()</c> every endpoint. A store (SQLite or PostgreSQL) is added separately.</summary>
public static class SwitchboardExtensions
{
    public static IServiceCollection AddSwitchboard(this IServiceCollection services, Action<SwitchboardOptions>? configure = null)
    {
        var options = services.AddOptions<SwitchboardOptions>().BindConfiguration(SwitchboardOptions.Section).ValidateOnStart();
        if (configure is not null)
            options.Configure(configure);
        services.TryAddEnumerable(ServiceDescriptor.Singleton<IValidateOptions<SwitchboardOptions>, SwitchboardOptionsAnnotations>());
        services.TryAddEnumerable(ServiceDescriptor.Singleton<IValidateOptions<SwitchboardOptions>, SwitchboardOptionsValidator>());
        services.TryAddSingleton(TimeProvider.System);
        services.AddMetrics();
        services.TryAddSingleton<SwitchboardMetrics>();
        services.TryAddSingleton(sp => new PrometheusExporter([SwitchboardMetrics.MeterName], sp.GetRequiredService<System.Diagnostics.Metrics.IMeterFactory>(), ["System.Runtime"]));
        services.TryAddSingleton<TokenService>();
        services.TryAddSingleton<RequestAuth>();
        services.TryAddSingleton<OriginPolicy>();
        services.TryAddSingleton<ConnectionRateLimiter>();
        services.TryAddSingleton<ConnectionManager>();
        services.TryAddSingleton<WsAcceptor>();
        services.TryAddSingleton<WsFastUpgrade>();
        services.AddHostedService<HeartbeatService>();
        services.AddHostedService<ShutdownCoordinator>();
        services.TryAddSingleton<ApiKeyFilter>();
        services.TryAddSingleton<ChannelHub>();
        services.AddHostedService(sp => sp.GetRequiredService<ChannelHub>());
        services.AddRooms();
        services.AddTunnels();
        services.AddEnvironments();
        services.AddNodes();
        services.Configure<HostOptions>(h => h.ShutdownTimeout = TimeSpan.FromSeconds(15));
        return services;
    }

    /// <summary>Kestrel and host settings every Switchboard server uses.</summary>
    public static WebApplicationBuilder ConfigureSwitchboardHost(this WebApplicationBuilder builder)
    {
        // Kestrel's socket transport takes its memory pool from this service (added after Kestrel's own, so it wins).
        builder.Services.AddSingleton<IMemoryPoolFactory<byte>>(sp => new BlockMemoryPoolFactory(
            sp.GetRequiredService<IOptions<SwitchboardOptions>>().Value.TransportBlockBytes, SwitchboardOptions.TransportPoolRetainedBytes,
            sp.GetService<TimeProvider>() ?? TimeProvider.System, sp.GetService<SwitchboardMetrics>()));
        builder.WebHost.ConfigureKestrel(k =>
        {
            k.AddServerHeader = false;
            k.Limits.MaxRequestBodySize = null; // bounded per endpoint (publish, webhooks, tunnel uploads)
            // Outermost connection middleware of every endpoint (outside HTTPS, so TLS connections pass through it).
            k.ConfigureEndpointDefaults(listen => listen.Use(next =>
                listen.ApplicationServices.GetService<WsFastUpgrade>() is { } fast ? context => fast.OnConnectionAsync(context, next) : next));
        });
        return builder;
    }

    /// <summary>
    /// Serves the <c>https://</c> addresses with <paramref name="certificate"/> (with its private key). HTTPS endpoints
    /// speak HTTP/1.1 and HTTP/2 (ALPN), so HTTP/2 clients get response trailers, which Kestrel sends over HTTP/2 only.
    /// </summary>
    public static WebApplicationBuilder ConfigureSwitchboardTls(this WebApplicationBuilder builder, X509Certificate2 certificate)
    {
        ArgumentNullException.ThrowIfNull(certificate);
        if (!certificate.HasPrivateKey)
            throw new ArgumentException("the TLS certificate has no private key", nameof(certificate));
        builder.WebHost.UseKestrelHttpsConfiguration();
        builder.WebHost.ConfigureKestrel(k => k.ConfigureHttpsDefaults(https => https.ServerCertificate = certificate));
        return builder;
    }

    public static WebApplication MapSwitchboard(this WebApplication app)
    {
        // The exporter must exist before instruments are created so it sees them all.
        app.Services.GetRequiredService<PrometheusExporter>();
        app.Services.GetRequiredService<SwitchboardMetrics>();
        app.UseWebSockets();
        app.UseTunnels();
        app.MapDiagnostics();
        app.MapChannels();
        app.MapRooms();
        app.MapTunnels();
        app.MapEnvironments();
        app.MapNodes();
        return app;
    }
}

/// <summary>
/// Graceful shutdown: closes every connection with 1001 and waits (bounded by <c>ShutdownDrainTimeout</c>) for queues to
/// drain, while Kestrel still listens, so that new connections and <c>/healthz</c> get 503 during the drain instead of
/// a refused connection. It runs in <see cref="IHostedLifecycleService.StoppingAsync"/>, which the host awaits before
/// any hosted service's StopAsync (Kestrel's included), and starts early if ApplicationStopping fires first (SIGTERM).
/// </summary>
internal sealed class ShutdownCoordinator(IHostApplicationLifetime lifetime, ConnectionManager manager) : IHostedLifecycleService
{
    private Task? _shutdown;
    private readonly Lock _gate = new();

    public Task StartingAsync(CancellationToken cancellationToken) => Task.CompletedTask;

    public Task StartAsync(CancellationToken cancellationToken)
    {
        lifetime.ApplicationStopping.Register(() => Shutdown());
        return Task.CompletedTask;
    }

    public Task StartedAsync(CancellationToken cancellationToken) => Task.CompletedTask;

    public Task StoppingAsync(CancellationToken cancellationToken) => Shutdown().WaitAsync(cancellationToken);

    public Task StopAsync(CancellationToken cancellationToken) => Shutdown().WaitAsync(cancellationToken);

    public Task StoppedAsync(CancellationToken cancellationToken) => Task.CompletedTask;

    private Task Shutdown()
    {
        lock (_gate)
            return _shutdown ??= manager.ShutdownAsync(CancellationToken.None);
    }
}
