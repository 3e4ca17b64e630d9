using System.Buffers;
using System.Buffers.Text;
using System.Text;
using System.Text.Json;

namespace Switchboard.Server.Environments;

/// <summary>
/// Encodes live lines into their <c>log</c> JSON once, on the pipe reader's thread, so each subscriber only copies
/// bytes: <c>{"type":"log","seq":N,"timestamp":"…","stream":"stdout","message":"…"}</c>, byte for byte what
/// <see cref="Utf8JsonWriter"/> writes (the same timestamp format and the same escaping). The lines of one read go
/// into one buffer separated by commas, so consecutive lines form a ready-made JSON array body.
/// </summary>
internal static class LogJson
{
    // Printable ASCII that the default JSON encoder leaves as is (it escapes " \ < > & ' + ` and control/non-ASCII).
    private static readonly SearchValues<char> Plain = SearchValues.Create(
        " !#$%()*,-./0123456789:;=?@ABCDEFGHIJKLMNOPQRSTUVWXYZ[]^_abcdefghijklmnopqrstuvwxyz{|}~");

    private const int BufferBytes = 64 * 1024;

    private static readonly JsonWriterOptions WriterOptions = new() { SkipValidation = true };

    public static LogRecord[] Encode(long firstSeq, DateTimeOffset timestamp, byte stream, List<string> lines)
    {
        var records = new LogRecord[lines.Count];
        var size = 0;
        foreach (var line in lines)
            size += line.Length;
        var buffer = new ArrayBufferWriter<byte>(Math.Min(size + lines.Count * 112 + 64, BufferBytes + 1024));
        var group = 0;
        ReadOnlySpan<byte> prefix = "{\"type\":\"log\",\"seq\":"u8;
        var middle = Middle(timestamp, stream);
        var spans = new (int Start, int Length)[lines.Count];
        Utf8JsonWriter? escaper = null;
        for (var i = 0; i < lines.Count; i++)
        {
            var message = lines[i];
            if (buffer.WrittenCount >= BufferBytes)
            {
                // Buffers stay below the large object heap threshold: they are short-lived, and the ring holds slices of them.
                Complete(records, group, i, firstSeq, timestamp, stream, lines, buffer.WrittenMemory, spans);
                group = i;
                buffer = new ArrayBufferWriter<byte>(BufferBytes + 1024);
            }
            else if (i > group)
            {
                Put(buffer, ","u8);
            }
            var start = buffer.WrittenCount;
            Put(buffer, prefix);
            var span = buffer.GetSpan(20);
            Utf8Formatter.TryFormat(firstSeq + i, span, out var n);
            buffer.Advance(n);
            Put(buffer, middle);
            if (!message.AsSpan().ContainsAnyExcept(Plain))
            {
                // Plain ASCII: the quoted text as is.
                span = buffer.GetSpan(message.Length + 3);
                span[0] = (byte)'"';
                n = Encoding.ASCII.GetBytes(message, span[1..]);
                span[n + 1] = (byte)'"';
                span[n + 2] = (byte)'}';
                buffer.Advance(n + 3);
            }
            else
            {
                if (escaper is null)
                    escaper = new Utf8JsonWriter(buffer, WriterOptions);
                else
                    escaper.Reset(buffer);
                escaper.WriteStringValue(message);
                escaper.Flush();
                Put(buffer, "}"u8);
            }
            spans[i] = (start, buffer.WrittenCount - start);
        }
        escaper?.Dispose();
        Complete(records, group, records.Length, firstSeq, timestamp, stream, lines, buffer.WrittenMemory, spans);
        return records;
    }

    private static void Complete(LogRecord[] records, int from, int to, long firstSeq, DateTimeOffset timestamp, byte stream, List<string> lines,
        ReadOnlyMemory<byte> json, (int Start, int Length)[] spans)
    {
        for (var i = from; i < to; i++)
            records[i] = new LogRecord(firstSeq + i, timestamp, stream, lines[i]) { Json = json.Slice(spans[i].Start, spans[i].Length) };
    }

    /// <summary><c>,"timestamp":"…","stream":"stdout","message":</c> for one read.</summary>
    private static byte[] Middle(DateTimeOffset timestamp, byte stream)
    {
        var buffer = new ArrayBufferWriter<byte>(96);
        Put(buffer, ",\"timestamp\":"u8);
        using (var w = new Utf8JsonWriter(buffer, WriterOptions))
            w.WriteStringValue(timestamp);
        Put(buffer, stream == 2 ? ",\"stream\":\"stderr\",\"message\":"u8 : ",\"stream\":\"stdout\",\"message\":"u8);
        return buffer.WrittenSpan.ToArray();
    }

    private static void Put(ArrayBufferWriter<byte> buffer, ReadOnlySpan<byte> bytes)
    {
        bytes.CopyTo(buffer.GetSpan(bytes.Length));
        buffer.Advance(bytes.Length);
    }
}
