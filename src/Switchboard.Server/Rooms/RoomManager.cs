using System.Collections.Concurrent;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Options;
using System.Text.Json;
using Switchboard.Protocol.Rooms;
using Switchboard.Server.Nodes;
using Switchboard.Server.Storage;

namespace Switchboard.Server.Rooms;

/// <summary>Why a room could not be created.</summary>
internal enum CreateRoomError
{
    None,
    TooManyRooms,
}

/// <summary>
/// The rooms of this node. Definitions live in <see cref="IRoomStore"/> (so rooms survive a restart); the live
/// state (<see cref="Room"/>) is created lazily the first time a room is used. Create, load and delete are
/// serialized so a room being deleted is never resurrected by a concurrent load.
/// <para>
/// On several nodes (any bus other than the in-process one) every node replicates the member list of the rooms it
/// has loaded through bus topic <c>room:{id}</c>: a node loading a room asks the others for their members
/// (<see cref="RoomBusEvent.Sync"/>), applies the events they publish, and drops the members of nodes whose
/// registry entry expired.
/// </para>
/// </summary>
public sealed partial class RoomManager : IBusCatchUp, IDisposable
{
    private const string BusPrefix = "room:";
    private readonly ConcurrentDictionary<string, Room> _rooms = new(StringComparer.Ordinal);
    private readonly ConcurrentDictionary<string, Room> _loading = new(StringComparer.Ordinal);
    private readonly ConcurrentDictionary<string, SyncWaiter> _syncs = new(StringComparer.Ordinal);
    private readonly SemaphoreSlim _gate = new(1, 1);
    private readonly RoomOptions _options;
    private readonly IRoomStore store;
    private readonly RoomProtocols protocols;
    private readonly TimeProvider time;
    private readonly ILogger<RoomManager> logger;
    private readonly IMessageBus _bus;
    private readonly INodeRegistry _nodes;
    private readonly NodeOptions _nodeOptions;
    private readonly IDisposable? _subscription;
    private readonly CancellationTokenSource _stopping = new();
    private int? _storedCount;
    private int _disposed;

    public RoomManager(IRoomStore store, RoomProtocols protocols, IOptions<SwitchboardOptions> options, TimeProvider time, ILogger<RoomManager> logger,
        IMessageBus bus, INodeRegistry nodes, IOptions<NodeOptions> nodeOptions)
    {
        this.store = store;
        this.protocols = protocols;
        this.time = time;
        this.logger = logger;
        _options = options.Value.Rooms;
        _bus = bus;
        _nodes = nodes;
        _nodeOptions = nodeOptions.Value;
        Clustered = bus is not InProcessBus;
        if (Clustered)
        {
            _subscription = bus.Subscribe(BusPrefix + "*", OnBusMessageAsync);
            _ = Task.Run(() => SweepLoopAsync(_stopping.Token));
        }
    }

    /// <summary>True when rooms are shared with other nodes over the bus.</summary>
    public bool Clustered { get; }

    /// <summary>How long a node loading a room waits for the other nodes' members. 2 s: replies take milliseconds; a node that does not answer is treated as having none.</summary>
    internal static readonly TimeSpan SyncTimeout = TimeSpan.FromSeconds(2);

    /// <summary>Room ids are 16 hex characters; anything much longer is not looked up.</summary>
    private const int MaxIdLength = 64;

    public RoomProtocols Protocols => protocols;

    /// <summary>Creates and stores a room; returns it with its secret (shown once), or why it could not be created.</summary>
    internal async Task<(RoomRecord? Room, string? Secret, CreateRoomError Error)> CreateAsync(string? name, int maxClients, string protocol, CancellationToken cancellationToken)
    {
        await _gate.WaitAsync(cancellationToken);
        try
        {
            _storedCount ??= (await store.ListAsync(cancellationToken)).Count;
            if (_storedCount >= _options.MaxRooms)
                return (null, null, CreateRoomError.TooManyRooms);
            var secret = RoomSecrets.NewSecret();
            var record = new RoomRecord(RoomSecrets.NewRoomId(), RoomSecrets.Hash(secret), protocol, maxClients,
                DateTimeOffset.FromUnixTimeMilliseconds(time.GetUtcNow().ToUnixTimeMilliseconds()), name);
            await store.CreateAsync(record, cancellationToken);
            _storedCount++;
            Log.Created(logger, record.Id, protocol, maxClients);
            return (record, secret, CreateRoomError.None);
        }
        finally
        {
            _gate.Release();
        }
    }

    /// <summary>The live room, loaded from the store on first use; null when no such room exists.</summary>
    public async ValueTask<Room?> GetAsync(string id, CancellationToken cancellationToken)
    {
        if (_rooms.TryGetValue(id, out var room))
            return room;
        if (id.Length > MaxIdLength)
            return null; // not an id this gateway issued: no store lookup
        await _gate.WaitAsync(cancellationToken);
        try
        {
            if (_rooms.TryGetValue(id, out room))
                return room;
            var record = await store.GetAsync(id, cancellationToken);
            if (record is null)
                return null;
            var protocol = protocols.Find(record.Protocol);
            if (protocol is null)
            {
                Log.UnknownProtocol(logger, record.Id, record.Protocol);
                return null;
            }
            if (!Clustered)
            {
                room = new Room(record, protocol, time, _options.ReconnectGracePeriod);
                _rooms[id] = room;
                return room;
            }
            room = new Room(record, protocol, time, _options.ReconnectGracePeriod, _bus.NodeId, PublishEvent);
            await LoadMembersAsync(room, cancellationToken);
            return room;
        }
        finally
        {
            _gate.Release();
        }
    }

    /// <summary>Deletes a room from the store and closes every member (4410) with <paramref name="reason"/>. False when it did not exist.</summary>
    public async Task<bool> DeleteAsync(string id, string reason, CancellationToken cancellationToken)
    {
        Room? room;
        bool deleted;
        await _gate.WaitAsync(cancellationToken);
        try
        {
            deleted = await store.DeleteAsync(id, cancellationToken);
            if (deleted && _storedCount is not null)
                _storedCount--;
            _rooms.TryRemove(id, out room);
        }
        finally
        {
            _gate.Release();
        }
        var members = room?.Snapshot().Count ?? 0;
        room?.Close(reason);
        if (deleted && Clustered)
            PublishEvent(id, new RoomBusEvent(RoomBusEvent.Close, Reason: reason));
        if (deleted)
            Log.Deleted(logger, id, members);
        return deleted;
    }

    /// <summary>Every stored room with its live member count and host.</summary>
    public async Task<IReadOnlyList<RoomInfoResponse>> ListAsync(CancellationToken cancellationToken)
    {
        var records = await store.ListAsync(cancellationToken);
        return [.. records.Select(r => Describe(r, includeMembers: false))];
    }

    /// <summary>One room with its members, or null.</summary>
    public async Task<RoomInfoResponse?> DescribeAsync(string id, CancellationToken cancellationToken)
    {
        var record = _rooms.TryGetValue(id, out var room) ? room.Record
            : id.Length > MaxIdLength ? null : await store.GetAsync(id, cancellationToken);
        return record is null ? null : Describe(record, includeMembers: true);
    }

    /// <summary>Rooms and connected clients, in total and per protocol.</summary>
    public async Task<RoomSummaryResponse> SummaryAsync(CancellationToken cancellationToken)
    {
        var records = await store.ListAsync(cancellationToken);
        var perProtocol = protocols.Names.ToDictionary(n => n, _ => (Rooms: 0, Clients: 0), StringComparer.Ordinal);
        var clients = 0;
        foreach (var r in records)
        {
            var count = _rooms.TryGetValue(r.Id, out var room) ? room.Snapshot().Count : 0;
            clients += count;
            var (rooms, c) = perProtocol.GetValueOrDefault(r.Protocol);
            perProtocol[r.Protocol] = (rooms + 1, c + count);
        }
        return new RoomSummaryResponse(records.Count, clients,
            perProtocol.ToDictionary(p => p.Key, p => new RoomProtocolSummary(p.Value.Rooms, p.Value.Clients), StringComparer.Ordinal));
    }

    private RoomInfoResponse Describe(RoomRecord record, bool includeMembers)
    {
        var (count, hostId, members) = _rooms.TryGetValue(record.Id, out var room) ? room.Snapshot() : (0, null, []);
        return new RoomInfoResponse(record.Id, record.Name, record.MaxClients, record.Protocol, record.CreatedAt, count, hostId,
            includeMembers ? members : null);
    }

    public void Dispose()
    {
        // Registered twice (itself and as a bus catch-up hook), so disposed twice.
        if (Interlocked.Exchange(ref _disposed, 1) == 1)
            return;
        _subscription?.Dispose();
        _stopping.Cancel();
        _stopping.Dispose();
        _gate.Dispose();
    }

    /// <summary>Loads the other nodes' members of a room: routes its events to it first, then asks every live node and waits for the replies (bounded).</summary>
    private async Task LoadMembersAsync(Room room, CancellationToken cancellationToken)
    {
        var expected = (await _nodes.ListAsync(cancellationToken)).Select(n => n.Id).Where(n => n != _bus.NodeId).ToHashSet(StringComparer.Ordinal);
        var waiter = new SyncWaiter(expected);
        _loading[room.Id] = room;
        _syncs[room.Id] = waiter;
        try
        {
            if (expected.Count > 0)
            {
                PublishEvent(room.Id, new RoomBusEvent(RoomBusEvent.Sync, Requester: _bus.NodeId));
                try
                {
                    await waiter.Done.Task.WaitAsync(SyncTimeout, time, cancellationToken);
                }
                catch (TimeoutException)
                {
                    Log.SyncIncomplete(logger, room.Id, string.Join(", ", waiter.Missing()));
                }
            }
            room.FinishLoad();
            _rooms[room.Id] = room;
        }
        finally
        {
            _syncs.TryRemove(room.Id, out _);
            _loading.TryRemove(room.Id, out _);
        }
    }

    private void PublishEvent(Room room, RoomBusEvent e) => PublishEvent(room.Id, e);

    /// <summary>Queues an event on the bus. Called under a room's lock so a node's events leave in the order they happened; the bus never blocks here (it queues).</summary>
    private void PublishEvent(string roomId, RoomBusEvent e)
    {
        var payload = JsonSerializer.SerializeToUtf8Bytes(e, RoomBusJsonContext.Default.RoomBusEvent);
        var pending = _bus.PublishAsync(BusPrefix + roomId, payload, CancellationToken.None);
        if (!pending.IsCompletedSuccessfully)
            _ = ObserveAsync(pending, roomId);
    }

    private async Task ObserveAsync(ValueTask pending, string roomId)
    {
        try
        {
            await pending;
        }
        catch (Exception ex)
        {
            Log.PublishFailed(logger, ex, roomId);
        }
    }

    private ValueTask OnBusMessageAsync(BusMessage message, CancellationToken cancellationToken)
    {
        if (message.SourceNode == _bus.NodeId)
            return ValueTask.CompletedTask;
        var roomId = message.Topic[BusPrefix.Length..];
        RoomBusEvent? e;
        try
        {
            e = JsonSerializer.Deserialize(message.Payload.Span, RoomBusJsonContext.Default.RoomBusEvent);
        }
        catch (JsonException ex)
        {
            Log.Malformed(logger, ex, roomId);
            return ValueTask.CompletedTask;
        }
        if (e is null)
            return ValueTask.CompletedTask;
        switch (e.Kind)
        {
            case RoomBusEvent.Sync:
                // Every node answers, with its own members (none when it has not loaded the room), so the loader need not wait out the timeout.
                var state = _rooms.TryGetValue(roomId, out var loaded)
                    ? loaded.LocalState(message.SourceNode)
                    : new RoomBusEvent(RoomBusEvent.State, Requester: message.SourceNode);
                PublishEvent(roomId, state);
                break;
            case RoomBusEvent.State when e.Requester == _bus.NodeId:
                if (_loading.TryGetValue(roomId, out var loading))
                {
                    loading.ApplyState(e, message.SourceNode);
                    if (_syncs.TryGetValue(roomId, out var waiter))
                        waiter.Answered(message.SourceNode);
                }
                else if (_rooms.TryGetValue(roomId, out var live))
                {
                    // An answer to a resync after a bus reconnect, or one that came after loading stopped waiting.
                    live.Reconcile(e, message.SourceNode);
                }
                break;
            case RoomBusEvent.Close:
                if (_rooms.TryRemove(roomId, out var closing) || _loading.TryGetValue(roomId, out closing))
                    closing.Close(e.Reason ?? "room deleted");
                break;
            default:
                if (_rooms.TryGetValue(roomId, out var room) || _loading.TryGetValue(roomId, out room))
                    room.Apply(e, message.SourceNode);
                break;
        }
        return ValueTask.CompletedTask;
    }

    /// <summary>
    /// The bus listens again after an outage: events of other nodes may have been lost, so every loaded room asks the
    /// other nodes for their members again and reconciles with the answers as they arrive. Does not wait for them: the
    /// bus delivers the answers on the thread that calls this.
    /// </summary>
    public Task CatchUpAsync(CancellationToken cancellationToken)
    {
        if (!Clustered)
            return Task.CompletedTask;
        foreach (var id in _rooms.Keys)
            PublishEvent(id, new RoomBusEvent(RoomBusEvent.Sync, Requester: _bus.NodeId));
        return Task.CompletedTask;
    }

    /// <summary>Every heartbeat interval: drops members served by nodes that are no longer in the registry.</summary>
    private async Task SweepLoopAsync(CancellationToken stop)
    {
        using var timer = new PeriodicTimer(_nodeOptions.HeartbeatInterval, time);
        try
        {
            while (await timer.WaitForNextTickAsync(stop))
            {
                try
                {
                    var remote = _rooms.Values.Select(r => (Room: r, Nodes: r.RemoteNodes())).Where(r => r.Nodes.Count > 0).ToList();
                    if (remote.Count == 0)
                        continue;
                    var live = (await _nodes.ListAsync(stop)).Select(n => n.Id).ToHashSet(StringComparer.Ordinal);
                    foreach (var (room, nodes) in remote)
                    {
                        foreach (var node in nodes.Where(n => !live.Contains(n)))
                        {
                            Log.NodeGone(logger, room.Id, node);
                            room.RemoveNode(node, "node lost");
                        }
                    }
                }
                catch (Exception ex) when (ex is not OperationCanceledException)
                {
                    Log.SweepFailed(logger, ex);
                }
            }
        }
        catch (OperationCanceledException)
        {
        }
    }

    /// <summary>Which nodes have answered a <see cref="RoomBusEvent.Sync"/>.</summary>
    private sealed class SyncWaiter(HashSet<string> expected)
    {
        private readonly Lock _gate = new();

        public TaskCompletionSource Done { get; } = new(TaskCreationOptions.RunContinuationsAsynchronously);

        public void Answered(string node)
        {
            lock (_gate)
            {
                if (expected.Remove(node) && expected.Count == 0)
                    Done.TrySetResult();
            }
        }

        public string[] Missing()
        {
            lock (_gate)
                return [.. expected];
        }
    }

    private static partial class Log
    {
        [LoggerMessage(3001, LogLevel.Information, "Room {RoomId} created (protocol {Protocol}, max {MaxClients} clients).")]
        public static partial void Created(ILogger logger, string roomId, string protocol, int maxClients);

        [LoggerMessage(3002, LogLevel.Information, "Room {RoomId} deleted; {Members} members closed.")]
        public static partial void Deleted(ILogger logger, string roomId, int members);

        [LoggerMessage(3003, LogLevel.Warning, "Room {RoomId} uses protocol '{Protocol}', which is not registered; treating it as unknown.")]
        public static partial void UnknownProtocol(ILogger logger, string roomId, string protocol);

        [LoggerMessage(3004, LogLevel.Warning, "Room {RoomId}: no member list from node(s) {Nodes} in time; members connected there before are missing until they reconnect.")]
        public static partial void SyncIncomplete(ILogger logger, string roomId, string nodes);

        [LoggerMessage(3005, LogLevel.Warning, "Room {RoomId}: publishing an event on the bus failed.")]
        public static partial void PublishFailed(ILogger logger, Exception exception, string roomId);

        [LoggerMessage(3006, LogLevel.Warning, "Room {RoomId}: malformed bus event ignored.")]
        public static partial void Malformed(ILogger logger, Exception exception, string roomId);

        [LoggerMessage(3007, LogLevel.Information, "Room {RoomId}: node {NodeId} expired; its members are removed.")]
        public static partial void NodeGone(ILogger logger, string roomId, string nodeId);

        [LoggerMessage(3008, LogLevel.Warning, "Sweeping members of expired nodes failed.")]
        public static partial void SweepFailed(ILogger logger, Exception exception);
    }
}
