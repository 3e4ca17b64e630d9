namespace Switchboard.Server.Connections;

/// <summary>
/// The senders a fan-out has to start (connections that were idle when it queued their frame), started in a few
/// thread-pool work items (one per core, at most 64 connections each) instead of one per connection: fewer queue
/// operations and worker wake-ups per broadcast, chunks still running in parallel. One instance per broadcast, or one
/// per <see cref="Storage.DeliveryBatch"/> on the thread that runs it: then every fan-out of the batch queues its
/// frames first and the senders start once, so a sender writes the batch's messages in one system call instead of
/// racing the fan-out and writing them one at a time.
/// </summary>
internal sealed class SenderStarts(int capacity)
{
    // Below this many senders a chunk is not worth splitting further; above MaxChunk it is split even when there are
    // more chunks than cores, so a chunk whose thread is descheduled holds up few connections (other workers take the
    // other chunks).
    private const int MinChunk = 8;
    private const int MaxChunk = 64;

    // In a batch, senders are started early once this many frames wait for them, so a batch of large fan-outs
    // (1,000 subscribers x 256 appends) does not hold the first message back for the whole batch: about 50-100 µs
    // of queueing.
    internal const int MaxDeferredFrames = 2048;

    [ThreadStatic]
    private static SenderStarts? t_batch;

    private WsConnection[] _items = new WsConnection[Math.Max(capacity, 1)];
    private int _count;
    private int _frames;
    private readonly bool _growable;

    private SenderStarts(int capacity, bool growable)
        : this(capacity) => _growable = growable;

    /// <summary>The batch open on this thread, or a new instance for one fan-out to about <paramref name="capacity"/> connections.</summary>
    public static SenderStarts For(int capacity) => t_batch ?? new SenderStarts(capacity);

    /// <summary>Opens a batch on this thread (none may be open); <see cref="EndBatch"/> starts what it collected.</summary>
    internal static SenderStarts BeginBatch()
    {
        if (t_batch is not null)
            throw new InvalidOperationException("A delivery batch is already open on this thread.");
        return t_batch = new SenderStarts(64, growable: true);
    }

    internal static void EndBatch(SenderStarts batch)
    {
        if (ReferenceEquals(t_batch, batch))
            t_batch = null;
        batch.Start();
    }

    /// <summary>Queues <paramref name="frame"/> on <paramref name="connection"/>, collecting its sender if it must be started.</summary>
    public bool TrySend(WsConnection connection, in OutboundFrame frame)
    {
        if (!connection.TryEnqueue(frame, out var start))
            return false;
        _frames++;
        if (start)
        {
            if (_count == _items.Length && _growable)
                Array.Resize(ref _items, _items.Length * 2);
            if (_count < _items.Length)
                _items[_count++] = connection;
            else
                connection.StartSender(); // more than announced: start it on its own
        }
        return true;
    }

    /// <summary>
    /// Called once a fan-out has queued its frames: starts every collected sender, or, inside a batch, leaves them
    /// for the end of the batch unless many frames already wait.
    /// </summary>
    public void Complete()
    {
        if (!_growable || _frames >= MaxDeferredFrames)
            Start();
    }

    private void Start()
    {
        var count = _count;
        _count = 0;
        _frames = 0;
        if (count == 0)
            return;
        if (count == 1)
        {
            _items[0].StartSender();
            _items[0] = null!;
            return;
        }
        // A batch reuses its array after this: the chunks get their own copy.
        var items = _growable ? _items[..count] : _items;
        if (_growable)
            Array.Clear(_items, 0, count);
        var size = Math.Clamp((count + Environment.ProcessorCount - 1) / Environment.ProcessorCount, MinChunk, MaxChunk);
        for (var start = 0; start < count; start += size)
            ThreadPool.UnsafeQueueUserWorkItem(new Chunk(items, start, Math.Min(count, start + size)), preferLocal: false);
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
