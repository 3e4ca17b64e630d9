using System.Buffers;
using System.Buffers.Binary;
using System.Text;

namespace Switchboard.Protocol.Tunnels;

/// <summary>
/// Frame types of the tunnel protocol. Every frame is one binary WebSocket message:
/// <c>[type:1][stream id:4, big endian][payload]</c>. Stream 0 is the connection itself. See docs/tunnels.md.
/// </summary>
public enum TunnelFrameType : byte
{
    /// <summary>Agent -> gateway, stream 0, first frame: <see cref="TunnelHello"/>.</summary>
    Hello = 0x01,

    /// <summary>Gateway -> agent, stream 0: <see cref="TunnelHelloAck"/>.</summary>
    HelloAck = 0x02,

    /// <summary>Either way, stream 0: <c>[code:2][message]</c>, sent before the connection is closed with the same code.</summary>
    Error = 0x03,

    /// <summary>Gateway -> agent: <see cref="TunnelRequestHead"/>. Opens the stream.</summary>
    RequestHead = 0x10,

    /// <summary>Gateway -> agent: raw request body bytes (counted against the stream window).</summary>
    RequestBody = 0x11,

    /// <summary>Gateway -> agent: the request body is complete.</summary>
    RequestEnd = 0x12,

    /// <summary>Agent -> gateway: <see cref="TunnelResponseHead"/>.</summary>
    ResponseHead = 0x20,

    /// <summary>Agent -> gateway: raw response body bytes (counted against the stream window).</summary>
    ResponseBody = 0x21,

    /// <summary>Agent -> gateway: the response is complete; payload is the trailers (header list, may be empty).</summary>
    ResponseEnd = 0x22,

    /// <summary>Either way: the stream is cancelled (<c>[reason]</c> string). No further frames for it.</summary>
    Abort = 0x30,

    /// <summary>Either way: <c>[increment:4]</c>. Stream 0 = connection window (gateway -> agent data only).</summary>
    WindowUpdate = 0x31,

    /// <summary>Either way, stream 0: <c>[opaque:8]</c>; answered with <see cref="Pong"/> carrying the same bytes.</summary>
    Ping = 0x40,

    Pong = 0x41,

    /// <summary>Either way on a WebSocket stream: <c>[flags:1][data]</c>; flags bit 0 = binary, bit 1 = end of message.</summary>
    WsMessage = 0x50,

    /// <summary>Either way on a WebSocket stream: <c>[code:2][reason]</c>.</summary>
    WsClose = 0x51,
}

/// <summary>Protocol constants shared by the gateway and the agent.</summary>
public static class TunnelProtocol
{
    /// <summary>Current protocol version, sent in <see cref="TunnelHello"/>. The gateway refuses versions it does not speak (close 1008).</summary>
    public const int Version = 1;

    /// <summary>Bytes before the payload: type (1) + stream id (4).</summary>
    public const int HeaderSize = 5;

    /// <summary>
    /// Largest payload of a request-body or WebSocket frame. 64 KB amortizes framing and stays under the large-object
    /// threshold, because the gateway queues each such frame as its own array until it is written.
    /// </summary>
    public const int MaxDataPayload = 64 * 1024;

    /// <summary>
    /// Largest payload of a response-body frame: the whole frame is exactly 256 KiB (one pool bucket), well under the
    /// gateway's 1 MiB message limit. The agent sends it from a pooled buffer and the gateway receives it into one, so
    /// no large object is allocated; a bulk download pays the per-frame costs (thread hops, window accounting) once per
    /// 256 KiB instead of once per 64 KiB, while small chunks still go out as they come.
    /// </summary>
    public const int MaxResponseDataPayload = 256 * 1024 - HeaderSize;

    /// <summary>Default initial per-stream window: 1 MiB keeps four full frames in flight, enough for loopback and LAN bandwidth-delay products.</summary>
    public const int DefaultStreamWindow = 1024 * 1024;

    /// <summary>Initial connection window for gateway -> agent body data.</summary>
    public const int DefaultConnectionWindow = 4 * 1024 * 1024;

    /// <summary>Header sent by a public client to ask for a buffered (Content-Length) response instead of streaming.</summary>
    public const string BufferHeader = "X-Switchboard-Buffer";

    /// <summary>
    /// Path prefix of the data path: <c>POST {DataPathPrefix}/{tunnel}/{stream}</c> carries one response body as the
    /// request body (docs/tunnels.md, "Data path").
    /// </summary>
    public const string DataPathPrefix = "/tunnel/data";

    /// <summary>Data path request header: the session's data key from the hello-ack.</summary>
    public const string DataKeyHeader = "Switchboard-Data-Key";

    /// <summary>Data path request header: the response head frame (<see cref="TunnelResponseHead.Encode"/>), base64.</summary>
    public const string DataHeadHeader = "Switchboard-Response-Head";

    /// <summary>Largest encoded response head the agent sends on the data path (larger heads go over the WebSocket).</summary>
    public const int MaxDataHeadBytes = 16 * 1024;

    /// <summary>Frame ping payload; the heartbeat frame the gateway sends.</summary>
    public static byte[] PingFrame { get; } = [(byte)TunnelFrameType.Ping, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];

    public static TunnelFrameType TypeOf(ReadOnlySpan<byte> frame) => (TunnelFrameType)frame[0];

    public static uint StreamOf(ReadOnlySpan<byte> frame) => BinaryPrimitives.ReadUInt32BigEndian(frame[1..5]);

    public static ReadOnlySpan<byte> PayloadOf(ReadOnlySpan<byte> frame) => frame[HeaderSize..];

    /// <summary>A frame with a raw payload.</summary>
    public static byte[] Frame(TunnelFrameType type, uint stream, ReadOnlySpan<byte> payload)
    {
        var buffer = new byte[HeaderSize + payload.Length];
        buffer[0] = (byte)type;
        BinaryPrimitives.WriteUInt32BigEndian(buffer.AsSpan(1), stream);
        payload.CopyTo(buffer.AsSpan(HeaderSize));
        return buffer;
    }

    public static byte[] WindowUpdate(uint stream, int increment)
    {
        Span<byte> p = stackalloc byte[4];
        BinaryPrimitives.WriteInt32BigEndian(p, increment);
        return Frame(TunnelFrameType.WindowUpdate, stream, p);
    }

    public static int ReadWindowUpdate(ReadOnlySpan<byte> payload) =>
        payload.Length == 4 ? BinaryPrimitives.ReadInt32BigEndian(payload) : throw new FormatException("window update needs 4 bytes");

    public static byte[] Abort(uint stream, string reason) => Build(TunnelFrameType.Abort, stream, w => w.String(reason));

    public static byte[] Error(int code, string message) => Build(TunnelFrameType.Error, 0, w =>
    {
        w.UInt16(code);
        w.String(message);
    });

    public static (int Code, string Message) ReadError(ReadOnlySpan<byte> payload)
    {
        var r = new TunnelReader(payload);
        return (r.UInt16(), r.String());
    }

    public static byte[] WsClose(uint stream, int code, string reason) => Build(TunnelFrameType.WsClose, stream, w =>
    {
        w.UInt16(code);
        w.String(reason);
    });

    public static byte[] WsMessage(uint stream, bool binary, bool endOfMessage, ReadOnlySpan<byte> data)
    {
        var buffer = new byte[HeaderSize + 1 + data.Length];
        buffer[0] = (byte)TunnelFrameType.WsMessage;
        BinaryPrimitives.WriteUInt32BigEndian(buffer.AsSpan(1), stream);
        buffer[HeaderSize] = (byte)((binary ? 1 : 0) | (endOfMessage ? 2 : 0));
        data.CopyTo(buffer.AsSpan(HeaderSize + 1));
        return buffer;
    }

    public static byte[] Trailers(uint stream, IReadOnlyList<KeyValuePair<string, string>> trailers) =>
        Build(TunnelFrameType.ResponseEnd, stream, w => w.Headers(trailers));

    public static IReadOnlyList<KeyValuePair<string, string>> ReadTrailers(ReadOnlySpan<byte> payload)
    {
        if (payload.IsEmpty)
            return [];
        var r = new TunnelReader(payload);
        return r.Headers();
    }

    /// <summary>Builds a frame whose payload is written by <paramref name="write"/>.</summary>
    public static byte[] Build(TunnelFrameType type, uint stream, Action<TunnelWriter> write)
    {
        var buffer = new ArrayBufferWriter<byte>(256);
        var w = new TunnelWriter(buffer);
        w.Byte((byte)type);
        w.UInt32(stream);
        write(w);
        return buffer.WrittenSpan.ToArray();
    }
}

/// <summary>Writes the compact binary encoding: varint-length-prefixed UTF-8 strings, big-endian integers.</summary>
public readonly struct TunnelWriter(IBufferWriter<byte> buffer)
{
    public void Byte(byte value)
    {
        buffer.GetSpan(1)[0] = value;
        buffer.Advance(1);
    }

    public void UInt16(int value)
    {
        BinaryPrimitives.WriteUInt16BigEndian(buffer.GetSpan(2), (ushort)value);
        buffer.Advance(2);
    }

    public void UInt32(uint value)
    {
        BinaryPrimitives.WriteUInt32BigEndian(buffer.GetSpan(4), value);
        buffer.Advance(4);
    }

    public void Int64(long value)
    {
        BinaryPrimitives.WriteInt64BigEndian(buffer.GetSpan(8), value);
        buffer.Advance(8);
    }

    public void VarUInt(uint value)
    {
        var span = buffer.GetSpan(5);
        var i = 0;
        while (value >= 0x80)
        {
            span[i++] = (byte)(value | 0x80);
            value >>= 7;
        }
        span[i++] = (byte)value;
        buffer.Advance(i);
    }

    public void String(string? value)
    {
        value ??= "";
        var count = Encoding.UTF8.GetByteCount(value);
        VarUInt((uint)count);
        Encoding.UTF8.GetBytes(value, buffer.GetSpan(count));
        buffer.Advance(count);
    }

    /// <summary>Header list: count, then name/value pairs. Repeated names stay separate entries (Set-Cookie).</summary>
    public void Headers(IReadOnlyList<KeyValuePair<string, string>> headers)
    {
        VarUInt((uint)headers.Count);
        foreach (var (name, value) in headers)
        {
            String(name);
            String(value);
        }
    }
}

/// <summary>Reads what <see cref="TunnelWriter"/> wrote; throws <see cref="FormatException"/> on truncated input.</summary>
public ref struct TunnelReader(ReadOnlySpan<byte> span)
{
    private ReadOnlySpan<byte> _span = span;

    public readonly bool IsEmpty => _span.IsEmpty;

    public byte Byte()
    {
        Need(1);
        var v = _span[0];
        _span = _span[1..];
        return v;
    }

    public int UInt16()
    {
        Need(2);
        var v = BinaryPrimitives.ReadUInt16BigEndian(_span);
        _span = _span[2..];
        return v;
    }

    public uint UInt32()
    {
        Need(4);
        var v = BinaryPrimitives.ReadUInt32BigEndian(_span);
        _span = _span[4..];
        return v;
    }

    public long Int64()
    {
        Need(8);
        var v = BinaryPrimitives.ReadInt64BigEndian(_span);
        _span = _span[8..];
        return v;
    }

    public uint VarUInt()
    {
        uint result = 0;
        for (var shift = 0; shift < 35; shift += 7)
        {
            var b = Byte();
            result |= (uint)(b & 0x7F) << shift;
            if (b < 0x80)
                return result;
        }
        throw new FormatException("varint too long");
    }

    public string String()
    {
        var length = VarUInt();
        if (length > _span.Length)
            throw new FormatException("truncated string");
        var s = Encoding.UTF8.GetString(_span[..(int)length]);
        _span = _span[(int)length..];
        return s;
    }

    public List<KeyValuePair<string, string>> Headers()
    {
        var count = VarUInt();
        if (count > 10_000)
            throw new FormatException("too many headers");
        var list = new List<KeyValuePair<string, string>>((int)count);
        for (var i = 0; i < count; i++)
            list.Add(new(String(), String()));
        return list;
    }

    private readonly void Need(int n)
    {
        if (_span.Length < n)
            throw new FormatException("truncated frame");
    }
}
