using System.Text.Json.Serialization;

namespace Switchboard.Server.Rooms;

/// <summary>
/// What one node tells the others about a room, on bus topic <c>room:{id}</c>. Relays carry the frame exactly as members
/// receive it (serialized once by the sender's node); the other kinds replicate membership and host state.
/// </summary>
internal sealed record RoomBusEvent(
    string Kind,
    string? ClientId = null,
    long Order = 0,
    byte[]? SecretHash = null,
    bool Reconnected = false,
    string? Previous = null,
    string? Reason = null,
    string? To = null,
    byte[]? Frame = null,
    string? Requester = null,
    bool Granted = false,
    RoomBusMember[]? Members = null)
{
    /// <summary>A member joined (or rejoined) on the sending node.</summary>
    public const string Join = "join";

    /// <summary>A member of the sending node left; its identity stays reusable for the reconnect grace period.</summary>
    public const string Leave = "leave";

    /// <summary>The host kicked a member (on any node); the node serving it closes it with 4411.</summary>
    public const string Kick = "kick";

    /// <summary>A relay: to every member (<c>To</c> null) or to one member.</summary>
    public const string Relay = "relay";

    /// <summary>The host role was granted.</summary>
    public const string Host = "host";

    /// <summary>A member resumed its session on the sending node; the node that served it closes the old connection.</summary>
    public const string Moved = "moved";

    /// <summary>The room was deleted.</summary>
    public const string Close = "close";

    /// <summary>A node is loading the room and asks every node for its members.</summary>
    public const string Sync = "sync";

    /// <summary>A node's reply to <see cref="Sync"/>: its own members and its view of the host (<c>ClientId</c>).</summary>
    public const string State = "state";
}

/// <summary>A member as reported in a <see cref="RoomBusEvent.State"/> reply.</summary>
internal sealed record RoomBusMember(string ClientId, long Order, byte[] SecretHash);

[JsonSourceGenerationOptions(PropertyNamingPolicy = JsonKnownNamingPolicy.CamelCase, DefaultIgnoreCondition = JsonIgnoreCondition.WhenWritingDefault)]
[JsonSerializable(typeof(RoomBusEvent))]
internal sealed partial class RoomBusJsonContext : JsonSerializerContext;
