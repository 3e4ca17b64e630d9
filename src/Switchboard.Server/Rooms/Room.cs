using System.Security.Cryptography;
using System.Text;
using System.Text.Json;
using Switchboard.Protocol;
using Switchboard.Protocol.Rooms;
using Switchboard.Server.Connections;
using Switchboard.Server.Storage;

namespace Switchboard.Server.Rooms;

/// <summary>
/// One member of a room: a client id, its rejoin secret (as a hash), the node serving it and, when that node is this
/// one, the connection currently serving it.
/// </summary>
public sealed class RoomMember
{
    internal RoomMember(string clientId, byte[] secretHash, WsConnection? connection, string nodeId, long order, DateTimeOffset joinedAt)
    {
        ClientId = clientId;
        SecretHash = secretHash;
        Connection = connection;
        NodeId = nodeId;
        Order = order;
        JoinedAt = joinedAt;
    }

    public string ClientId { get; }

    /// <summary>True while this member holds the host role. Changed only under the room's lock.</summary>
    public bool IsHost { get; internal set; }

    public DateTimeOffset JoinedAt { get; }

    /// <summary>The node this member is connected to (this node's id for local members).</summary>
    public string NodeId { get; internal set; }

    /// <summary>True when the member is connected to this node.</summary>
    public bool IsLocal => Connection is not null;

    /// <summary>Join order across nodes: UTC ticks of the join, made strictly increasing per room on each node; ties broken by node and client id.</summary>
    internal long Order { get; }

    internal byte[] SecretHash { get; }

    /// <summary>The serving connection on this node; null for a member connected to another node.</summary>
    internal WsConnection? Connection { get; set; }

    /// <summary>Orders members by join (oldest first), identically on every node.</summary>
    internal static int CompareOrder(RoomMember a, RoomMember b)
    {
        var c = a.Order.CompareTo(b.Order);
        if (c == 0)
            c = string.CompareOrdinal(a.NodeId, b.NodeId);
        return c != 0 ? c : string.CompareOrdinal(a.ClientId, b.ClientId);
    }
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
/// delaying anyone else. All delivery goes through <see cref="DeliverLocal"/>.
/// <para>
/// On several nodes each node holds a replica of the member list (members connected elsewhere have no connection).
/// A node applies its own members' actions, delivers to its own connections first, and publishes one event on the
/// bus (<see cref="RoomBusEvent"/>, topic <c>room:{id}</c>) that the other nodes apply to their replica with the same
/// rules: host election is a function of the member list (oldest member), so every node reaches the same host.
/// </para>
/// </summary>
public sealed class Room
{
    private readonly Lock _gate = new();
    private readonly List<RoomMember> _members = [];
    private readonly Dictionary<string, Departed> _departed = new(StringComparer.Ordinal);
    private readonly TimeProvider _time;
    private readonly TimeSpan _reconnectGrace;
    private readonly string _nodeId;
    private readonly Action<Room, RoomBusEvent>? _publish;
    private RoomMember? _host;
    private bool _hostGranted;
    private List<RoomMember>? _dropped;
    private bool _closed;
    private long _lastOrder;

    internal Room(RoomRecord record, IRoomProtocol protocol, TimeProvider time, TimeSpan reconnectGrace, string nodeId = "local", Action<Room, RoomBusEvent>? publish = null)
    {
        Record = record;
        Protocol = protocol;
        _time = time;
        _reconnectGrace = reconnectGrace;
        _nodeId = nodeId;
        _publish = publish;
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
                var member = new RoomMember(clientId, RoomSecrets.Hash(clientSecret), connection, _nodeId, NextOrderLocked(), _time.GetUtcNow());
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
                        if (replaced is null)
                        {
                            // The member was connected to another node: it moves here, and that node closes its old connection.
                            live.NodeId = _nodeId;
                            Publish(new RoomBusEvent(RoomBusEvent.Moved, ClientId: live.ClientId));
                        }
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
                    var member = new RoomMember(clientId, departed.SecretHash, connection, _nodeId, NextOrderLocked(), _time.GetUtcNow());
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
                Publish(new RoomBusEvent(RoomBusEvent.Leave, ClientId: member.ClientId, Reason: reason));
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
                {
                    if (recipient.IsLocal)
                        DeliverLocal([recipient], frame);
                    else
                        Publish(new RoomBusEvent(RoomBusEvent.Relay, ClientId: sender.ClientId, To: recipient.ClientId, Frame: frame));
                }
                else
                {
                    DeliverLocal(_members.Where(m => !ReferenceEquals(m, sender)), frame);
                    if (HasRemoteLocked())
                        Publish(new RoomBusEvent(RoomBusEvent.Relay, ClientId: sender.ClientId, Frame: frame));
                }
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
                target.Connection?.Close(CloseCodes.Kicked, "kicked by the host", drain: true);
                Publish(new RoomBusEvent(RoomBusEvent.Kick, ClientId: target.ClientId, Reason: "kicked"));
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
                var previous = _host;
                SetHostLocked(target, "granted");
                _hostGranted = true;
                Publish(new RoomBusEvent(RoomBusEvent.Host, ClientId: target.ClientId, Previous: previous?.ClientId, Reason: "granted"));
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
                m.Connection?.Close(closing.CloseCode, closing.Reason, drain: true);
            _members.Clear();
            _departed.Clear();
            _dropped = null;
            _host = null;
        }
    }

    /// <summary>Applies an event published by another node (<paramref name="sourceNode"/>) to this node's replica and delivers what this node's members must see.</summary>
    internal void Apply(RoomBusEvent e, string sourceNode)
    {
        lock (_gate)
        {
            try
            {
                if (_closed)
                    return;
                switch (e.Kind)
                {
                    case RoomBusEvent.Join when e.ClientId is { } id && e.SecretHash is { } hash:
                        ApplyJoinLocked(new RoomMember(id, hash, null, sourceNode, e.Order, _time.GetUtcNow()), e.Reconnected);
                        break;
                    case RoomBusEvent.Leave or RoomBusEvent.Kick when e.ClientId is { } id && Find(id) is { } gone:
                        // A leave names a member of the sending node (one that moved here since is kept); a kick may name one of ours, which we close.
                        if (e.Kind == RoomBusEvent.Leave && gone.IsLocal)
                            break;
                        _members.Remove(gone);
                        if (e.Kind == RoomBusEvent.Leave)
                            _departed[gone.ClientId] = new Departed(gone.SecretHash, _time.GetTimestamp());
                        else
                            gone.Connection?.Close(CloseCodes.Kicked, "kicked by the host", drain: true);
                        RemovedLocked(gone, e.Reason ?? "left");
                        break;
                    case RoomBusEvent.Relay when e.Frame is { } frame:
                        if (e.To is null)
                            DeliverLocal(_members.Where(m => m.IsLocal && m.ClientId != e.ClientId), frame);
                        else if (Find(e.To) is { IsLocal: true } recipient)
                            DeliverLocal([recipient], frame);
                        break;
                    case RoomBusEvent.Host when e.ClientId is { } id && Find(id) is { } next:
                        if (!ReferenceEquals(next, _host))
                            SetHostLocked(next, e.Reason ?? "granted");
                        _hostGranted = true;
                        break;
                    case RoomBusEvent.Moved when e.ClientId is { } id && Find(id) is { } moved:
                        var old = moved.Connection;
                        moved.Connection = null;
                        moved.NodeId = sourceNode;
                        old?.Close(CloseCodes.Normal, "session resumed on another connection", drain: false);
                        break;
                }
            }
            finally
            {
                ReapLocked();
            }
        }
    }

    /// <summary>This node's members and its view of the host, for a node that is loading the room.</summary>
    internal RoomBusEvent LocalState(string requester)
    {
        lock (_gate)
        {
            return new RoomBusEvent(RoomBusEvent.State, ClientId: _host?.ClientId, Requester: requester, Granted: _hostGranted,
                Members: [.. _members.Where(m => m.IsLocal).Select(m => new RoomBusMember(m.ClientId, m.Order, m.SecretHash))]);
        }
    }

    /// <summary>Adds the members another node reported while this node loads the room (no events: nobody here is connected yet).</summary>
    internal void ApplyState(RoomBusEvent state, string sourceNode)
    {
        lock (_gate)
        {
            foreach (var m in state.Members ?? [])
            {
                if (Find(m.ClientId) is null)
                    InsertOrderedLocked(new RoomMember(m.ClientId, m.SecretHash, null, sourceNode, m.Order, _time.GetUtcNow()));
            }
            // Replies from several nodes can name different hosts (one of them had not yet seen an older member's
            // join). Resolve as every node does on joins, whatever order the replies arrive in: a granted host beats
            // an automatic one; between automatic ones the older member wins.
            if (state.ClientId is { } hostId && Find(hostId) is { } candidate && !ReferenceEquals(candidate, _host))
            {
                var takes = _host is null
                    || (state.Granted && !_hostGranted)
                    || (!state.Granted && !_hostGranted && RoomMember.CompareOrder(candidate, _host) < 0 && Protocol.TakesHostOnJoin(null, candidate));
                if (takes)
                {
                    if (_host is not null)
                        _host.IsHost = false;
                    candidate.IsHost = true;
                    _host = candidate;
                    _hostGranted = state.Granted;
                }
            }
        }
    }

    /// <summary>
    /// Brings this node's view of <paramref name="sourceNode"/>'s members in line with what that node reported (after
    /// this node's bus reconnected, or a reply that came after loading gave up waiting): members it no longer has leave,
    /// members this node did not know join, each with the usual events.
    /// </summary>
    internal void Reconcile(RoomBusEvent state, string sourceNode)
    {
        lock (_gate)
        {
            try
            {
                if (_closed)
                    return;
                var reported = (state.Members ?? []).Select(m => m.ClientId).ToHashSet(StringComparer.Ordinal);
                foreach (var gone in _members.Where(m => !m.IsLocal && m.NodeId == sourceNode && !reported.Contains(m.ClientId)).ToArray())
                {
                    _members.Remove(gone);
                    _departed[gone.ClientId] = new Departed(gone.SecretHash, _time.GetTimestamp());
                    RemovedLocked(gone, "connection lost");
                }
                foreach (var m in state.Members ?? [])
                {
                    if (Find(m.ClientId) is { } known)
                    {
                        if (!known.IsLocal)
                            known.NodeId = sourceNode;
                        continue;
                    }
                    ApplyJoinLocked(new RoomMember(m.ClientId, m.SecretHash, null, sourceNode, m.Order, _time.GetUtcNow()), reconnected: false);
                }
            }
            finally
            {
                ReapLocked();
            }
        }
    }

    /// <summary>After loading: a room whose replies named no host gets the one its protocol elects (the oldest member).</summary>
    internal void FinishLoad()
    {
        lock (_gate)
        {
            if (_host is null && _members.Count > 0 && Protocol.ChooseHostAfterLeave(_members) is { } host && _members.Contains(host))
            {
                host.IsHost = true;
                _host = host;
            }
        }
    }

    /// <summary>The other nodes serving members of this room.</summary>
    internal IReadOnlyCollection<string> RemoteNodes()
    {
        lock (_gate)
            return [.. _members.Where(m => !m.IsLocal).Select(m => m.NodeId).Distinct(StringComparer.Ordinal)];
    }

    /// <summary>Removes the members of a node that stopped heartbeating (every node does this on its own, with the same result).</summary>
    internal void RemoveNode(string nodeId, string reason)
    {
        lock (_gate)
        {
            try
            {
                foreach (var m in _members.Where(m => !m.IsLocal && m.NodeId == nodeId).ToArray())
                {
                    if (!_members.Remove(m))
                        continue;
                    _departed[m.ClientId] = new Departed(m.SecretHash, _time.GetTimestamp());
                    RemovedLocked(m, reason);
                }
            }
            finally
            {
                ReapLocked();
            }
        }
    }

    private void ApplyJoinLocked(RoomMember member, bool reconnected)
    {
        if (Find(member.ClientId) is not null)
            return;
        _departed.Remove(member.ClientId);
        InsertOrderedLocked(member);
        var previous = _host;
        var becomesHost = Protocol.TakesHostOnJoin(_host, member)
            // Two nodes that filled an empty room at once each made their own joiner host: the older member wins everywhere.
            || (previous is not null && !_hostGranted && RoomMember.CompareOrder(member, previous) < 0 && Protocol.TakesHostOnJoin(null, member));
        if (becomesHost)
        {
            if (previous is not null)
                previous.IsHost = false;
            member.IsHost = true;
            _host = member;
            _hostGranted = false;
        }
        DeliverLocal(_members.Where(m => !ReferenceEquals(m, member)), JsonSerializer.SerializeToUtf8Bytes(
            new RoomClientJoinedEvent(member.ClientId, member.IsHost, reconnected), RoomsJsonContext.Default.RoomClientJoinedEvent));
        if (becomesHost && previous is not null)
            DeliverLocal(_members.Where(m => !ReferenceEquals(m, member)), HostAssignedFrame(member, previous, "joined"));
    }

    private void InsertOrderedLocked(RoomMember member)
    {
        var i = _members.Count;
        while (i > 0 && RoomMember.CompareOrder(_members[i - 1], member) > 0)
            i--;
        _members.Insert(i, member);
    }

    private long NextOrderLocked()
    {
        _lastOrder = Math.Max(_time.GetUtcNow().UtcTicks, _lastOrder + 1);
        return _lastOrder;
    }

    private bool HasRemoteLocked()
    {
        foreach (var m in _members)
        {
            if (!m.IsLocal)
                return true;
        }
        return false;
    }

    private void Publish(RoomBusEvent e) => _publish?.Invoke(this, e);

    private void AddLocked(RoomMember member, string clientSecret, bool reconnected)
    {
        var others = _members.ToArray();
        InsertOrderedLocked(member);
        var previous = _host;
        var becomesHost = Protocol.TakesHostOnJoin(_host, member);
        if (becomesHost)
        {
            if (previous is not null)
                previous.IsHost = false;
            member.IsHost = true;
            _host = member;
        }
        if (becomesHost)
            _hostGranted = false;
        Publish(new RoomBusEvent(RoomBusEvent.Join, ClientId: member.ClientId, Order: member.Order, SecretHash: member.SecretHash, Reconnected: reconnected));
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
            _hostGranted = false;
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
            if (m.Connection is not { } connection)
                continue; // connected to another node: that node delivers
            if (!connection.TrySend(outbound) && connection.IsClosing)
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
                if (_closed || m.Connection is not { } connection || !_members.Remove(m))
                    continue;
                _departed[m.ClientId] = new Departed(m.SecretHash, _time.GetTimestamp());
                var reason = LeaveReason(connection.CloseCode);
                Publish(new RoomBusEvent(RoomBusEvent.Leave, ClientId: m.ClientId, Reason: reason));
                RemovedLocked(m, reason);
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
