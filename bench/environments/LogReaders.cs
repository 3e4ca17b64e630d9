using System.Diagnostics;
using System.Net.WebSockets;
using System.Text;
using System.Text.Json;

namespace Switchboard.Bench.Environments;

/// <summary>How a log read ended.</summary>
internal sealed record ReadOutcome(bool Complete, string Ending, long StartTimestamp);

internal static class LogReaders
{
    private static readonly byte[] Pong = """{"action":"pong"}"""u8.ToArray();

    /// <summary>
    /// One client on <c>/api/v1/ws/environments/{id}/logs?tail=0</c>: takes the history batch's lastSeq as the base,
    /// calls <paramref name="start"/> (which starts the environment), then parses every frame (batch, log, skipped)
    /// until <paramref name="lines"/> lines arrived, the server closed, or <paramref name="timeout"/> passed.
    /// </summary>
    public static async Task<ReadOutcome> WebSocketAsync(Uri uri, string apiKey, LineCheck check, long lines, Func<Task> start, TimeSpan timeout,
        CancellationToken cancellationToken)
    {
        using var socket = new ClientWebSocket();
        socket.Options.SetRequestHeader("Authorization", "Bearer " + apiKey);
        await socket.ConnectAsync(uri, cancellationToken);
        using var limit = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
        var buffer = new byte[1 << 20];
        var history = true;
        long started = 0;
        try
        {
            while (check.Lines < lines)
            {
                var length = 0;
                ValueWebSocketReceiveResult r;
                do
                {
                    if (length == buffer.Length)
                        Array.Resize(ref buffer, buffer.Length * 2);
                    r = await socket.ReceiveAsync(buffer.AsMemory(length), limit.Token);
                    if (r.MessageType == WebSocketMessageType.Close)
                        return new ReadOutcome(false, $"closed by the gateway: {(int?)socket.CloseStatus} {socket.CloseStatusDescription}", started);
                    length += r.Count;
                }
                while (!r.EndOfMessage);
                var now = DateTime.UtcNow.Ticks;
                var stamp = Stopwatch.GetTimestamp();
                var kind = Parse(buffer.AsSpan(0, length), check, now, stamp, out var lastSeq);
                if (kind == "batch" && history)
                {
                    history = false;
                    check.BaseSeq = lastSeq;
                    started = Stopwatch.GetTimestamp();
                    await start();
                    limit.CancelAfter(timeout);
                }
                else if (kind == "ping")
                {
                    await socket.SendAsync(Pong, WebSocketMessageType.Text, true, cancellationToken);
                }
            }
            await socket.CloseAsync(WebSocketCloseStatus.NormalClosure, "done", CancellationToken.None);
            return new ReadOutcome(true, "all lines", started);
        }
        catch (OperationCanceledException) when (!cancellationToken.IsCancellationRequested)
        {
            return new ReadOutcome(false, $"timeout after {timeout.TotalSeconds:0} s", started);
        }
        catch (WebSocketException ex)
        {
            return new ReadOutcome(false, "socket error: " + ex.Message, started);
        }
    }

    /// <summary>Parses one frame; lines go to <paramref name="check"/>. Returns the frame's type.</summary>
    private static string? Parse(ReadOnlySpan<byte> frame, LineCheck check, long now, long stamp, out long lastSeq)
    {
        var reader = new Utf8JsonReader(frame);
        reader.Read();
        string? type = null;
        lastSeq = 0;
        long seq = 0;
        long count = 0;
        ReadOnlySpan<byte> message = default;
        while (reader.Read() && reader.TokenType == JsonTokenType.PropertyName)
        {
            if (reader.ValueTextEquals("type"u8))
            {
                reader.Read();
                type = reader.ValueTextEquals("batch"u8) ? "batch" : reader.ValueTextEquals("log"u8) ? "log" : reader.GetString();
            }
            else if (reader.ValueTextEquals("logs"u8))
            {
                reader.Read(); // [
                while (reader.Read() && reader.TokenType == JsonTokenType.StartObject)
                {
                    long s = 0;
                    ReadOnlySpan<byte> m = default;
                    while (reader.Read() && reader.TokenType == JsonTokenType.PropertyName)
                    {
                        if (reader.ValueTextEquals("seq"u8))
                        {
                            reader.Read();
                            s = reader.GetInt64();
                        }
                        else if (reader.ValueTextEquals("message"u8))
                        {
                            reader.Read();
                            m = reader.ValueIsEscaped ? Unescape(ref reader) : reader.ValueSpan;
                        }
                        else
                        {
                            reader.Read();
                        }
                    }
                    check.OnLine(s, m, now, stamp);
                }
            }
            else if (reader.ValueTextEquals("seq"u8))
            {
                reader.Read();
                seq = reader.GetInt64();
            }
            else if (reader.ValueTextEquals("lastSeq"u8))
            {
                reader.Read();
                lastSeq = reader.GetInt64();
            }
            else if (reader.ValueTextEquals("count"u8))
            {
                reader.Read();
                count = reader.GetInt64();
            }
            else if (reader.ValueTextEquals("message"u8))
            {
                reader.Read();
                message = reader.ValueIsEscaped ? Unescape(ref reader) : reader.ValueSpan;
            }
            else
            {
                reader.Read();
                reader.Skip();
            }
        }
        if (type == "log")
            check.OnLine(seq, message, now, stamp);
        else if (type == "skipped")
            check.Skipped += count;
        return type;
    }

    private static byte[] Unescape(ref Utf8JsonReader reader)
    {
        var scratch = new byte[reader.ValueSpan.Length];
        return scratch[..reader.CopyString(scratch)];
    }

    /// <summary>
    /// The ceiling: the same producer started by this process, its stdout read directly from the pipe (64 KB reads),
    /// every line checked the same way.
    /// </summary>
    public static ReadOutcome Pipe(string file, IEnumerable<string> args, LineCheck check, long lines)
    {
        var psi = new ProcessStartInfo(file) { RedirectStandardOutput = true, UseShellExecute = false };
        foreach (var a in args)
            psi.ArgumentList.Add(a);
        var started = Stopwatch.GetTimestamp();
        using var process = Process.Start(psi) ?? throw new InvalidOperationException("cannot start " + file);
        var stream = process.StandardOutput.BaseStream;
        var buffer = new byte[64 * 1024];
        var carry = 0;
        long seq = 0;
        int n;
        while ((n = stream.Read(buffer, carry, buffer.Length - carry)) > 0)
        {
            var now = DateTime.UtcNow.Ticks;
            var stamp = Stopwatch.GetTimestamp();
            var span = buffer.AsSpan(0, carry + n);
            int i;
            while ((i = span.IndexOf((byte)'\n')) >= 0)
            {
                check.OnLine(++seq, span[..i], now, stamp);
                span = span[(i + 1)..];
            }
            span.CopyTo(buffer);
            carry = span.Length;
        }
        process.WaitForExit();
        return new ReadOutcome(check.Lines >= lines, check.Lines >= lines ? "all lines" : $"pipe ended after {check.Lines} lines", started);
    }

    public static string Text(ReadOnlySpan<byte> utf8) => Encoding.UTF8.GetString(utf8);
}
