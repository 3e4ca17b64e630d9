using System.Buffers;
using System.Collections.Concurrent;
using System.Runtime.InteropServices;
using Microsoft.AspNetCore.Connections;
using Switchboard.Server.Diagnostics;

namespace Switchboard.Server.Connections;

/// <summary>
/// Kestrel's transport memory pool with a configurable block size (<see cref="SwitchboardOptions.TransportBlockBytes"/>).
/// Kestrel's own pool hands out 4 KiB blocks and its socket transport receives into one block at a time, so a bulk
/// stream (a tunnel agent sending a large download) costs a system call, a pipe segment and a WebSocket read per 4 KiB.
/// With larger blocks one receive takes what the kernel has. Idle connections hold no block either way (the transport
/// waits for data before it rents one), so the block size costs memory only while data is in flight.
/// </summary>
internal sealed class BlockMemoryPoolFactory : IMemoryPoolFactory<byte>
{
    // How often blocks that stayed unused for a whole period are released.
    private static readonly TimeSpan TrimPeriod = TimeSpan.FromSeconds(10);

    private readonly int _blockSize;
    private readonly int _maxRetained;
    private readonly TimeProvider _time;
    private readonly ConcurrentBag<BlockMemoryPool> _pools = [];

    public BlockMemoryPoolFactory(int blockSize, long maxRetainedBytes, TimeProvider time, SwitchboardMetrics? metrics = null)
    {
        _blockSize = blockSize;
        _maxRetained = (int)Math.Clamp(maxRetainedBytes / blockSize, 1, int.MaxValue);
        _time = time;
        metrics?.Meter.CreateObservableUpDownCounter("switchboard.transport.pool.retained", () => _pools.Sum(p => (long)p.Retained) * _blockSize, "By",
            "Bytes of transport blocks kept for reuse (idle connections hold none).");
        metrics?.Meter.CreateObservableCounter("switchboard.transport.pool.allocated", () => _pools.Sum(p => p.Allocated) * _blockSize, "By",
            "Bytes of transport blocks allocated since the start; flat under steady load when blocks are reused.");
    }

    public MemoryPool<byte> Create(MemoryPoolOptions? options = null)
    {
        var pool = new BlockMemoryPool(_blockSize, _maxRetained);
        pool.StartTrimming(_time, TrimPeriod);
        _pools.Add(pool);
        return pool;
    }
}

/// <summary>
/// Pinned blocks (allocated on the pinned object heap, so handing one to a socket call pins nothing) kept in a
/// lock-free queue. At most <c>maxRetained</c> returned blocks are kept; beyond that they go back to the GC. Blocks
/// that sat unused for a whole trim period are released too, so a burst does not leave the process at its peak.
/// </summary>
internal sealed class BlockMemoryPool(int blockSize, int maxRetained) : MemoryPool<byte>
{
    private readonly ConcurrentQueue<Block> _free = new();
    private int _retained;
    private int _lowWater;
    private long _allocated;
    private ITimer? _trim;
    private volatile bool _disposed;

    public override int MaxBufferSize => blockSize;

    /// <summary>Blocks waiting in the pool.</summary>
    public int Retained => Volatile.Read(ref _retained);

    /// <summary>Blocks ever allocated (reuse keeps this flat under steady load).</summary>
    public long Allocated => Interlocked.Read(ref _allocated);

    public override IMemoryOwner<byte> Rent(int minBufferSize = -1)
    {
        ArgumentOutOfRangeException.ThrowIfGreaterThan(minBufferSize, blockSize);
        ObjectDisposedException.ThrowIf(_disposed, this);
        if (_free.TryDequeue(out var block))
        {
            var left = Interlocked.Decrement(ref _retained);
            if (left < Volatile.Read(ref _lowWater))
                Volatile.Write(ref _lowWater, left); // approximate under races; it only steers trimming
            block.MarkRented();
            return block;
        }
        Volatile.Write(ref _lowWater, 0);
        Interlocked.Increment(ref _allocated);
        return new Block(this, GC.AllocateUninitializedArray<byte>(blockSize, pinned: true));
    }

    internal void StartTrimming(TimeProvider time, TimeSpan period) =>
        _trim = time.CreateTimer(static state => ((BlockMemoryPool)state!).Trim(), this, period, period);

    /// <summary>Releases the blocks no rent needed since the previous trim (the pool's low-water mark).</summary>
    internal int Trim()
    {
        var release = Volatile.Read(ref _lowWater);
        var released = 0;
        while (released < release && _free.TryDequeue(out _))
        {
            Interlocked.Decrement(ref _retained);
            released++;
        }
        Volatile.Write(ref _lowWater, Retained);
        return released;
    }

    private void Return(Block block)
    {
        if (_disposed)
            return;
        if (Interlocked.Increment(ref _retained) > maxRetained)
        {
            Interlocked.Decrement(ref _retained);
            return; // over the retention bound: the GC reclaims it
        }
        _free.Enqueue(block);
    }

    protected override void Dispose(bool disposing)
    {
        _disposed = true;
        _trim?.Dispose();
        _free.Clear();
        Volatile.Write(ref _retained, 0);
    }

    private sealed class Block(BlockMemoryPool pool, byte[] array) : IMemoryOwner<byte>
    {
        private int _rented = 1;

        public void MarkRented() => Volatile.Write(ref _rented, 1);

        // Array-backed (the socket transport asks for the array) and marked pre-pinned: the array lives on the pinned
        // object heap, so pinning it for a socket call takes no GC handle.
        public Memory<byte> Memory { get; } = MemoryMarshal.CreateFromPinnedArray(array, 0, array.Length);

        public void Dispose()
        {
            if (Interlocked.Exchange(ref _rented, 0) == 0)
                return; // a second dispose of one rental must not queue the block twice
            pool.Return(this);
        }
    }
}
