using System.Security.Cryptography;
using System.Text;
using System.Text.Json;
using Switchboard.Protocol;
using Switchboard.Protocol.Rooms;
using Switchboard.Server.Connections;
using Switchboard.Server.Storage;

namespace Switchboard.Server.Rooms;

/// <summary>One member of a room: a client id, its rejoin secret (as a hash) and the connection currently serving it.</summary>
public sealed class RoomMember
{
    internal RoomMember(string clientId, byte[] secretHash, WsConnection connection, DateTimeOffset joinedAt)
    {
        ClientId = clientId;
        SecretHash = secretHash;
        Connection = connection;
        JoinedAt = joinedAt;
    }

    public string ClientId { get; }

    /// <summary>True while this member holds the host role. Changed only under the room's lock.</summary>
    public bool IsHost { get; internal set; }

    public DateTimeOffset JoinedAt { get; }

    internal byte[] SecretHash { get; }

    internal WsConnection Connection { get; set; }
}

/// <summary>Outcome of a join or a rejoin.</summary>
internal enum JoinStatus
{
    Joined,
    Full,
    Closed,
    BadClientSecret,
    ReconnectExpired,
}

internal readonly record struct JoinResult(JoinStatus Status, RoomMember? Member);

/// <summary>
/// The live state of one room on this node: its members in join order, its host, and the identities of members
/// that left recently (for <c>reconnect</c>). Every mutation happens under the room's lock, and every frame a
/// mutation produces is queued (never written) under that lock, so members see events in one order.
/// <see cref="WsConnection.TrySend"/> never blocks: a member whose queue is full is closed (4008) without
/// delaying anyone else. All delivery goes through <see cref="DeliverLocal"/>: the one place a later multi-node
/// change would also hand room traffic to the message bus.
/// </summary>
public sealed class Room
{
    private readonly Lock _gate = new();
    private readonly List<RoomMember> _members = [];
    private readonly Dictionary<string, Departed> _departed = new(StringComparer.Ordinal);
    private readonly TimeProvider _time;
    private readonly TimeSpan _reconnectGrace;
    private RoomMember? _host;
    private List<RoomMember>? _dropped;
    private bool _closed;

    internal Room(RoomRecord record, IRoomProtocol protocol, TimeProvider time, TimeSpan reconnectGrace)
    {
        Record = record;
        Protocol = protocol;
        _time = time;
        _reconnectGrace = reconnectGrace;
    }

    public RoomRecord Record { get; }

    public string Id => Record.Id;

    public IRoomProtocol Protocol { get; }

    public bool IsClosed
    {
        get
        {
            lock (_gate)
                return _closed;
        }
    }

    /// <summary>Member count, host id and members (join order), read consistently.</summary>
    public (int Count, string? HostId, RoomMemberInfo[] Members) Snapshot()
    {
        lock (_gate)
            return (_members.Count, _host?.ClientId, [.. _members.Select(m => new RoomMemberInfo(m.ClientId, m.IsHost))]);
    }

    /// <summary>Adds a new member with a fresh identity; queues <c>connected</c> to it and <c>client_joined</c> (and <c>host_assigned</c>) to the others.</summary>
    internal JoinResult Join(WsConnection connection)
    {
        var clientSecret = RoomSecrets.NewSecret();
        lock (_gate)
        {
            try
            {
                if (_closed)
                    return new(JoinStatus.Closed, null);
                if (_members.Count >= Record.MaxClients)
                    return new(JoinStatus.Full, null);
                string clientId;
                do
                    clientId = RoomSecrets.NewClientId();
                while (Find(clientId) is not null || _departed.ContainsKey(clientId));
                var member = new RoomMember(clientId, RoomSecrets.Hash(clientSecret), connection, _time.GetUtcNow());
                AddLocked(member, clientSecret, reconnected: false);
                return new(JoinStatus.Joined, member);
            }
            finally
            {
                ReapLocked();
            }
        }
    }

    /// <summary>
    /// Restores an identity: a member that left within the grace period, or a live member whose old connection is
    /// replaced (the client noticed a dead connection before the server did).
    /// </summary>
    internal JoinResult Rejoin(WsConnection connection, string clientId, string clientSecret)
    {
        var presented = RoomSecrets.Hash(clientSecret);
        WsConnection? replaced = null;
        try
        {
            lock (_gate)
            {
                try
                {
                    if (_closed)
                        return new(JoinStatus.Closed, null);
                    PruneDepartedLocked();
                    if (Find(clientId) is { } live)
                    {
                        if (!CryptographicOperations.FixedTimeEquals(live.SecretHash, presented))
                            return new(JoinStatus.BadClientSecret, null);
                        replaced = live.Connection;
                        live.Connection = connection;
                        SendConnectedLocked(live, clientSecret, reconnected: true);
                        return new(JoinStatus.Joined, live);
                    }
                    if (!_departed.TryGetValue(clientId, out var departed))
                        return new(JoinStatus.ReconnectExpired, null);
                    if (!CryptographicOperations.FixedTimeEquals(departed.SecretHash, presented))
                        return new(JoinStatus.BadClientSecret, null);
                    if (_members.Count >= Record.MaxClients)
                        return new(JoinStatus.Full, null);
                    _departed.Remove(clientId);
                    var member = new RoomMember(clientId, departed.SecretHash, connection, _time.GetUtcNow());
                    AddLocked(member, clientSecret, reconnected: true);
                    return new(JoinStatus.Joined, member);
                }
                finally
                {
                    ReapLocked();
                }
            }
        }
        finally
        {
            replaced?.Close(CloseCodes.Normal, "session resumed on another connection", drain: false);
        }
    }

    /// <summary>
    /// The member's connection ended. Removes it (unless its identity moved to a newer connection, or it was already
    /// removed by a kick or the room closing), keeps its identity for the reconnect grace period, and migrates the host.
    /// </summary>
    internal void Leave(RoomMember member, WsConnection connection, string reason)
    {
        lock (_gate)
        {
            try
            {
                if (_closed || !ReferenceEquals(member.Connection, connection) || !_members.Remove(member))
                    return;
                PruneDepartedLocked();
                _departed[member.ClientId] = new Departed(member.SecretHash, _time.GetTimestamp());
                RemovedLocked(member, reason);
            }
            finally
            {
                ReapLocked();
            }
        }
    }

    /// <summary>Relays <paramref name="data"/> from <paramref name="sender"/>; null on success, else why not (sent back as <c>error</c>).</summary>
    internal RoomDenial? Relay(RoomMember sender, string to, JsonElement data)
    {
        // Serialized once, outside the lock; the same bytes are queued for every recipient.
        var addressed = to switch
        {
            "broadcast" => "broadcast",
            "host" => "host",
            _ => "direct",
        };
        var frame = JsonSerializer.SerializeToUtf8Bytes(new RoomRelayMessage(sender.ClientId, addressed, data), RoomsJsonContext.Default.RoomRelayMessage);
        lock (_gate)
        {
            try
            {
                if (_closed || !_members.Contains(sender))
                    return new RoomDenial("not_connected", "you are no longer a member of this room");
                RelayTarget target;
                RoomMember? recipient = null;
                switch (to)
                {
                    case "broadcast":
                        target = RelayTarget.Broadcast;
                        break;
                    case "host":
                        target = RelayTarget.Host;
                        recipient = _host;
                        if (recipient is null)
                            return new RoomDenial("no_host", "the room has no host right now");
                        if (ReferenceEquals(recipient, sender))
                            return new RoomDenial("bad_target", "you are the host");
                        break;
                    default:
                        target = RelayTarget.Client;
                        recipient = Find(to);
                        if (recipient is null)
                            return new RoomDenial("unknown_client", $"no member '{to}' in this room");
                        if (ReferenceEquals(recipient, sender))
                            return new RoomDenial("bad_target", "cannot relay to yourself");
                        break;
                }
                if (Protocol.CanRelay(sender, target, recipient) is { } denial)
                    return denial;
                if (recipient is not null)
                    DeliverLocal([recipient], frame);
                else
                    DeliverLocal(_members.Where(m => !ReferenceEquals(m, sender)), frame);
                return null;
            }
            finally
            {
                ReapLocked();
            }
        }
    }

    /// <summary>Removes <paramref name="clientId"/> for good (no reconnect) and closes it with 4411.</summary>
    internal RoomDenial? Kick(RoomMember actor, string clientId)
    {
        lock (_gate)
        {
            try
            {
                if (_closed || !_members.Contains(actor))
                    return new RoomDenial("not_connected", "you are no longer a member of this room");
                var target = Find(clientId);
                if (target is null)
                    return new RoomDenial("unknown_client", $"no member '{clientId}' in this room");
                if (ReferenceEquals(target, actor))
                    return new RoomDenial("bad_target", "cannot kick yourself");
                if (Protocol.CanKick(actor, target) is { } denial)
                    return denial;
                _members.Remove(target);
                target.Connection.Close(CloseCodes.Kicked, "kicked by the host", drain: true);
                RemovedLocked(target, "kicked");
                return null;
            }
            finally
            {
                ReapLocked();
            }
        }
    }

    /// <summary>Makes <paramref name="clientId"/> the host; every member gets <c>host_assigned</c>.</summary>
    internal RoomDenial? GrantHost(RoomMember actor, string clientId)
    {
        lock (_gate)
        {
            try
            {
                if (_closed || !_members.Contains(actor))
                    return new RoomDenial("not_connected", "you are no longer a member of this room");
                var target = Find(clientId);
                if (target is null)
                    return new RoomDenial("unknown_client", $"no member '{clientId}' in this room");
                if (Protocol.CanGrantHost(actor, target) is { } denial)
                    return denial;
                if (ReferenceEquals(target, _host))
                    return new RoomDenial("bad_target", $"'{clientId}' is already the host");
                SetHostLocked(target, "granted");
                return null;
            }
            finally
            {
                ReapLocked();
            }
        }
    }

    /// <summary>Closes the room: every member gets <c>room_closed</c> and is closed with the protocol's code (4410).</summary>
    internal void Close(string reason)
    {
        lock (_gate)
        {
            if (_closed)
                return;
            _closed = true;
            var closing = Protocol.OnRoomClosed(reason);
            var frame = JsonSerializer.SerializeToUtf8Bytes(new RoomClosedEvent(Id, closing.Reason), RoomsJsonContext.Default.RoomClosedEvent);
            DeliverLocal(_members, frame);
            foreach (var m in _members)
                m.Connection.Close(closing.CloseCode, closing.Reason, drain: true);
            _members.Clear();
            _departed.Clear();
            _dropped = null;
            _host = null;
        }
    }

    private void AddLocked(RoomMember member, string clientSecret, bool reconnected)
    {
        var others = _members.ToArray();
        _members.Add(member);
        var previous = _host;
        var becomesHost = Protocol.TakesHostOnJoin(_host, member);
        if (becomesHost)
        {
            if (previous is not null)
                previous.IsHost = false;
            member.IsHost = true;
            _host = member;
        }
        SendConnectedLocked(member, clientSecret, reconnected);
        if (others.Length > 0)
        {
            DeliverLocal(others, JsonSerializer.SerializeToUtf8Bytes(new RoomClientJoinedEvent(member.ClientId, member.IsHost, reconnected),
                RoomsJsonContext.Default.RoomClientJoinedEvent));
            if (becomesHost && previous is not null)
                DeliverLocal(others, HostAssignedFrame(member, previous, "joined"));
        }
    }

    private void SendConnectedLocked(RoomMember member, string clientSecret, bool reconnected)
    {
        var members = _members.Select(m => new RoomMemberInfo(m.ClientId, m.IsHost)).ToArray();
        DeliverLocal([member], JsonSerializer.SerializeToUtf8Bytes(
            new RoomConnectedMessage(Id, member.ClientId, clientSecret, member.IsHost, Protocol.Name, reconnected, members),
            RoomsJsonContext.Default.RoomConnectedMessage));
    }

    private void RemovedLocked(RoomMember member, string reason)
    {
        DeliverLocal(_members, JsonSerializer.SerializeToUtf8Bytes(new RoomClientLeftEvent(member.ClientId, reason), RoomsJsonContext.Default.RoomClientLeftEvent));
        if (ReferenceEquals(_host, member))
        {
            member.IsHost = false;
            _host = null;
            if (Protocol.ChooseHostAfterLeave(_members) is { } next && _members.Contains(next))
                SetHostLocked(next, "host_left", previous: member);
        }
    }

    private void SetHostLocked(RoomMember next, string reason, RoomMember? previous = null)
    {
        previous ??= _host;
        if (_host is not null)
            _host.IsHost = false;
        next.IsHost = true;
        _host = next;
        DeliverLocal(_members, HostAssignedFrame(next, previous, reason));
    }

    private static byte[] HostAssignedFrame(RoomMember host, RoomMember? previous, string reason) =>
        JsonSerializer.SerializeToUtf8Bytes(new RoomHostAssignedEvent(host.ClientId, previous?.ClientId, reason), RoomsJsonContext.Default.RoomHostAssignedEvent);

    /// <summary>
    /// The single point where room traffic reaches this node's members: queues one shared frame per recipient.
    /// Never blocks; a full queue closes that member alone (4008), whose leave is handled when its connection ends.
    /// </summary>
    private void DeliverLocal(IEnumerable<RoomMember> recipients, byte[] frame)
    {
        var outbound = OutboundFrame.Text(frame);
        foreach (var m in recipients)
        {
            if (!m.Connection.TrySend(outbound) && m.Connection.IsClosing)
                (_dropped ??= []).Add(m);
        }
    }

    /// <summary>
    /// Removes members whose connection is closing (a slow consumer closed by <see cref="DeliverLocal"/>, a dead peer)
    /// right away, rather than when their connection finally ends, so the others learn of it at once and the
    /// room stops queuing frames for them. Their identity stays reusable for the reconnect grace period.
    /// </summary>
    private void ReapLocked()
    {
        while (_dropped is { Count: > 0 } dropped)
        {
            _dropped = null;
            foreach (var m in dropped)
            {
                if (_closed || !_members.Remove(m))
                    continue;
                _departed[m.ClientId] = new Departed(m.SecretHash, _time.GetTimestamp());
                RemovedLocked(m, LeaveReason(m.Connection.CloseCode));
            }
        }
    }

    /// <summary>The <c>reason</c> of <c>client_left</c> for a connection that ended with <paramref name="closeCode"/>.</summary>
    internal static string LeaveReason(int closeCode) => closeCode switch
    {
        CloseCodes.Normal => "left",
        CloseCodes.GoingAway => "server shutting down",
        CloseCodes.SlowConsumer => "slow consumer",
        CloseCodes.Stale => "heartbeat timeout",
        CloseCodes.PolicyViolation => "protocol violation",
        CloseCodes.MessageTooBig => "message too big",
        1006 => "connection lost",
        _ => "disconnected",
    };

    private RoomMember? Find(string clientId)
    {
        foreach (var m in _members)
        {
            if (string.Equals(m.ClientId, clientId, StringComparison.Ordinal))
                return m;
        }
        return null;
    }

    private void PruneDepartedLocked()
    {
        if (_departed.Count == 0)
            return;
        var now = _time.GetTimestamp();
        List<string>? expired = null;
        foreach (var (id, d) in _departed)
        {
            if (_time.GetElapsedTime(d.LeftAt, now) > _reconnectGrace)
                (expired ??= []).Add(id);
        }
        if (expired is not null)
        {
            foreach (var id in expired)
                _departed.Remove(id);
        }
    }

    private readonly record struct Departed(byte[] SecretHash, long LeftAt);
}

/// <summary>Identifiers and secrets for rooms and members, all from the CSPRNG; secrets are kept only as SHA-256.</summary>
internal static class RoomSecrets
{
    public static string NewRoomId() => Convert.ToHexStringLower(RandomNumberGenerator.GetBytes(8));

    public static string NewClientId() => Convert.ToHexStringLower(RandomNumberGenerator.GetBytes(6));

    /// <summary>192 random bits, base64url.</summary>
    public static string NewSecret() => Convert.ToBase64String(RandomNumberGenerator.GetBytes(24)).TrimEnd('=').Replace('+', '-').Replace('/', '_');

    public static byte[] Hash(string secret) => SHA256.HashData(Encoding.UTF8.GetBytes(secret));

    /// <summary>Constant-time check of a presented secret against a stored hash.</summary>
    public static bool Matches(string? presented, byte[] storedHash) =>
        presented is not null && CryptographicOperations.FixedTimeEquals(Hash(presented), storedHash);
}
