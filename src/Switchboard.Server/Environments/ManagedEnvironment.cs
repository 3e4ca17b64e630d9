using System.Text.Json;
using Microsoft.Extensions.Logging;
using Switchboard.Protocol.Environments;
using Switchboard.Server.Connections;
using Switchboard.Server.Storage;

namespace Switchboard.Server.Environments;

/// <summary>Receives live lines. Called under the environment's log lock, in seq order: must only enqueue.</summary>
internal interface ILogSubscriber
{
    void Offer(LogRecord[] lines);

    /// <summary>Bytes queued to the client and not yet written (for <see cref="EnvironmentOptions.LogBackpressureBytes"/>).</summary>
    long Backlog { get; }

    /// <summary>True once the client is closing: never wait for it.</summary>
    bool IsClosing { get; }

    /// <summary>Closes the client as a slow consumer (4008).</summary>
    void CloseAsSlow();
}

/// <summary>What a log subscriber gets when it registers: everything after <see cref="UpTo"/> arrives live.</summary>
/// <see cref="RingFirstSeq"/> is the first seq held in memory (lines waiting for the store, then the ring); older ones come from the store.
internal sealed record LogSnapshot(long UpTo, long RingFirstSeq, LogRecord[] FromRing);

/// <summary>
/// One environment on this node: its definition, its workload, its status, the last lines in a bounded ring, the
/// bounded queue of lines waiting for the store, and its local subscribers.
/// </summary>
internal sealed partial class ManagedEnvironment
{
    private readonly EnvironmentOptions _options;
    private readonly IMessageBus _bus;
    private readonly TimeProvider _time;
    private readonly ILogger _logger;
    private readonly DockerEngine? _docker;
    private readonly SemaphoreSlim _ops = new(1, 1);

    private readonly Lock _appendGate = new();
    private readonly Lock _logGate = new();
    private readonly LogRecord[] _ring;
    private int _ringStart;
    private int _ringCount;
    private long _lastSeq;
    private List<LogRecord> _persistQueue = [];
    private List<LogRecord> _persisting = []; // the batch being written to the store (taken from the queue, not yet stored)
    private long _dropped;
    private long _droppedLogged;
    private ILogSubscriber[] _logSubscribers = [];

    private readonly Lock _statusGate = new();
    private Action<StatusMessage>[] _statusSubscribers = [];
    private readonly HashSet<WsConnection> _connections = [];
    private IWorkload? _workload;
    private bool _stopping;
    private bool _deleted;

    public ManagedEnvironment(EnvironmentRecord record, long lastSeq, EnvironmentOptions options, IMessageBus bus, TimeProvider time, ILogger logger,
        DockerEngine? docker = null)
    {
        _docker = docker;
        Record = record;
        _lastSeq = lastSeq;
        _options = options;
        _bus = bus;
        _time = time;
        _logger = logger;
        _ring = new LogRecord[options.RingSize];
    }

    public EnvironmentRecord Record { get; }

    public string Id => Record.Id;

    public string Status { get; private set; } = EnvironmentStatus.Stopped;

    public int? ExitCode { get; private set; }

    public string? Error { get; private set; }

    public int? Pid => _workload?.Pid;

    /// <summary>The current (or last) workload; null before the first start.</summary>
    internal IWorkload? Workload => _workload;

    /// <summary>The Docker engine of a <c>docker</c> environment; null for other drivers or when not configured.</summary>
    internal DockerEngine? Docker => Record.Driver == "docker" ? _docker : null;

    public DateTimeOffset? StartedAt { get; private set; }

    public DateTimeOffset? FinishedAt { get; private set; }

    public long LastSeq
    {
        get
        {
            lock (_logGate)
                return _lastSeq;
        }
    }

    public long DroppedLines => Interlocked.Read(ref _dropped);

    public EnvironmentInfo ToInfo() => new(Record.Id, Record.Name, Record.Driver, Record.Command, Record.Args, Record.Cwd, Record.Env, Record.Image,
        Status, ExitCode, Status == EnvironmentStatus.Running ? Pid : null, LastSeq, DroppedLines, Record.CreatedAt, StartedAt, FinishedAt, Error, Record.NodeId);

    public StatusMessage StatusMessage() => new("status", Status, ExitCode, Error, _time.GetUtcNow());

    // ---------- lifecycle ----------

    public async Task StartAsync(CancellationToken cancellationToken)
    {
        await _ops.WaitAsync(cancellationToken);
        try
        {
            if (_deleted || Status is EnvironmentStatus.Running or EnvironmentStatus.Creating)
                return;
            await SetStatusAsync(EnvironmentStatus.Creating, null, null);
            IWorkload workload;
            try
            {
                workload = Record.Driver switch
                {
                    "process" => ProcessWorkload.Start(Record, AppendFromPipe, _options.MaxLineBytes),
                    "docker" when _docker is not null => await DockerWorkload.StartAsync(_docker, Record, Append, _options.MaxLineBytes, _logger, CancellationToken.None),
                    _ => throw new IOException($"driver '{Record.Driver}' is not available on this gateway"),
                };
            }
            catch (Exception ex) when (ex is IOException or UnauthorizedAccessException or OperationCanceledException)
            {
                Log.StartFailed(_logger, ex, Record.Name);
                FinishedAt = _time.GetUtcNow();
                await SetStatusAsync(EnvironmentStatus.Failed, null, ex.Message);
                return;
            }
            _workload = workload;
            _stopping = false;
            StartedAt = _time.GetUtcNow();
            FinishedAt = null;
            await SetStatusAsync(EnvironmentStatus.Running, null, null);
            _ = WatchAsync(workload);
        }
        finally
        {
            _ops.Release();
        }
    }

    public async Task StopAsync(CancellationToken cancellationToken)
    {
        await _ops.WaitAsync(cancellationToken);
        try
        {
            await StopCoreAsync(_options.StopGracePeriod);
        }
        finally
        {
            _ops.Release();
        }
    }

    public async Task RestartAsync(CancellationToken cancellationToken)
    {
        await StopAsync(cancellationToken);
        await StartAsync(cancellationToken);
    }

    /// <summary>Stops for good: kills the workload, closes every connection with 4410.</summary>
    public async Task DeleteAsync(TimeSpan grace, bool closeConnections = true)
    {
        await _ops.WaitAsync();
        try
        {
            _deleted = true;
            await StopCoreAsync(grace);
            await RemoveContainersAsync(always: closeConnections);
        }
        finally
        {
            _ops.Release();
        }
        if (!closeConnections)
            return;
        WsConnection[] connections;
        lock (_statusGate)
            connections = [.. _connections];
        foreach (var c in connections)
            c.Close(Protocol.CloseCodes.ResourceClosed, "environment deleted", drain: true);
    }

    /// <summary>Gateway shutdown: stop with a short grace, never leaving a process behind.</summary>
    public Task ShutdownAsync(TimeSpan grace) => DeleteAsync(grace, closeConnections: false);

    /// <summary>
    /// Removes the environment's containers (docker driver). On delete always (a container may be left by an earlier
    /// run); at shutdown only when this run started one.
    /// </summary>
    private async Task RemoveContainersAsync(bool always)
    {
        if (Docker is not { } docker || (!always && _workload is null))
            return;
        try
        {
            await docker.RemoveEnvironmentContainersAsync(Id, CancellationToken.None);
        }
        catch (DockerException ex)
        {
            Log.RemoveFailed(_logger, ex, Record.Name);
        }
    }

    private async Task StopCoreAsync(TimeSpan grace)
    {
        var workload = _workload;
        if (workload is null || workload.Completion.IsCompleted)
            return;
        _stopping = true;
        await workload.StopAsync(grace);
        await workload.Completion;
        // WatchAsync sets the status; wait until it has.
        for (var i = 0; i < 200 && Status == EnvironmentStatus.Running; i++)
            await Task.Delay(5);
    }

    private async Task WatchAsync(IWorkload workload)
    {
        var code = await workload.Completion;
        if (!ReferenceEquals(workload, _workload))
            return;
        FinishedAt = _time.GetUtcNow();
        await SetStatusAsync(_stopping ? EnvironmentStatus.Stopped : EnvironmentStatus.Exited, code, null);
    }

    private async Task SetStatusAsync(string status, int? exitCode, string? error)
    {
        StatusMessage message;
        lock (_statusGate)
        {
            Status = status;
            ExitCode = exitCode;
            Error = error;
            message = StatusMessage();
            // Under the gate (handlers only enqueue), so every subscriber sees changes in order.
            foreach (var s in _statusSubscribers)
                s(message);
        }
        try
        {
            await _bus.PublishAsync("env:" + Id + ":status", JsonSerializer.SerializeToUtf8Bytes(message, EnvironmentsJsonContext.Default.StatusMessage), CancellationToken.None);
        }
        catch (Exception ex) when (ex is not OutOfMemoryException)
        {
            Log.BusFailed(_logger, ex, Record.Name);
        }
    }

    /// <summary>Subscribes to status changes; <paramref name="handler"/> first receives the current status, atomically.</summary>
    public IDisposable SubscribeStatus(Action<StatusMessage> handler)
    {
        lock (_statusGate)
        {
            _statusSubscribers = [.. _statusSubscribers, handler];
            handler(StatusMessage());
        }
        return new Unsubscribe(() =>
        {
            lock (_statusGate)
                _statusSubscribers = [.. _statusSubscribers.Where(h => h != handler)];
        });
    }

    // ---------- connections ----------

    /// <summary>Counts a connection against the per-environment limit; false when the limit is reached.</summary>
    public bool TryAddConnection(WsConnection connection)
    {
        lock (_statusGate)
        {
            if (_deleted || _connections.Count >= _options.MaxConnectionsPerEnvironment)
                return false;
            _connections.Add(connection);
            return true;
        }
    }

    public void RemoveConnection(WsConnection connection)
    {
        lock (_statusGate)
            _connections.Remove(connection);
    }

    public int ConnectionCount
    {
        get
        {
            lock (_statusGate)
                return _connections.Count;
        }
    }

    // ---------- logs ----------

    // The process pipe readers' sink (dedicated threads, so waiting here blocks only the pipe): append, then, with
    // LogBackpressureBytes set, pause while a live logs client is that far behind, up to LogBackpressureMaxWait.
    private void AppendFromPipe(byte stream, List<string> lines)
    {
        Append(stream, lines);
        var limit = _options.LogBackpressureBytes;
        if (limit <= 0)
            return;
        foreach (var s in Volatile.Read(ref _logSubscribers))
        {
            if (s.Backlog <= limit)
                continue;
            var started = _time.GetTimestamp();
            while (s.Backlog > limit / 2 && !s.IsClosing)
            {
                if (_time.GetElapsedTime(started) > _options.LogBackpressureMaxWait)
                {
                    s.CloseAsSlow();
                    break;
                }
                Thread.Sleep(1);
            }
        }
    }

    /// <summary>
    /// Called by the pipe readers: numbers the lines, encodes their JSON once (so subscribers only copy bytes), keeps
    /// them in the ring, queues them for the store and offers them to subscribers.
    /// </summary>
    private void Append(byte stream, List<string> lines)
    {
        var now = _time.GetUtcNow();
        long dropped = 0;
        // The append gate orders the readers of stdout and stderr (seq order = offer order) and keeps the encoding
        // out of the log gate, which the persister and new subscribers take. Only Append writes _lastSeq, under both gates.
        lock (_appendGate)
        {
            var records = LogJson.Encode(_lastSeq + 1, now, stream, lines);
            lock (_logGate)
            {
                _lastSeq += records.Length;
                for (var i = 0; i < records.Length; i++)
                {
                    var index = (_ringStart + _ringCount) % _ring.Length;
                    _ring[index] = records[i];
                    if (_ringCount < _ring.Length)
                        _ringCount++;
                    else
                        _ringStart = (_ringStart + 1) % _ring.Length;
                }
                var room = _options.PersistQueueLines - _persistQueue.Count;
                if (room >= records.Length)
                {
                    _persistQueue.AddRange(records);
                }
                else
                {
                    if (room > 0)
                        _persistQueue.AddRange(records.AsSpan(0, room));
                    dropped = records.Length - Math.Max(room, 0);
                }
                foreach (var s in _logSubscribers)
                    s.Offer(records);
            }
        }
        if (dropped > 0)
        {
            var total = Interlocked.Add(ref _dropped, dropped);
            // Log the first drop and then every 100,000 lines, not every line.
            if (total - Interlocked.Read(ref _droppedLogged) >= 100_000 || total == dropped)
            {
                Interlocked.Exchange(ref _droppedLogged, total);
                Log.PersistenceBehind(_logger, Record.Name, total);
            }
        }
    }

    /// <summary>Takes up to <paramref name="max"/> lines waiting for the store.</summary>
    public List<LogRecord> TakePersistBatch(int max)
    {
        lock (_logGate)
        {
            if (_persistQueue.Count == 0)
                return [];
            if (_persistQueue.Count <= max)
            {
                var all = _persistQueue;
                _persistQueue = [];
                _persisting = all;
                return all;
            }
            var batch = _persistQueue.GetRange(0, max);
            _persistQueue.RemoveRange(0, max);
            _persisting = batch;
            return batch;
        }
    }

    /// <summary>The batch from <see cref="TakePersistBatch"/> is in the store (or failed): history reads it from there now.</summary>
    public void PersistDone(List<LogRecord> batch)
    {
        lock (_logGate)
        {
            if (ReferenceEquals(_persisting, batch))
                _persisting = [];
        }
    }

    public int PersistQueueLength
    {
        get
        {
            lock (_logGate)
                return _persistQueue.Count;
        }
    }

    /// <summary>
    /// Registers a live subscriber and returns, atomically, the last seq it will not get live plus the ring's lines
    /// after <paramref name="after"/> (the caller reads older ones from the store).
    /// </summary>
    public LogSnapshot SubscribeLogs(ILogSubscriber subscriber, Func<long, long> after)
    {
        lock (_logGate)
        {
            _logSubscribers = [.. _logSubscribers, subscriber];
            var upTo = _lastSeq;
            var from = after(upTo);
            var ringFirst = _ringCount == 0 ? upTo + 1 : _ring[_ringStart].Seq;
            // Lines older than the ring that are still waiting for (or being written to) the store: the store cannot
            // return them yet, so they come from memory too (both lists are in seq order, the batch being written first).
            var pending = new List<LogRecord>();
            if (from + 1 < ringFirst)
            {
                foreach (var list in (ReadOnlySpan<List<LogRecord>>)[_persisting, _persistQueue])
                {
                    foreach (var r in list)
                    {
                        if (r.Seq >= ringFirst)
                            break;
                        if (r.Seq > from)
                            pending.Add(r);
                    }
                }
            }
            var start = Math.Max(from + 1, ringFirst);
            var n = (int)Math.Max(0, upTo - start + 1);
            var copy = new LogRecord[pending.Count + n];
            pending.CopyTo(copy);
            var offset = (int)(start - ringFirst);
            for (var i = 0; i < n; i++)
                copy[pending.Count + i] = _ring[(_ringStart + offset + i) % _ring.Length];
            return new LogSnapshot(upTo, pending.Count > 0 ? pending[0].Seq : ringFirst, copy);
        }
    }

    public void UnsubscribeLogs(ILogSubscriber subscriber)
    {
        lock (_logGate)
            _logSubscribers = [.. _logSubscribers.Where(s => !ReferenceEquals(s, subscriber))];
    }

    private sealed class Unsubscribe(Action action) : IDisposable
    {
        private int _done;

        public void Dispose()
        {
            if (Interlocked.Exchange(ref _done, 1) == 0)
                action();
        }
    }

    private static partial class Log
    {
        [LoggerMessage(4001, LogLevel.Warning, "Environment {Name} failed to start.")]
        public static partial void StartFailed(ILogger logger, Exception exception, string name);

        [LoggerMessage(4002, LogLevel.Warning, "Environment {Name}: the store is behind its output; {Dropped} lines were not persisted so far (live clients still got them).")]
        public static partial void PersistenceBehind(ILogger logger, string name, long dropped);

        [LoggerMessage(4004, LogLevel.Warning, "Environment {Name}: removing its containers failed.")]
        public static partial void RemoveFailed(ILogger logger, Exception exception, string name);

        [LoggerMessage(4003, LogLevel.Warning, "Environment {Name}: publishing a status change on the bus failed.")]
        public static partial void BusFailed(ILogger logger, Exception exception, string name);
    }
}
