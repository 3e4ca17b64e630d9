using System.Diagnostics;
using System.Net.WebSockets;

namespace Switchboard.Server.Connections;

/// <summary>
/// One serialized message on its way to a connection. The payload of a broadcast is serialized once and the same
/// memory is queued for every recipient.
/// </summary>
public readonly record struct OutboundFrame(ReadOnlyMemory<byte> Payload, WebSocketMessageType Type, long EnqueuedTimestamp)
{
    public static OutboundFrame Text(ReadOnlyMemory<byte> payload) => new(payload, WebSocketMessageType.Text, Stopwatch.GetTimestamp());

    public static OutboundFrame Binary(ReadOnlyMemory<byte> payload) => new(payload, WebSocketMessageType.Binary, Stopwatch.GetTimestamp());
}

/// <summary>Thrown by a message handler when the client broke the protocol; the connection is closed with 1008 and this message.</summary>
public sealed class ProtocolViolationException(string message) : Exception(message);
