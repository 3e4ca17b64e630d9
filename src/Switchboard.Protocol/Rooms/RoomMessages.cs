using System.Text.Json;
using System.Text.Json.Serialization;

namespace Switchboard.Protocol.Rooms;

/// <summary>
/// A message a client sends on <c>/v1/websocket</c>. One shape for every type; fields not used by a type are absent.
/// Types: <c>connect</c>, <c>reconnect</c>, <c>relay</c>, <c>kick</c>, <c>grant_host</c>, <c>pong</c>, <c>ping</c>.
/// </summary>
public sealed record RoomClientMessage
{
    [JsonPropertyName("type")] public string? Type { get; init; }
    [JsonPropertyName("room")] public string? Room { get; init; }
    [JsonPropertyName("secret")] public string? Secret { get; init; }
    [JsonPropertyName("clientId")] public string? ClientId { get; init; }
    [JsonPropertyName("clientSecret")] public string? ClientSecret { get; init; }
    /// <summary><c>broadcast</c>, <c>host</c> or a client id.</summary>
    [JsonPropertyName("to")] public string? To { get; init; }
    [JsonPropertyName("data")] public JsonElement? Data { get; init; }
}

/// <summary>One member of a room as other members see it.</summary>
public sealed record RoomMemberInfo(
    [property: JsonPropertyName("clientId")] string ClientId,
    [property: JsonPropertyName("host")] bool Host);

/// <summary>Reply to <c>connect</c> and <c>reconnect</c>: the client's identity in the room and the current members (itself included).</summary>
public sealed record RoomConnectedMessage(
    [property: JsonPropertyName("room")] string Room,
    [property: JsonPropertyName("clientId")] string ClientId,
    [property: JsonPropertyName("clientSecret")] string ClientSecret,
    [property: JsonPropertyName("host")] bool Host,
    [property: JsonPropertyName("protocol")] string Protocol,
    [property: JsonPropertyName("reconnected")] bool Reconnected,
    [property: JsonPropertyName("members")] IReadOnlyList<RoomMemberInfo> Members)
{
    [JsonPropertyName("type"), JsonPropertyOrder(-1)] public string Type => "connected";
}

/// <summary>A relayed message: who sent it, how it was addressed (<c>broadcast</c>, <c>host</c> or <c>direct</c>), and the data as sent.</summary>
public sealed record RoomRelayMessage(
    [property: JsonPropertyName("from")] string From,
    [property: JsonPropertyName("to")] string To,
    [property: JsonPropertyName("data")] JsonElement Data)
{
    [JsonPropertyName("type"), JsonPropertyOrder(-1)] public string Type => "relay";
}

public sealed record RoomClientJoinedEvent(
    [property: JsonPropertyName("clientId")] string ClientId,
    [property: JsonPropertyName("host")] bool Host,
    [property: JsonPropertyName("reconnected")] bool Reconnected)
{
    [JsonPropertyName("type"), JsonPropertyOrder(-1)] public string Type => "client_joined";
}

public sealed record RoomClientLeftEvent(
    [property: JsonPropertyName("clientId")] string ClientId,
    [property: JsonPropertyName("reason")] string Reason)
{
    [JsonPropertyName("type"), JsonPropertyOrder(-1)] public string Type => "client_left";
}

/// <summary>The host changed: <c>clientId</c> is the new host; <c>previous</c> the old one (absent when the room had none).</summary>
public sealed record RoomHostAssignedEvent(
    [property: JsonPropertyName("clientId")] string ClientId,
    [property: JsonPropertyName("previous"), JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingNull)] string? Previous,
    [property: JsonPropertyName("reason")] string Reason)
{
    [JsonPropertyName("type"), JsonPropertyOrder(-1)] public string Type => "host_assigned";
}

/// <summary>Sent to every member right before the room closes their connection (close code 4410).</summary>
public sealed record RoomClosedEvent(
    [property: JsonPropertyName("room")] string Room,
    [property: JsonPropertyName("reason")] string Reason)
{
    [JsonPropertyName("type"), JsonPropertyOrder(-1)] public string Type => "room_closed";
}

/// <summary>A recoverable mistake (relay to an unknown client, a kick by a non-host); the connection stays open.</summary>
public sealed record RoomErrorMessage(
    [property: JsonPropertyName("code")] string Code,
    [property: JsonPropertyName("message")] string Message)
{
    [JsonPropertyName("type"), JsonPropertyOrder(-1)] public string Type => "error";
}

/// <summary>Body of <c>POST /v1/api/rooms</c>; every field is optional.</summary>
public sealed record CreateRoomRequest
{
    [JsonPropertyName("name")] public string? Name { get; init; }
    [JsonPropertyName("maxClients")] public int? MaxClients { get; init; }
    /// <summary>Name of a room protocol: <c>host</c> (default) or <c>open</c>.</summary>
    [JsonPropertyName("protocol")] public string? Protocol { get; init; }
}

/// <summary>Reply of <c>POST /v1/api/rooms</c>: the only place the room secret ever appears.</summary>
public sealed record CreatedRoomResponse(
    [property: JsonPropertyName("id")] string Id,
    [property: JsonPropertyName("secret")] string Secret,
    [property: JsonPropertyName("name")] string? Name,
    [property: JsonPropertyName("maxClients")] int MaxClients,
    [property: JsonPropertyName("protocol")] string Protocol,
    [property: JsonPropertyName("createdAt")] DateTimeOffset CreatedAt);

/// <summary>A room as listed: never its secret.</summary>
public sealed record RoomInfoResponse(
    [property: JsonPropertyName("id")] string Id,
    [property: JsonPropertyName("name")] string? Name,
    [property: JsonPropertyName("maxClients")] int MaxClients,
    [property: JsonPropertyName("protocol")] string Protocol,
    [property: JsonPropertyName("createdAt")] DateTimeOffset CreatedAt,
    [property: JsonPropertyName("memberCount")] int MemberCount,
    [property: JsonPropertyName("hostId")] string? HostId,
    [property: JsonPropertyName("members"), JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingNull)] IReadOnlyList<RoomMemberInfo>? Members);

public sealed record RoomListResponse(
    [property: JsonPropertyName("rooms")] IReadOnlyList<RoomInfoResponse> Rooms);

public sealed record RoomProtocolSummary(
    [property: JsonPropertyName("rooms")] int Rooms,
    [property: JsonPropertyName("clients")] int Clients);

/// <summary>Reply of <c>GET /v1/api/summary</c>.</summary>
public sealed record RoomSummaryResponse(
    [property: JsonPropertyName("rooms")] int Rooms,
    [property: JsonPropertyName("clients")] int Clients,
    [property: JsonPropertyName("protocols")] IReadOnlyDictionary<string, RoomProtocolSummary> Protocols);
