using System.Runtime.InteropServices;

namespace Switchboard.Server.Diagnostics;

/// <summary>
/// A counter for the hottest paths (a message written to every subscriber): each core adds to its own cache line,
/// so concurrent writers never contend, and readers (a metrics scrape) sum the slots. Exact, monotonic.
/// </summary>
public sealed class StripedCounter
{
    [StructLayout(LayoutKind.Explicit, Size = 128)] // a slot per cache line (two, against adjacent-line prefetch)
    private struct Slot
    {
        [FieldOffset(0)]
        public long Value;
    }

    private readonly Slot[] _slots = new Slot[Math.Min(Environment.ProcessorCount, 64)];

    public void Add(long value) =>
        Interlocked.Add(ref _slots[Thread.GetCurrentProcessorId() % _slots.Length].Value, value);

    public long Sum()
    {
        long sum = 0;
        for (var i = 0; i < _slots.Length; i++)
            sum += Volatile.Read(ref _slots[i].Value);
        return sum;
    }
}
