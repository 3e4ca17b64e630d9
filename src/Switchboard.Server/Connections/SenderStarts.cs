namespace Switchboard.Server.Connections;

/// <summary>
/// The senders a fan-out has to start (connections that were idle when it queued their frame), started in a few
/// thread-pool work items (one per core, at most 64 connections each) instead of one per connection: fewer queue
/// operations and worker wake-ups per broadcast, chunks still running in parallel. One instance per broadcast.
/// </summary>
internal sealed class SenderStarts(int capacity)
{
    // Below this many senders a chunk is not worth splitting further; above MaxChunk it is split even when there are
    // more chunks than cores, so a chunk whose thread is descheduled holds up few connections (other workers take the
    // other chunks).
    private const int MinChunk = 8;
    private const int MaxChunk = 64;
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
        var size = Math.Clamp((count + Environment.ProcessorCount - 1) / Environment.ProcessorCount, MinChunk, MaxChunk);
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
