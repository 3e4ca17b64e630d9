using System.Text.Json.Serialization;

namespace Switchboard.Protocol.Rooms;

/// <summary>Source-generated JSON metadata for the rooms wire types.</summary>
[JsonSourceGenerationOptions(
    PropertyNamingPolicy = JsonKnownNamingPolicy.CamelCase,
    DefaultIgnoreCondition = JsonIgnoreCondition.Never)]
[JsonSerializable(typeof(RoomClientMessage))]
[JsonSerializable(typeof(RoomMemberInfo))]
[JsonSerializable(typeof(RoomConnectedMessage))]
[JsonSerializable(typeof(RoomRelayMessage))]
[JsonSerializable(typeof(RoomClientJoinedEvent))]
[JsonSerializable(typeof(RoomClientLeftEvent))]
[JsonSerializable(typeof(RoomHostAssignedEvent))]
[JsonSerializable(typeof(RoomClosedEvent))]
[JsonSerializable(typeof(RoomErrorMessage))]
[JsonSerializable(typeof(CreateRoomRequest))]
[JsonSerializable(typeof(CreatedRoomResponse))]
[JsonSerializable(typeof(RoomInfoResponse))]
[JsonSerializable(typeof(RoomListResponse))]
[JsonSerializable(typeof(RoomSummaryResponse))]
public sealed partial class RoomsJsonContext : JsonSerializerContext;
