using Switchboard.Protocol;

namespace Switchboard.Server.Rooms;

/// <summary>How a relay is addressed.</summary>
public enum RelayTarget
{
    /// <summary>Every other member.</summary>
    Broadcast,

    /// <summary>The current host.</summary>
    Host,

    /// <summary>One member by client id.</summary>
    Client,
}

/// <summary>Why an action was refused: a stable code and a sentence, sent to the client as an <c>error</c> message.</summary>
public sealed record RoomDenial(string Code, string Message);

/// <summary>How members are closed when the room goes away.</summary>
public sealed record RoomClosing(int CloseCode, string Reason);

/// <summary>
/// The rules of a room, chosen per room at creation by name (<c>protocol</c>). A room calls its protocol under its
/// own lock, so implementations must be fast, pure and must not block. Register more with
/// <c>services.AddSingleton&lt;IRoomProtocol, MyProtocol&gt;()</c>.
/// </summary>
public interface IRoomProtocol
{
    /// <summary>The name used in <c>POST /v1/api/rooms</c> (<c>protocol</c>) and in listings.</summary>
    string Name { get; }

    /// <summary>Whether <paramref name="joining"/> becomes host as it joins; <paramref name="host"/> is the current host (null when none).</summary>
    bool TakesHostOnJoin(RoomMember? host, RoomMember joining);

    /// <summary>The host after the host left; <paramref name="remaining"/> is in join order (oldest first). Null leaves the room without a host.</summary>
    RoomMember? ChooseHostAfterLeave(IReadOnlyList<RoomMember> remaining);

    /// <summary>Null when <paramref name="sender"/> may relay to the target; <paramref name="recipient"/> is the addressed member for <see cref="RelayTarget.Client"/> and <see cref="RelayTarget.Host"/>.</summary>
    RoomDenial? CanRelay(RoomMember sender, RelayTarget target, RoomMember? recipient);

    /// <summary>Null when <paramref name="actor"/> may kick <paramref name="target"/>.</summary>
    RoomDenial? CanKick(RoomMember actor, RoomMember target);

    /// <summary>Null when <paramref name="actor"/> may make <paramref name="target"/> the host.</summary>
    RoomDenial? CanGrantHost(RoomMember actor, RoomMember target);

    /// <summary>What members are told and how they are closed when the room is deleted.</summary>
    RoomClosing OnRoomClosed(string reason);
}

/// <summary>
/// Host-authoritative (the relay server's own protocol): the first member becomes host; when the host leaves, the
/// oldest remaining member is. Only the host may broadcast or address members directly; other members may relay
/// to the host only. Only the host may kick or hand over the host role.
/// </summary>
public sealed class HostRoomProtocol : IRoomProtocol
{
    public const string ProtocolName = "host";

    public string Name => ProtocolName;

    public bool TakesHostOnJoin(RoomMember? host, RoomMember joining) => host is null;

    public RoomMember? ChooseHostAfterLeave(IReadOnlyList<RoomMember> remaining) => remaining.Count > 0 ? remaining[0] : null;

    public RoomDenial? CanRelay(RoomMember sender, RelayTarget target, RoomMember? recipient)
    {
        if (sender.IsHost)
            return null;
        if (target == RelayTarget.Host || (recipient is not null && recipient.IsHost))
            return null;
        return target == RelayTarget.Broadcast
            ? new RoomDenial("forbidden", "only the host may broadcast in a 'host' room; relay to 'host' instead")
            : new RoomDenial("forbidden", "only the host may message other members in a 'host' room; relay to 'host' instead");
    }

    public RoomDenial? CanKick(RoomMember actor, RoomMember target) =>
        actor.IsHost ? null : new RoomDenial("not_host", "only the host may kick");

    public RoomDenial? CanGrantHost(RoomMember actor, RoomMember target) =>
        actor.IsHost ? null : new RoomDenial("not_host", "only the host may grant the host role");

    public RoomClosing OnRoomClosed(string reason) => new(CloseCodes.ResourceClosed, reason);
}

/// <summary>
/// Open: every member may broadcast and message any member. A host still exists (first member, then the oldest
/// remaining) but only moderates: kick and grant_host.
/// </summary>
public sealed class OpenRoomProtocol : IRoomProtocol
{
    public const string ProtocolName = "open";

    public string Name => ProtocolName;

    public bool TakesHostOnJoin(RoomMember? host, RoomMember joining) => host is null;

    public RoomMember? ChooseHostAfterLeave(IReadOnlyList<RoomMember> remaining) => remaining.Count > 0 ? remaining[0] : null;

    public RoomDenial? CanRelay(RoomMember sender, RelayTarget target, RoomMember? recipient) => null;

    public RoomDenial? CanKick(RoomMember actor, RoomMember target) =>
        actor.IsHost ? null : new RoomDenial("not_host", "only the host may kick");

    public RoomDenial? CanGrantHost(RoomMember actor, RoomMember target) =>
        actor.IsHost ? null : new RoomDenial("not_host", "only the host may grant the host role");

    public RoomClosing OnRoomClosed(string reason) => new(CloseCodes.ResourceClosed, reason);
}

/// <summary>The registered protocols by name.</summary>
public sealed class RoomProtocols(IEnumerable<IRoomProtocol> protocols)
{
    private readonly Dictionary<string, IRoomProtocol> _byName = protocols
        .GroupBy(p => p.Name, StringComparer.Ordinal)
        .ToDictionary(g => g.Key, g => g.Last(), StringComparer.Ordinal);

    /// <summary>The protocol rooms get when the creator names none.</summary>
    public static string Default => HostRoomProtocol.ProtocolName;

    public IEnumerable<string> Names => _byName.Keys.Order(StringComparer.Ordinal);

    public IRoomProtocol? Find(string name) => _byName.GetValueOrDefault(name);
}
