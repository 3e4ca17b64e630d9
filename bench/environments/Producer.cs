using System.Buffers.Text;
using System.Diagnostics;

namespace Switchboard.Bench.Environments;

/// <summary>
/// The paced producer of scenario (b): writes <c>TICKS N\n</c> lines at a fixed rate to stdout, where TICKS is the
/// wall clock (<see cref="DateTime.UtcNow"/> ticks, 100 ns) taken when the line is formatted and N counts from 1.
/// It runs as a child process: as the environment's command, and under the direct pipe reader.
/// </summary>
internal static class Producer
{
    public static int Run(long rate, long count)
    {
        using var stdout = Console.OpenStandardOutput();
        var buffer = new byte[64 * 1024];
        var clock = Stopwatch.StartNew();
        long written = 0;
        while (written < count)
        {
            var due = Math.Min(count, (long)(clock.Elapsed.TotalSeconds * rate) + 1);
            if (due <= written)
            {
                Thread.Sleep(1);
                continue;
            }
            var position = 0;
            while (written < due && position < buffer.Length - 48)
            {
                Utf8Formatter.TryFormat(DateTime.UtcNow.Ticks, buffer.AsSpan(position), out var n);
                position += n;
                buffer[position++] = (byte)' ';
                Utf8Formatter.TryFormat(++written, buffer.AsSpan(position), out n);
                position += n;
                buffer[position++] = (byte)'\n';
            }
            stdout.Write(buffer, 0, position);
        }
        return 0;
    }
}
