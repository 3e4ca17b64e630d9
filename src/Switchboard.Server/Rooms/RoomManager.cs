using System.Collections.Concurrent;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Options;
using Switchboard.Protocol.Rooms;
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
/// </summary>
public sealed partial class RoomManager(
    IRoomStore store,
    RoomProtocols protocols,
    IOptions<SwitchboardOptions> options,
    TimeProvider time,
    ILogger<RoomManager> logger) : IDisposable
{
    private readonly ConcurrentDictionary<string, Room> _rooms = new(StringComparer.Ordinal);
    private readonly SemaphoreSlim _gate = new(1, 1);
    private readonly RoomOptions _options = options.Value.Rooms;
    private int? _storedCount;

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
            room = new Room(record, protocol, time, _options.ReconnectGracePeriod);
            _rooms[id] = room;
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

    public void Dispose() => _gate.Dispose();

    private static partial class Log
    {
        [LoggerMessage(3001, LogLevel.Information, "Room {RoomId} created (protocol {Protocol}, max {MaxClients} clients).")]
        public static partial void Created(ILogger logger, string roomId, string protocol, int maxClients);

        [LoggerMessage(3002, LogLevel.Information, "Room {RoomId} deleted; {Members} members closed.")]
        public static partial void Deleted(ILogger logger, string roomId, int members);

        [LoggerMessage(3003, LogLevel.Warning, "Room {RoomId} uses protocol '{Protocol}', which is not registered; treating it as unknown.")]
        public static partial void UnknownProtocol(ILogger logger, string roomId, string protocol);
    }
}
