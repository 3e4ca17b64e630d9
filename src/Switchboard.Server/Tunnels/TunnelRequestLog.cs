namespace Switchboard.Server.Tunnels;

/// <summary>One request as seen by the gateway, for inspection and replay.</summary>
public sealed class TunnelRequestRecord
{
    public required long Id { get; init; }
    public required DateTimeOffset StartedAt { get; init; }
    public required string Method { get; init; }
    public required string Path { get; init; }
    public required IReadOnlyList<KeyValuePair<string, string>> RequestHeaders { get; init; }
    public int Status { get; set; }
    public double DurationMs { get; set; }
    public long RequestBytes { get; set; }
    public long ResponseBytes { get; set; }
    public IReadOnlyList<KeyValuePair<string, string>> ResponseHeaders { get; set; } = [];
    public string? Error { get; set; }

    /// <summary>The request body when it fit the replay bound; null when larger (then replay is refused).</summary>
    public byte[]? Body { get; set; }
}

/// <summary>Bounded ring buffer of recent requests of one tunnel.</summary>
public sealed class TunnelRequestLog(int capacity)
{
    private readonly Lock _lock = new();
    private readonly Queue<TunnelRequestRecord> _records = new();
    private long _nextId;

    public long NextId() => Interlocked.Increment(ref _nextId);

    public void Add(TunnelRequestRecord record)
    {
        if (capacity == 0)
            return;
        lock (_lock)
        {
            while (_records.Count >= capacity)
                _records.Dequeue();
            _records.Enqueue(record);
        }
    }

    public TunnelRequestRecord[] Snapshot()
    {
        lock (_lock)
            return [.. _records.Reverse()];
    }

    public TunnelRequestRecord? Find(long id)
    {
        lock (_lock)
            return _records.FirstOrDefault(r => r.Id == id);
    }
}
