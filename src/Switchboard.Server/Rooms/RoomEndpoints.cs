using System.Text.Json;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Routing;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.DependencyInjection.Extensions;
using Microsoft.Extensions.Options;
using Switchboard.Protocol.Rooms;
using Switchboard.Server.Auth;
using Switchboard.Server.Channels;
using Switchboard.Server.Connections;
using Switchboard.Server.Http;
using Switchboard.Server.Nodes;

namespace Switchboard.Server.Rooms;

/// <summary>Rooms (relay): the WebSocket endpoint and the room management API (API key required).</summary>
public static class RoomEndpoints
{
    /// <summary>Longest room name accepted.</summary>
    public const int MaxNameLength = 100;

    public static IServiceCollection AddRooms(this IServiceCollection services)
    {
        services.TryAddEnumerable(ServiceDescriptor.Singleton<IRoomProtocol, HostRoomProtocol>());
        services.TryAddEnumerable(ServiceDescriptor.Singleton<IRoomProtocol, OpenRoomProtocol>());
        services.TryAddSingleton<RoomProtocols>();
        services.TryAddSingleton<RoomManager>();
        // After a bus outage the room replicas resynchronize (only buses that can lose messages call this).
        services.AddSingleton<IBusCatchUp>(sp => sp.GetRequiredService<RoomManager>());
        return services;
    }

    public static IEndpointRouteBuilder MapRooms(this IEndpointRouteBuilder app)
    {
        app.Map("/v1/websocket", HandleWebSocketAsync);
        var acceptor = app.ServiceProvider.GetRequiredService<WsAcceptor>();
        var rooms = app.ServiceProvider.GetRequiredService<RoomManager>();
        app.ServiceProvider.GetService<WsFastUpgrade>()?.Map("/v1/websocket", "rooms", anonymous: true,
            (connection, tokenPresented, ct) => RunSessionAsync(connection, tokenPresented, acceptor, rooms, ct));

        var api = app.MapGroup("/v1/api").AddEndpointFilter<ApiKeyFilter>().AddEndpointFilter<StoreUnavailableFilter>();
        api.MapPost("/rooms", CreateAsync);
        api.MapGet("/rooms", ListAsync);
        api.MapGet("/rooms/{id}", GetAsync);
        api.MapDelete("/rooms/{id}", DeleteAsync);
        api.MapGet("/summary", SummaryAsync);
        return app;
    }

    private static async Task HandleWebSocketAsync(HttpContext context, WsAcceptor acceptor, RequestAuth auth, RoomManager rooms)
    {
        var tokenPresented = auth.FindToken(context.Request) is not null;
        var connection = await acceptor.AcceptAsync(context, "rooms", anonymous: true);
        if (connection is not null)
            await RunSessionAsync(connection, tokenPresented, acceptor, rooms, context.RequestAborted);
    }

    // The room protocol on an accepted connection, whichever way it was accepted (HTTP pipeline or WsFastUpgrade).
    private static async Task RunSessionAsync(WsConnection connection, bool tokenPresented, WsAcceptor acceptor, RoomManager rooms, CancellationToken cancellationToken)
    {
        var session = new RoomSession(connection, rooms, tokenPresented);
        try
        {
            await acceptor.RunAsync(connection, session.HandleAsync, cancellationToken);
        }
        finally
        {
            session.OnClosed();
        }
    }

    private static async Task<IResult> CreateAsync(HttpContext context, RoomManager rooms, IOptions<SwitchboardOptions> options)
    {
        var o = options.Value;
        var body = await ChannelEndpoints.ReadBodyAsync(context, o.Limits.MaxHttpBodyBytes);
        if (body is null)
            return ApiResults.Problem(413, "too_large", $"body exceeds {o.Limits.MaxHttpBodyBytes} bytes");
        CreateRoomRequest request;
        try
        {
            request = body.Length == 0 ? new CreateRoomRequest() : JsonSerializer.Deserialize(body, RoomsJsonContext.Default.CreateRoomRequest) ?? new CreateRoomRequest();
        }
        catch (JsonException ex)
        {
            return ApiResults.BadRequest("body must be {\"name\"?: string, \"maxClients\"?: number, \"protocol\"?: string}: " + ex.Message);
        }

        var name = request.Name;
        if (name is not null)
        {
            name = name.Trim();
            if (name.Length == 0)
                name = null;
            else if (name.Length > MaxNameLength)
                return ApiResults.BadRequest($"name must be at most {MaxNameLength} characters");
            else if (name.Any(char.IsControl))
                return ApiResults.BadRequest("name must not contain control characters");
        }
        var maxClients = request.MaxClients ?? Math.Min(o.Rooms.DefaultMaxClients, o.Rooms.MaxClientsLimit);
        if (maxClients < 1 || maxClients > o.Rooms.MaxClientsLimit)
            return ApiResults.BadRequest($"maxClients must be between 1 and {o.Rooms.MaxClientsLimit}");
        var protocol = request.Protocol ?? RoomProtocols.Default;
        if (rooms.Protocols.Find(protocol) is null)
            return ApiResults.BadRequest($"protocol must be one of: {string.Join(", ", rooms.Protocols.Names)}");

        var (record, secret, error) = await rooms.CreateAsync(name, maxClients, protocol, context.RequestAborted);
        if (error == CreateRoomError.TooManyRooms || record is null || secret is null)
            return ApiResults.Problem(StatusCodes.Status429TooManyRequests, "too_many_rooms", $"at most {o.Rooms.MaxRooms} rooms may exist; delete one first");
        return Results.Json(new CreatedRoomResponse(record.Id, secret, record.Name, record.MaxClients, record.Protocol, record.CreatedAt),
            RoomsJsonContext.Default.CreatedRoomResponse, statusCode: StatusCodes.Status201Created);
    }

    private static async Task<IResult> ListAsync(HttpContext context, RoomManager rooms) =>
        Results.Json(new RoomListResponse(await rooms.ListAsync(context.RequestAborted)), RoomsJsonContext.Default.RoomListResponse);

    private static async Task<IResult> GetAsync(string id, HttpContext context, RoomManager rooms) =>
        await rooms.DescribeAsync(id, context.RequestAborted) is { } room
            ? Results.Json(room, RoomsJsonContext.Default.RoomInfoResponse)
            : ApiResults.NotFound($"no room '{id}'");

    private static async Task<IResult> DeleteAsync(string id, string? reason, HttpContext context, RoomManager rooms)
    {
        reason = string.IsNullOrWhiteSpace(reason) ? "room deleted" : reason.Trim();
        if (reason.Length > MaxNameLength || reason.Any(char.IsControl))
            return ApiResults.BadRequest($"reason must be at most {MaxNameLength} characters without control characters");
        return await rooms.DeleteAsync(id, reason, context.RequestAborted)
            ? Results.NoContent()
            : ApiResults.NotFound($"no room '{id}'");
    }

    private static async Task<IResult> SummaryAsync(HttpContext context, RoomManager rooms) =>
        Results.Json(await rooms.SummaryAsync(context.RequestAborted), RoomsJsonContext.Default.RoomSummaryResponse);
}
