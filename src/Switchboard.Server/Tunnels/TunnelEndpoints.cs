using System.Text;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Routing;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.DependencyInjection.Extensions;
using Microsoft.Extensions.Options;
using Switchboard.Protocol.Tunnels;
using Switchboard.Server.Connections;
using Switchboard.Server.Http;

namespace Switchboard.Server.Tunnels;

/// <summary>Tunnels: the agent endpoint <c>/tunnel/connect</c>, the routing middleware and the inspection API.</summary>
public static class TunnelEndpoints
{
    public static IServiceCollection AddTunnels(this IServiceCollection services)
    {
        services.AddOptions<TunnelOptions>().BindConfiguration(TunnelOptions.Section).ValidateOnStart();
        services.TryAddEnumerable(ServiceDescriptor.Singleton<IValidateOptions<TunnelOptions>, TunnelOptionsAnnotations>());
        services.TryAddSingleton<TunnelHub>();
        services.TryAddSingleton<TunnelRelay>();
        services.TryAddSingleton<TunnelForwarder>();
        services.TryAddSingleton<TunnelDataPath>();
        services.TryAddSingleton<TunnelZeroCopy>();
        services.AddHostedService<TunnelRegistryCleanup>();
        return services;
    }

    /// <summary>Middleware that routes requests for tunnel hosts (<c>NAME.domain</c>) and <c>/t/NAME/</c> before endpoint routing.</summary>
    public static IApplicationBuilder UseTunnels(this IApplicationBuilder app)
    {
        var forwarder = app.ApplicationServices.GetRequiredService<TunnelForwarder>();
        // Not async: every other request (every WebSocket of the gateway's own endpoints included) passes straight
        // through without an async frame held for its whole lifetime.
        return app.Use((context, next) => forwarder.TryRoute(context, out var name, out var target, out var prefix)
            ? forwarder.ForwardAsync(context, name, target, prefix)
            : next(context));
    }

    public static IEndpointRouteBuilder MapTunnels(this IEndpointRouteBuilder app)
    {
        app.Map("/tunnel/connect", ConnectAsync);
        // Authorized by the connection's data key (checked first): agents only, no API key.
        app.MapPost(TunnelProtocol.DataPathPrefix + "/{name}/{stream:long}", (HttpContext context, string name, long stream, TunnelDataPath data) =>
            data.HandleAsync(context, name, stream));
        var api = app.MapGroup("/api/v1/tunnels").AddEndpointFilter<ApiKeyFilter>().AddEndpointFilter<StoreUnavailableFilter>();
        api.MapGet("/", List);
        api.MapGet("/{name}/requests", Requests);
        api.MapPost("/{name}/requests/{id:long}/replay", ReplayAsync);
        return app;
    }

    private static async Task ConnectAsync(HttpContext context, WsAcceptor acceptor, TunnelHub hub)
    {
        // The credential travels in the hello frame (agent token or JWT), so the upgrade itself is anonymous.
        var connection = await acceptor.AcceptAsync(context, "tunnel", anonymous: true);
        if (connection is null)
            return;
        connection.PingFrame = TunnelProtocol.PingFrame;
        connection.PingFrameType = System.Net.WebSockets.WebSocketMessageType.Binary;
        TunnelSession? session = null;
        try
        {
            await acceptor.RunAsync(connection, async (c, message, type, ct) =>
            {
                if (session is not null)
                    session.Handle(message.Span, type);
                else if (!c.IsClosing)
                    session = await hub.HandshakeAsync(c, message, type, context.Request, ct);
            }, context.RequestAborted);
        }
        finally
        {
            if (session is not null)
                await hub.RemoveAsync(session);
        }
    }

    private static IResult List(TunnelHub hub, IOptions<SwitchboardOptions> options)
    {
        var list = hub.Sessions.OrderBy(s => s.Name, StringComparer.Ordinal).Select(s => new TunnelInfo(s.Name, s.Owner, options.Value.NodeId, s.Connection.Id,
            s.Connection.ConnectedAt, s.Connection.RemoteIp?.ToString(), s.Hello.LocalTarget, s.Hello.Buffered, s.RequiresBasicAuth, s.Hello.AllowCidrs,
            s.ActiveStreams, s.TotalRequests, s.BytesIn, s.BytesOut)).ToList();
        return Results.Json(new TunnelList(list), TunnelsJsonContext.Default.TunnelList);
    }

    private static IResult Requests(string name, TunnelHub hub)
    {
        if (hub.Find(name) is not { } session)
            return ApiResults.NotFound($"tunnel '{name}' is not connected");
        var list = session.RequestLog.Snapshot().Select(Info).ToList();
        return Results.Json(new TunnelRequestList(session.Name, list), TunnelsJsonContext.Default.TunnelRequestList);
    }

    private static async Task<IResult> ReplayAsync(string name, long id, TunnelHub hub, TunnelForwarder forwarder, HttpContext context)
    {
        if (hub.Find(name) is not { } session)
            return ApiResults.NotFound($"tunnel '{name}' is not connected");
        if (session.RequestLog.Find(id) is not { } record)
            return ApiResults.NotFound($"request {id} is not in the recent requests of '{name}'");
        if (record.Body is null && record.RequestBytes > 0)
            return ApiResults.Problem(409, "not_replayable", "the request body was larger than the replay bound and was not kept");
        try
        {
            var (status, headers, body, truncated) = await forwarder.ReplayAsync(session, record, context.RequestAborted);
            return Results.Json(new ReplayResult(id, status, headers.Select(h => new HeaderEntry(h.Key, h.Value)).ToList(), Encoding.UTF8.GetString(body), body.Length, truncated),
                TunnelsJsonContext.Default.ReplayResult);
        }
        catch (Exception ex) when (ex is TunnelStreamAbortedException or TimeoutException or InvalidOperationException)
        {
            return ApiResults.Problem(502, "replay_failed", ex.Message);
        }
    }

    private static TunnelRequestInfo Info(TunnelRequestRecord r) => new(r.Id, r.StartedAt, r.Method, r.Path, r.Status, Math.Round(r.DurationMs, 3), r.RequestBytes,
        r.ResponseBytes, r.RequestHeaders.Select(h => new HeaderEntry(h.Key, h.Value)).ToList(), r.ResponseHeaders.Select(h => new HeaderEntry(h.Key, h.Value)).ToList(),
        r.Error, r.Body is not null || r.RequestBytes == 0);
}

/// <summary>At start-up, removes registrations this node left behind (a crash skips the per-connection cleanup).</summary>
internal sealed class TunnelRegistryCleanup(ITunnelRegistry registry, IOptions<SwitchboardOptions> options) : Microsoft.Extensions.Hosting.IHostedService
{
    public async Task StartAsync(CancellationToken cancellationToken) => await registry.RemoveNodeAsync(options.Value.NodeId, cancellationToken);

    public Task StopAsync(CancellationToken cancellationToken) => Task.CompletedTask;
}
