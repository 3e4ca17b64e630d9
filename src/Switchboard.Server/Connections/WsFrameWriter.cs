using System.Buffers;
using System.Buffers.Binary;
using System.IO.Pipelines;
using System.Net.WebSockets;

namespace Switchboard.Server.Connections;

/// <summary>Encodes one complete, unmasked server-to-client WebSocket data frame (RFC 6455 section 5.2).</summary>
internal static class WsFrameWriter
{
    /// <summary>Writes <paramref name="frame"/> (header and payload) into <paramref name="writer"/>; returns the bytes written.</summary>
    public static int Write(PipeWriter writer, in OutboundFrame frame)
    {
        var payload = frame.Payload.Span;
        var opcode = frame.Type switch
        {
            WebSocketMessageType.Text => 0x1,
            WebSocketMessageType.Binary => 0x2,
            _ => throw new ArgumentException("only text and binary messages are queued", nameof(frame)),
        };
        var headerLength = payload.Length < 126 ? 2 : payload.Length <= ushort.MaxValue ? 4 : 10;
        var header = writer.GetSpan(headerLength);
        header[0] = (byte)(0x80 | opcode); // FIN, no extension bits
        switch (headerLength)
        {
            case 2:
                header[1] = (byte)payload.Length;
                break;
            case 4:
                header[1] = 126;
                BinaryPrimitives.WriteUInt16BigEndian(header[2..], (ushort)payload.Length);
                break;
            default:
                header[1] = 127;
                BinaryPrimitives.WriteUInt64BigEndian(header[2..], (ulong)payload.Length);
                break;
        }
        writer.Advance(headerLength);
        writer.Write(payload);
        return headerLength + payload.Length;
    }
}
