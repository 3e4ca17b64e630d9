namespace Switchboard.Server.Connections;

/// <summary>
/// The senders a fan-out has to start (connections that were idle when it queued their frame), started in at most one
/// thread-pool work item per core instead of one per connection: fewer queue operations and worker wake-ups per
/// broadcast, still one chunk per core running in parallel. One instance per broadcast.
/// </summary>
internal sealed class SenderStarts(int capacity)
{
    // Below this many senders a chunk is not worth splitting further.
    private const int MinChunk = 8;
    private readonly WsConnection[] _items = new WsConnection[Math.Max(capacity, 1)];
    private int _count;

    /// <summary>Queues <paramref name="frame"/> on <paramref name="connection"/>, collecting its sender if it must be started.</summary>
    public bool TrySend(WsConnection connection, in OutboundFrame frame)
    {
        if (!connection.TryEnqueue(frame, out var start))
            return false;
        if (start)
        {
            if (_count < _items.Length)
                _items[_count++] = connection;
            else
                connection.StartSender(); // more than announced: start it on its own
        }
        return true;
    }

    /// <summary>Starts every collected sender. Must be called once the fan-out has queued its frames.</summary>
    public void Start()
    {
        var count = _count;
        _count = 0;
        if (count == 0)
            return;
        if (count == 1)
        {
            _items[0].StartSender();
            return;
        }
        var chunks = Math.Clamp((count + MinChunk - 1) / MinChunk, 1, Environment.ProcessorCount);
        var size = (count + chunks - 1) / chunks;
        for (var start = 0; start < count; start += size)
            ThreadPool.UnsafeQueueUserWorkItem(new Chunk(_items, start, Math.Min(count, start + size)), preferLocal: false);
    }

    private sealed class Chunk(WsConnection[] items, int start, int end) : IThreadPoolWorkItem
    {
        public void Execute()
        {
            for (var i = start; i < end; i++)
                items[i].RunSender();
        }
    }
}
