using System.Buffers;
using System.Buffers.Binary;
using System.IO.Pipelines;
using System.Net;
using System.Net.Sockets;
using System.Net.WebSockets;
using System.Security.Cryptography;
using System.Text;
using System.Text.Json;
using Switchboard.Server.Connections;
using Switchboard.Server.Tests.Infrastructure;

namespace Switchboard.Server.Tests.Connections;

/// <summary>
/// Messages queued for a directly accepted connection are encoded into the transport by the gateway itself, several per
/// flush (SwitchboardOptions.BatchedWebSocketWrites). The frames must be exactly what RFC 6455 says, at every length
/// boundary, in order, interleaved correctly with the WebSocket's own control frames.
/// </summary>
public sealed class BatchedWritesTests
{
    [Theory]
    [InlineData(0)]
    [InlineData(125)]
    [InlineData(126)]
    [InlineData(65535)]
    [InlineData(65536)]
    [InlineData(300_000)]
    public async Task Frame_writer_output_is_read_back_by_a_websocket_client(int length)
    {
        var pipe = new Pipe();
        var payload = RandomNumberGenerator.GetBytes(length);
        WsFrameWriter.Write(pipe.Writer, OutboundFrame.Binary(payload));
        var text = Encoding.UTF8.GetBytes(new string('x', length % 1000));
        WsFrameWriter.Write(pipe.Writer, OutboundFrame.Text(text));
        await pipe.Writer.CompleteAsync();

        var unused = new Pipe();
        using var client = WebSocket.CreateFromStream(new DuplexPipeStream(new Duplex(pipe.Reader, unused.Writer)),
            new WebSocketCreationOptions { IsServer = false, KeepAliveInterval = TimeSpan.Zero });
        var (type, data) = await ReceiveMessageAsync(client);
        Assert.Equal(WebSocketMessageType.Binary, type);
        Assert.Equal(payload, data);
        (type, data) = await ReceiveMessageAsync(client);
        Assert.Equal(WebSocketMessageType.Text, type);
        Assert.Equal(text, data);
    }

    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public async Task A_burst_arrives_complete_and_in_order_with_a_pong_in_between(bool batched)
    {
        await using var gw = await TestGateway.StartAsync(o => o.BatchedWebSocketWrites = batched);
        using var tcp = new TcpClient();
        await tcp.ConnectAsync(IPAddress.Loopback, gw.BaseUri.Port);
        var stream = tcp.GetStream();
        var key = Convert.ToBase64String(RandomNumberGenerator.GetBytes(16));
        await stream.WriteAsync(Encoding.ASCII.GetBytes($"GET /api/v1/ws?token={gw.Token()} HTTP/1.1\r\nHost: {gw.BaseUri.Authority}\r\n" +
            $"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"));
        await ReadHeadAsync(stream);
        Assert.Equal("welcome", Json((await ReadFrameAsync(stream)).Payload).GetProperty("type").GetString());
        await stream.WriteAsync(Masked(0x1, Encoding.UTF8.GetBytes("""{"type":"subscribe","channel":"burst"}""")));
        Assert.Equal("subscribed", Json((await ReadFrameAsync(stream)).Payload).GetProperty("type").GetString());

        // Sizes around the 7-bit, 16-bit and 64-bit length encodings, published concurrently so they queue up.
        int[] sizes = [.. Enumerable.Range(0, 150), .. Enumerable.Range(65_440, 150), 200_000];
        var offsets = new Dictionary<long, int>();
        await Parallel.ForEachAsync(sizes.Select((size, i) => (size, i)), new ParallelOptions { MaxDegreeOfParallelism = 8 }, async (item, ct) =>
        {
            using var response = await gw.Api.PostAsync("api/v1/channels/burst/messages",
                new StringContent(JsonSerializer.Serialize(new { data = new string((char)('a' + item.i % 26), item.size) }), Encoding.UTF8, "application/json"), ct);
            response.EnsureSuccessStatusCode();
            var offset = JsonDocument.Parse(await response.Content.ReadAsStringAsync(ct)).RootElement.GetProperty("offset").GetInt64();
            lock (offsets)
                offsets[offset] = item.size;
        });
        // A ping from the client while the burst is being written: its pong must come out whole between data frames.
        await stream.WriteAsync(Masked(0x9, "are you there"u8.ToArray()));

        var pongs = 0;
        long expected = offsets.Keys.Min();
        while (expected <= offsets.Keys.Max() || pongs == 0)
        {
            var frame = await ReadFrameAsync(stream);
            if (frame.Opcode == 0xA)
            {
                Assert.Equal("are you there", Encoding.UTF8.GetString(frame.Payload));
                pongs++;
                continue;
            }
            Assert.Equal(0x1, frame.Opcode);
            var message = Json(frame.Payload);
            Assert.Equal("message", message.GetProperty("type").GetString());
            Assert.Equal(expected, message.GetProperty("offset").GetInt64());
            Assert.Equal(offsets[expected], message.GetProperty("data").GetString()!.Length);
            expected++;
        }
        Assert.Equal(1, pongs);
    }

    [Fact]
    public async Task No_batch_is_written_after_a_close_frame_the_websocket_wrote_itself()
    {
        // The WebSocket answers invalid input (bad UTF-8, a bad close code) with a close frame of its own, which the
        // connection's sender does not see: after it, the stream must refuse batches, so no data frame follows it.
        var wire = new Pipe();
        var stream = new DuplexPipeStream(new Duplex(new Pipe().Reader, wire.Writer));
        using var socket = WebSocket.CreateFromStream(stream, new WebSocketCreationOptions { IsServer = true, KeepAliveInterval = TimeSpan.Zero });

        var frame = OutboundFrame.Text("""{"type":"message"}"""u8.ToArray());
        await stream.WriteFramesAsync(frame, static (f, writer) => { WsFrameWriter.Write(writer, f); return 1; });
        await socket.CloseOutputAsync(WebSocketCloseStatus.InvalidPayloadData, "bad utf-8", CancellationToken.None);
        await Assert.ThrowsAsync<IOException>(async () =>
            await stream.WriteFramesAsync(frame, static (f, writer) => { WsFrameWriter.Write(writer, f); return 1; }));

        // On the wire: the data frame, then the close frame, and nothing after it.
        await wire.Writer.CompleteAsync();
        var bytes = (await wire.Reader.ReadAsync()).Buffer.ToArray();
        var first = 2 + frame.Payload.Length;
        Assert.Equal(0x81, bytes[0]);
        Assert.Equal(0x88, bytes[first]);
        Assert.Equal(first + 2 + bytes[first + 1], bytes.Length);
    }

    private static async Task<(WebSocketMessageType Type, byte[] Data)> ReceiveMessageAsync(WebSocket socket)
    {
        var buffer = new byte[1024 * 1024];
        var count = 0;
        ValueWebSocketReceiveResult result;
        do
        {
            result = await socket.ReceiveAsync(buffer.AsMemory(count), CancellationToken.None);
            count += result.Count;
        }
        while (!result.EndOfMessage);
        return (result.MessageType, buffer[..count]);
    }

    private static JsonElement Json(byte[] payload) => JsonDocument.Parse(payload).RootElement;

    private static async Task ReadHeadAsync(NetworkStream stream)
    {
        var head = new StringBuilder();
        var one = new byte[1];
        while (!head.ToString().EndsWith("\r\n\r\n", StringComparison.Ordinal))
        {
            Assert.Equal(1, await stream.ReadAsync(one));
            head.Append((char)one[0]);
        }
        Assert.StartsWith("HTTP/1.1 101 ", head.ToString(), StringComparison.Ordinal);
    }

    // One server frame: unmasked, final (the gateway never fragments), any opcode.
    private static async Task<(int Opcode, byte[] Payload)> ReadFrameAsync(NetworkStream stream)
    {
        using var timeout = new CancellationTokenSource(TimeSpan.FromSeconds(10));
        var header = new byte[2];
        await stream.ReadExactlyAsync(header, timeout.Token);
        Assert.Equal(0x80, header[0] & 0xF0); // FIN, no extension bits
        Assert.Equal(0, header[1] & 0x80);    // servers do not mask
        long length = header[1] & 0x7f;
        if (length == 126)
        {
            var ext = new byte[2];
            await stream.ReadExactlyAsync(ext, timeout.Token);
            length = BinaryPrimitives.ReadUInt16BigEndian(ext);
            Assert.True(length >= 126, "a 16-bit length must not encode what fits in 7 bits");
        }
        else if (length == 127)
        {
            var ext = new byte[8];
            await stream.ReadExactlyAsync(ext, timeout.Token);
            length = (long)BinaryPrimitives.ReadUInt64BigEndian(ext);
            Assert.True(length > ushort.MaxValue, "a 64-bit length must not encode what fits in 16 bits");
        }
        var payload = new byte[length];
        await stream.ReadExactlyAsync(payload, timeout.Token);
        return (header[0] & 0x0F, payload);
    }

    private static byte[] Masked(int opcode, byte[] payload)
    {
        Assert.True(payload.Length < 126);
        var mask = RandomNumberGenerator.GetBytes(4);
        var frame = new byte[2 + 4 + payload.Length];
        frame[0] = (byte)(0x80 | opcode);
        frame[1] = (byte)(0x80 | payload.Length);
        mask.CopyTo(frame, 2);
        for (var i = 0; i < payload.Length; i++)
            frame[6 + i] = (byte)(payload[i] ^ mask[i % 4]);
        return frame;
    }

    private sealed record Duplex(PipeReader Input, PipeWriter Output) : IDuplexPipe;
}
