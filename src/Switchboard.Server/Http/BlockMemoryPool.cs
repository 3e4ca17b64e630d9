using System.Buffers;
using System.Collections.Concurrent;
using Microsoft.AspNetCore.Connections;

namespace Switchboard.Server.Http;

/// <summary>
/// The memory pool Kestrel's socket transport and pipes rent from, with 16 KiB blocks instead of Kestrel's 4 KiB.
/// The transport receives into one block per <c>recv</c> call, so with 4 KiB blocks a connection streaming at a few
/// hundred MB/s (a tunnel agent sending a download) costs one system call, one pipe flush and one reader wake-up per
/// 4 KiB. Measured on 2 cores, 2 GiB through a tunnel: gateway CPU 6.1 s -> 4.3 s, throughput +15-35 %. Idle
/// connections hold no block (Kestrel waits for data with a zero-byte read), so idle memory is unchanged.
/// </summary>
internal sealed class BlockMemoryPoolFactory : IMemoryPoolFactory<byte>
{
    public const int BlockSize = 16 * 1024;

    /// <summary>Free blocks kept for reuse per pool; blocks returned beyond this are left to the GC (bounded retention).</summary>
    public const int MaxFreeBlocks = 256;

    private readonly ConcurrentQueue<BlockMemoryPool> _pools = new();

    /// <summary>The pools this factory has created (Kestrel creates one per transport).</summary>
    public IEnumerable<BlockMemoryPool> Pools => _pools;

    public MemoryPool<byte> Create(MemoryPoolOptions? options = null)
    {
        var pool = new BlockMemoryPool(BlockSize, MaxFreeBlocks);
        _pools.Enqueue(pool);
        return pool;
    }
}

/// <summary>Pinned blocks of one size, reused through a bounded free list. Thread-safe.</summary>
internal sealed class BlockMemoryPool(int blockSize, int maxFreeBlocks) : MemoryPool<byte>
{
    private readonly ConcurrentQueue<Block> _free = new();
    private int _freeCount;
    private volatile bool _disposed;

    public override int MaxBufferSize => blockSize;

    private long _allocated;

    /// <summary>Blocks currently on the free list (for tests and diagnostics).</summary>
    public int FreeBlocks => Volatile.Read(ref _freeCount);

    /// <summary>Blocks allocated since the pool was created (reuse does not count).</summary>
    public long AllocatedBlocks => Interlocked.Read(ref _allocated);

    public override IMemoryOwner<byte> Rent(int minBufferSize = -1)
    {
        ArgumentOutOfRangeException.ThrowIfGreaterThan(minBufferSize, blockSize);
        ObjectDisposedException.ThrowIf(_disposed, this);
        if (_free.TryDequeue(out var block))
        {
            Interlocked.Decrement(ref _freeCount);
            block.Rented = true;
            return block;
        }
        Interlocked.Increment(ref _allocated);
        return new Block(this, GC.AllocateUninitializedArray<byte>(blockSize, pinned: true)) { Rented = true };
    }

    private void Return(Block block)
    {
        if (_disposed || Interlocked.Increment(ref _freeCount) > maxFreeBlocks)
        {
            if (!_disposed)
                Interlocked.Decrement(ref _freeCount);
            return; // dropped: the pinned array is collected like any other
        }
        _free.Enqueue(block);
    }

    protected override void Dispose(bool disposing)
    {
        _disposed = true;
        while (_free.TryDequeue(out _))
        {
        }
        Volatile.Write(ref _freeCount, 0);
    }

    private sealed class Block(BlockMemoryPool pool, byte[] array) : IMemoryOwner<byte>
    {
        public bool Rented;

        public Memory<byte> Memory { get; } = array;

        public void Dispose()
        {
            // A double return would hand one block to two renters: ignore the second.
            if (!Rented)
                return;
            Rented = false;
            pool.Return(this);
        }
    }
}
