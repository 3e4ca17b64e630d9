using System.Globalization;
using System.Text.Json;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Routing;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.DependencyInjection.Extensions;
using Microsoft.Extensions.Options;
using Switchboard.Protocol;
using Switchboard.Protocol.Environments;
using Switchboard.Server.Auth;
using Switchboard.Server.Channels;
using Switchboard.Server.Connections;
using Switchboard.Server.Http;

namespace Switchboard.Server.Environments;

/// <summary>Environments: the REST API and the logs, terminal and status WebSockets.</summary>
public static class EnvironmentEndpoints
{
    public static IServiceCollection AddEnvironments(this IServiceCollection services)
    {
        services.AddOptions<EnvironmentOptions>().BindConfiguration(EnvironmentOptions.Section);
        services.TryAddEnumerable(ServiceDescriptor.Singleton<IValidateOptions<EnvironmentOptions>, EnvironmentOptionsAnnotations>());
        services.AddSingleton<EnvironmentManager>();
        services.AddSingleton<EnvironmentRouter>();
        services.AddHostedService(sp => sp.GetRequiredService<EnvironmentManager>());
        return services;
    }

    public static IEndpointRouteBuilder MapEnvironments(this IEndpointRouteBuilder app)
    {
        var api = app.MapGroup("/api/v1/environments").AddEndpointFilter<StoreUnavailableFilter>();
        api.MapPost("", CreateAsync);
        api.MapGet("", ListAsync);
        api.MapGet("/{id}", GetAsync);
        api.MapPost("/{id}/start", (string id, HttpContext c, RequestAuth a, EnvironmentManager m, EnvironmentRouter r) => ActionAsync(id, c, a, m, r, (e, ct) => e.StartAsync(ct)));
        api.MapPost("/{id}/stop", (string id, HttpContext c, RequestAuth a, EnvironmentManager m, EnvironmentRouter r) => ActionAsync(id, c, a, m, r, (e, ct) => e.StopAsync(ct)));
        api.MapPost("/{id}/restart", (string id, HttpContext c, RequestAuth a, EnvironmentManager m, EnvironmentRouter r) => ActionAsync(id, c, a, m, r, (e, ct) => e.RestartAsync(ct)));
        api.MapDelete("/{id}", DeleteAsync);

        // An environment run by another node is routed there (EnvironmentRouter) before anything else happens here.
        app.Map("/api/v1/ws/environments/{id}/logs", (string id, HttpContext c, WsAcceptor a, EnvironmentManager m, EnvironmentRouter r) => WebSocketAsync(id, "logs", c, a, m, r));
        app.Map("/api/v1/ws/environments/{id}/terminal", (string id, HttpContext c, WsAcceptor a, EnvironmentManager m, EnvironmentRouter r) => WebSocketAsync(id, "terminal", c, a, m, r));
        app.Map("/api/v1/ws/environments/{id}/status", (string id, HttpContext c, WsAcceptor a, EnvironmentManager m, EnvironmentRouter r) => WebSocketAsync(id, "status", c, a, m, r));
        return app;
    }

    internal static bool CanAccess(Grants grants, ManagedEnvironment environment) =>
        grants.IsServer || grants.CanUseEnvironment(environment.Id) || grants.CanUseEnvironment(environment.Record.Name);

    private static IResult Info(ManagedEnvironment e, int status = 200) =>
        Results.Json(e.ToInfo(), EnvironmentsJsonContext.Default.EnvironmentInfo, statusCode: status);

    private static async Task<IResult> CreateAsync(HttpContext context, RequestAuth auth, EnvironmentManager manager, IOptions<SwitchboardOptions> options)
    {
        var validation = await auth.AuthenticateAsync(context.Request);
        if (validation.Grants is not { } grants)
            return ApiResults.Unauthorized(validation.Error ?? "unauthorized");
        var body = await ChannelEndpoints.ReadBodyAsync(context, options.Value.Limits.MaxHttpBodyBytes);
        if (body is null)
            return ApiResults.Problem(413, "too_large", $"body exceeds {options.Value.Limits.MaxHttpBodyBytes} bytes");
        CreateEnvironmentRequest? request;
        try
        {
            request = JsonSerializer.Deserialize(body, EnvironmentsJsonContext.Default.CreateEnvironmentRequest);
        }
        catch (JsonException ex)
        {
            return ApiResults.BadRequest("body is not valid JSON: " + ex.Message);
        }
        if (request is null)
            return ApiResults.BadRequest("body must be a JSON object");
        if (!grants.IsServer && !grants.CanUseEnvironment(request.Name ?? ""))
            return ApiResults.Forbidden("the credentials do not grant an environment of this name");
        var (environment, error, conflict) = await manager.CreateAsync(request, context.RequestAborted);
        if (environment is null)
            return conflict ? ApiResults.Problem(409, "conflict", error!) : ApiResults.BadRequest(error!);
        context.Response.Headers.Location = "/api/v1/environments/" + environment.Id;
        return Info(environment, 201);
    }

    private static async Task<IResult> ListAsync(HttpContext context, RequestAuth auth, EnvironmentManager manager, EnvironmentRouter router)
    {
        var validation = await auth.AuthenticateAsync(context.Request);
        if (validation.Grants is not { } grants)
            return ApiResults.Unauthorized(validation.Error ?? "unauthorized");
        await manager.FindAsync("");
        var list = manager.All.Where(e => CanAccess(grants, e)).Select(e => e.ToInfo()).ToList();
        // Several nodes: every other node's environments too (each node answers for its own; see EnvironmentRouter).
        var others = await router.ListOthersAsync(context, grants);
        if (others.Count > 0)
            list = [.. list.Concat(others).OrderBy(e => e.CreatedAt).ThenBy(e => e.Id, StringComparer.Ordinal)];
        return Results.Json(new EnvironmentList(list), EnvironmentsJsonContext.Default.EnvironmentList);
    }

    private static async Task<(ManagedEnvironment?, IResult?)> ResolveAsync(string id, HttpContext context, RequestAuth auth, EnvironmentManager manager)
    {
        var validation = await auth.AuthenticateAsync(context.Request);
        if (validation.Grants is not { } grants)
            return (null, ApiResults.Unauthorized(validation.Error ?? "unauthorized"));
        var environment = await manager.FindAsync(id);
        if (environment is null)
            return (null, grants.IsServer || grants.CanUseEnvironment(id) ? ApiResults.NotFound($"no environment '{id}'") : ApiResults.Forbidden());
        if (!CanAccess(grants, environment))
            return (null, ApiResults.Forbidden("the credentials do not grant this environment"));
        return (environment, null);
    }

    private static async Task<IResult> GetAsync(string id, HttpContext context, RequestAuth auth, EnvironmentManager manager, EnvironmentRouter router)
    {
        if (await router.TryRouteAsync(id, context, delete: false) is { } routed)
            return routed;
        var (environment, error) = await ResolveAsync(id, context, auth, manager);
        return error ?? Info(environment!);
    }

    private static async Task<IResult> ActionAsync(string id, HttpContext context, RequestAuth auth, EnvironmentManager manager, EnvironmentRouter router,
        Func<ManagedEnvironment, CancellationToken, Task> action)
    {
        if (await router.TryRouteAsync(id, context, delete: false) is { } routed)
            return routed;
        var (environment, error) = await ResolveAsync(id, context, auth, manager);
        if (error is not null)
            return error;
        // Not tied to the request: a client that hangs up must not leave a stop half done.
        await action(environment!, CancellationToken.None);
        return Info(environment!);
    }

    private static async Task<IResult> DeleteAsync(string id, HttpContext context, RequestAuth auth, EnvironmentManager manager, EnvironmentRouter router)
    {
        if (await router.TryRouteAsync(id, context, delete: true) is { } routed)
            return routed;
        var (environment, error) = await ResolveAsync(id, context, auth, manager);
        if (error is not null)
            return error;
        await manager.DeleteAsync(environment!, CancellationToken.None);
        return Results.NoContent();
    }

    private static async Task WebSocketAsync(string id, string kind, HttpContext context, WsAcceptor acceptor, EnvironmentManager manager, EnvironmentRouter router)
    {
        if (await router.TryRouteWebSocketAsync(id, context, acceptor, kind))
            return;
        // Terminal output is written by the PTY reader's thread itself: one thread-pool hop less per echo.
        var connection = await acceptor.AcceptAsync(context, "env-" + kind, inlineWrites: kind == "terminal");
        if (connection is null)
            return;
        var environment = await manager.FindAsync(id);
        if (environment is null)
        {
            await acceptor.CloseRegisteredAsync(connection, CloseCodes.NotFound, $"no environment '{id}'");
            return;
        }
        if (!CanAccess(connection.Grants, environment))
        {
            await acceptor.CloseRegisteredAsync(connection, CloseCodes.Forbidden, "the token does not grant this environment");
            return;
        }
        var options = manager.Options;
        var query = context.Request.Query;
        if (!environment.TryAddConnection(connection))
        {
            await acceptor.CloseRegisteredAsync(connection, CloseCodes.TooManyRequests, $"at most {options.MaxConnectionsPerEnvironment} connections per environment");
            return;
        }
        try
        {
            switch (kind)
            {
                case "logs":
                    await LogsAsync(connection, environment, manager, acceptor, query, context.RequestAborted);
                    break;
                case "terminal":
                    await TerminalAsync(connection, environment, manager, acceptor, query, context.RequestAborted);
                    break;
                default:
                    await StatusAsync(connection, environment, manager, acceptor, context.RequestAborted);
                    break;
            }
        }
        finally
        {
            environment.RemoveConnection(connection);
        }
    }

    private static async Task LogsAsync(WsConnection connection, ManagedEnvironment environment, EnvironmentManager manager, WsAcceptor acceptor,
        IQueryCollection query, CancellationToken cancellationToken)
    {
        var options = manager.Options;
        var tail = options.DefaultTail;
        long? since = null;
        if (query.TryGetValue("tail", out var t) && (!int.TryParse(t, NumberStyles.None, CultureInfo.InvariantCulture, out tail) || tail > options.MaxReplay))
        {
            await acceptor.CloseRegisteredAsync(connection, CloseCodes.PolicyViolation, $"tail must be 0..{options.MaxReplay}");
            return;
        }
        if (query.TryGetValue("since", out var s))
        {
            if (!long.TryParse(s, NumberStyles.None, CultureInfo.InvariantCulture, out var v))
            {
                await acceptor.CloseRegisteredAsync(connection, CloseCodes.PolicyViolation, "since must be a sequence number");
                return;
            }
            since = v;
        }
        if (!LogSession.TryParseFilter(query["stream"], out var filter))
        {
            await acceptor.CloseRegisteredAsync(connection, CloseCodes.PolicyViolation, "stream must be stdout, stderr or all");
            return;
        }
        using var session = new LogSession(connection, environment, options, filter);
        await session.StartAsync(manager.Store, since, tail, cancellationToken);
        await acceptor.RunAsync(connection, session.HandleAsync, cancellationToken);
    }

    private static async Task TerminalAsync(WsConnection connection, ManagedEnvironment environment, EnvironmentManager manager, WsAcceptor acceptor,
        IQueryCollection query, CancellationToken cancellationToken)
    {
        var options = manager.Options;
        ushort cols = 80, rows = 24;
        if (ushort.TryParse(query["cols"], NumberStyles.None, CultureInfo.InvariantCulture, out var c) && c is > 0 and <= 1000)
            cols = c;
        if (ushort.TryParse(query["rows"], NumberStyles.None, CultureInfo.InvariantCulture, out var r) && r is > 0 and <= 1000)
            rows = r;
        if (environment.Record.Driver == "docker")
        {
            await DockerTerminalAsync(connection, environment, manager, acceptor, query["cmd"], cols, rows, cancellationToken);
            return;
        }
        if (environment.Record.Driver != "process")
        {
            await acceptor.CloseRegisteredAsync(connection, CloseCodes.PolicyViolation, $"terminals are not available for driver '{environment.Record.Driver}'");
            return;
        }
        var command = TerminalSession.ResolveCommand(options, query["cmd"]);
        if (command is null)
        {
            await acceptor.CloseRegisteredAsync(connection, CloseCodes.PolicyViolation, "cmd is not an allowed terminal command");
            return;
        }
        TerminalSession terminal;
        try
        {
            terminal = TerminalSession.Start(connection, environment.Record, command, options, manager.Time, cols, rows);
        }
        catch (IOException ex)
        {
            connection.TrySendJson(new TerminalMessage("error", ex.Message), EnvironmentsJsonContext.Default.TerminalMessage);
            connection.Close(CloseCodes.InternalError, "cannot start the terminal");
            await acceptor.RunAsync(connection, static (_, _, _, _) => ValueTask.CompletedTask, cancellationToken);
            return;
        }
        using (terminal)
        {
            connection.TrySendJson(new TerminalMessage("ready"), EnvironmentsJsonContext.Default.TerminalMessage);
            terminal.Begin();
            await acceptor.RunAsync(connection, terminal.HandleAsync, cancellationToken);
        }
    }

    /// <summary>A terminal in the environment's running container (exec with a TTY).</summary>
    private static async Task DockerTerminalAsync(WsConnection connection, ManagedEnvironment environment, EnvironmentManager manager, WsAcceptor acceptor,
        string? requested, ushort cols, ushort rows, CancellationToken cancellationToken)
    {
        var options = manager.Options;
        if (!string.IsNullOrEmpty(requested) && !options.TerminalCommands.Contains(requested, StringComparer.Ordinal))
        {
            await acceptor.CloseRegisteredAsync(connection, CloseCodes.PolicyViolation, "cmd is not an allowed terminal command");
            return;
        }
        DockerTerminalSession terminal;
        try
        {
            if (environment.Docker is not { } docker || environment.Workload is not DockerWorkload workload || environment.Status != EnvironmentStatus.Running)
                throw new IOException("the environment's container is not running");
            var command = await DockerTerminalSession.ResolveCommandAsync(docker, workload.ContainerId, options, requested, cancellationToken)
                ?? throw new IOException("no terminal command is configured");
            terminal = await DockerTerminalSession.StartAsync(connection, docker, workload.ContainerId, command, options, manager.Time, cols, rows, cancellationToken);
        }
        catch (Exception ex) when (ex is IOException or OperationCanceledException)
        {
            connection.TrySendJson(new TerminalMessage("error", ex.Message), EnvironmentsJsonContext.Default.TerminalMessage);
            connection.Close(CloseCodes.InternalError, "cannot start the terminal");
            await acceptor.RunAsync(connection, static (_, _, _, _) => ValueTask.CompletedTask, cancellationToken);
            return;
        }
        using (terminal)
        {
            connection.TrySendJson(new TerminalMessage("ready"), EnvironmentsJsonContext.Default.TerminalMessage);
            terminal.Begin();
            await acceptor.RunAsync(connection, terminal.HandleAsync, cancellationToken);
        }
    }

    private static async Task StatusAsync(WsConnection connection, ManagedEnvironment environment, EnvironmentManager manager, WsAcceptor acceptor,
        CancellationToken cancellationToken)
    {
        using var subscription = environment.SubscribeStatus(m => connection.TrySendJson(m, EnvironmentsJsonContext.Default.StatusMessage));
        using var stop = new CancellationTokenSource();
        var metrics = MetricsLoopAsync(connection, environment, manager, stop.Token);
        try
        {
            await acceptor.RunAsync(connection, static (_, payload, _, _) =>
            {
                // Only pings are expected; anything that is not JSON is a protocol violation.
                using var doc = JsonDocument.Parse(payload);
                return ValueTask.CompletedTask;
            }, cancellationToken);
        }
        finally
        {
            await stop.CancelAsync();
            await metrics;
        }
    }

    private static async Task MetricsLoopAsync(WsConnection connection, ManagedEnvironment environment, EnvironmentManager manager, CancellationToken cancellationToken)
    {
        if (environment.Docker is { } docker)
        {
            await DockerMetricsLoopAsync(connection, environment, docker, manager, cancellationToken);
            return;
        }
        var sampler = new ProcessMetrics(manager.Time);
        sampler.Sample(environment.Pid); // baseline for the first CPU percentage
        using var timer = new PeriodicTimer(manager.Options.MetricsInterval, manager.Time);
        try
        {
            while (await timer.WaitForNextTickAsync(cancellationToken))
            {
                var pid = environment.Status == EnvironmentStatus.Running ? environment.Pid : null;
                connection.TrySendJson(sampler.Sample(pid), EnvironmentsJsonContext.Default.MetricsMessage);
            }
        }
        catch (OperationCanceledException)
        {
        }
    }

    private static async Task DockerMetricsLoopAsync(WsConnection connection, ManagedEnvironment environment, DockerEngine docker, EnvironmentManager manager,
        CancellationToken cancellationToken)
    {
        var sampler = new DockerMetrics(docker, manager.Time);
        string? Container() => environment.Status == EnvironmentStatus.Running && environment.Workload is DockerWorkload w ? w.ContainerId : null;
        using var timer = new PeriodicTimer(manager.Options.MetricsInterval, manager.Time);
        try
        {
            await sampler.SampleAsync(Container(), cancellationToken); // baseline for the first CPU percentage
            while (await timer.WaitForNextTickAsync(cancellationToken))
                connection.TrySendJson(await sampler.SampleAsync(Container(), cancellationToken), EnvironmentsJsonContext.Default.MetricsMessage);
        }
        catch (OperationCanceledException)
        {
        }
    }
}
