using System.Buffers;
using System.Text;
using System.Text.Json;

namespace Switchboard.Server.Channels;

/// <summary>
/// One published message, serialized once per wire format (WebSocket JSON, SSE) however many subscribers receive it.
/// </summary>
public sealed class ChannelBroadcast(string channel, long offset, string epoch, ReadOnlyMemory<byte> data, string? excludeConnection)
{
    private byte[]? _json;
    private byte[]? _sse;

    public string Channel { get; } = channel;
    public long Offset { get; } = offset;
    /// <summary>The channel's epoch when the message was published (part of the SSE event id).</summary>
    public string Epoch { get; } = epoch;
    public ReadOnlyMemory<byte> Data { get; } = data;
    public string? ExcludeConnection { get; } = excludeConnection;

    /// <summary><c>{"type":"message","channel":…,"offset":…,"data":…}</c></summary>
    public ReadOnlyMemory<byte> Json => _json ??= Build();

    /// <summary>An SSE event: <c>id: OFFSET:EPOCH</c>, <c>event: message</c>, <c>data: JSON</c>.</summary>
    public ReadOnlyMemory<byte> Sse => _sse ??= BuildSse();

    private byte[] Build()
    {
        var buffer = new ArrayBufferWriter<byte>(Data.Length + Channel.Length + 64);
        using (var w = new Utf8JsonWriter(buffer))
        {
            w.WriteStartObject();
            w.WriteString("type"u8, "message"u8);
            w.WriteString("channel"u8, Channel);
            w.WriteNumber("offset"u8, Offset);
            w.WritePropertyName("data"u8);
            w.WriteRawValue(Data.Span, skipInputValidation: true); // validated and compacted when published
            w.WriteEndObject();
        }
        return buffer.WrittenSpan.ToArray();
    }

    private byte[] BuildSse()
    {
        var json = Json.Span;
        var head = Encoding.UTF8.GetBytes($"id: {Offset}:{Epoch}\nevent: message\ndata: ");
        var result = new byte[head.Length + json.Length + 2];
        head.CopyTo(result, 0);
        json.CopyTo(result.AsSpan(head.Length));
        result[^2] = (byte)'\n';
        result[^1] = (byte)'\n';
        return result;
    }

    /// <summary>Validates a JSON value and returns it compacted (no newlines, so it fits in one SSE data line).</summary>
    public static byte[] NormalizeData(JsonElement element) => JsonSerializer.SerializeToUtf8Bytes(element, Protocol.ProtocolJsonContext.Default.JsonElement);
}

/// <summary>A receiver of channel broadcasts: a WebSocket connection or an SSE stream.</summary>
public interface IChannelSubscriber
{
    /// <summary>The connection id (for <c>excludeConnection</c>).</summary>
    string Id { get; }

    /// <summary>Queues the broadcast without blocking. False when the subscriber is gone or overflowed (it closes itself).</summary>
    bool Deliver(ChannelBroadcast broadcast);

    /// <summary>Queues a recovered history message (already serialized for this subscriber's format).</summary>
    bool Deliver(ChannelBroadcast broadcast, bool recovered) => Deliver(broadcast);

    /// <summary>Queues the broadcast as part of a fan-out that starts idle senders together (<see cref="Connections.SenderStarts"/>).</summary>
    internal bool Deliver(ChannelBroadcast broadcast, Connections.SenderStarts starts) => Deliver(broadcast);
}
