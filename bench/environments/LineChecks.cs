using System.Buffers.Text;

namespace Switchboard.Bench.Environments;

/// <summary>
/// Checks every line a reader gets: seq has no gap and no repeat, the content is the expected one. The reader (the
/// WebSocket client or the direct pipe reader) calls <see cref="OnLine"/> for each line with the time it received it.
/// </summary>
internal abstract class LineCheck
{
    /// <summary>The last seq before the first expected line (the history batch's lastSeq; 0 for a pipe).</summary>
    public long BaseSeq { get; set; }

    public long Lines { get; private set; }
    public long Missing { get; private set; }
    public long Repeated { get; private set; }
    public long Corrupt { get; protected set; }
    public long Skipped { get; set; }
    public long FirstTimestamp { get; private set; }
    public long LastTimestamp { get; private set; }
    private long _nextSeq = -1;

    public long Errors => Missing + Repeated + Corrupt + Skipped;

    /// <param name="seq">the line's seq (the pipe reader counts lines itself)</param>
    /// <param name="message">the line's text in UTF-8</param>
    /// <param name="receivedTicks">wall clock (<see cref="DateTime.UtcNow"/> ticks) when the frame or read arrived</param>
    /// <param name="stopwatch">Stopwatch timestamp of the same moment</param>
    public void OnLine(long seq, ReadOnlySpan<byte> message, long receivedTicks, long stopwatch)
    {
        if (_nextSeq < 0)
            _nextSeq = BaseSeq + 1;
        if (seq < _nextSeq)
        {
            Repeated++;
            return;
        }
        if (seq > _nextSeq)
            Missing += seq - _nextSeq;
        _nextSeq = seq + 1;
        if (Lines == 0)
            FirstTimestamp = stopwatch;
        LastTimestamp = stopwatch;
        Lines++;
        Check(seq - BaseSeq, message, receivedTicks);
    }

    /// <summary>Checks the content of line number <paramref name="n"/> (from 1).</summary>
    protected abstract void Check(long n, ReadOnlySpan<byte> message, long receivedTicks);
}

/// <summary>Scenario (a): the producer is <c>seq 1 N</c>, so line n must read exactly <c>n</c>.</summary>
internal sealed class SeqCheck : LineCheck
{
    protected override void Check(long n, ReadOnlySpan<byte> message, long receivedTicks)
    {
        if (!Utf8Parser.TryParse(message, out long value, out var consumed) || consumed != message.Length || value != n)
            Corrupt++;
    }
}

/// <summary>Scenario (b): line n reads <c>TICKS n</c>; latency = receive time - TICKS, recorded after the warm-up lines.</summary>
internal sealed class LatencyCheck(long warmUpLines, long lines) : LineCheck
{
    private readonly long[] _micros = new long[Math.Max(0, lines - warmUpLines)];
    private int _count;

    protected override void Check(long n, ReadOnlySpan<byte> message, long receivedTicks)
    {
        var space = message.IndexOf((byte)' ');
        if (space <= 0 || !Utf8Parser.TryParse(message[..space], out long ticks, out var c1) || c1 != space
            || !Utf8Parser.TryParse(message[(space + 1)..], out long value, out var c2) || c2 != message.Length - space - 1 || value != n)
        {
            Corrupt++;
            return;
        }
        if (n > warmUpLines && _count < _micros.Length)
            _micros[_count++] = (receivedTicks - ticks) / 10;
    }

    public Percentiles Latency() => Percentiles.Of(_micros.AsSpan(0, _count).ToArray());
}

/// <summary>p50 / p99 / max of a set of samples in microseconds.</summary>
internal sealed record Percentiles(int Count, double P50Ms, double P99Ms, double MaxMs)
{
    public static Percentiles Of(long[] micros)
    {
        if (micros.Length == 0)
            return new Percentiles(0, double.NaN, double.NaN, double.NaN);
        Array.Sort(micros);
        double At(double q) => micros[Math.Min(micros.Length - 1, (int)Math.Ceiling(q * micros.Length) - 1)] / 1000.0;
        return new Percentiles(micros.Length, At(0.50), At(0.99), micros[^1] / 1000.0);
    }
}
