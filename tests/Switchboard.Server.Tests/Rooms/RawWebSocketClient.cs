using System.Net.Sockets;
using System.Security.Cryptography;
using System.Text;

namespace Switchboard.Server.Tests.Rooms;

/// <summary>
/// A minimal WebSocket client on a raw socket with a small receive buffer, for a peer that stops reading: the
/// server's writes back up after a few kilobytes instead of filling an auto-tuned multi-megabyte buffer.
/// </summary>
internal sealed class RawWebSocketClient : IDisposable
{
    private readonly Socket _socket;
    private readonly NetworkStream _stream;

    private RawWebSocketClient(Socket socket)
    {
        _socket = socket;
        _stream = new NetworkStream(socket, ownsSocket: false);
    }

    public static async Task<RawWebSocketClient> ConnectAsync(Uri baseUri, string path, int receiveBufferBytes)
    {
        var socket = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp) { ReceiveBufferSize = receiveBufferBytes, NoDelay = true };
        await socket.ConnectAsync(baseUri.Host, baseUri.Port);
        var client = new RawWebSocketClient(socket);
        var key = Convert.ToBase64String(RandomNumberGenerator.GetBytes(16));
        var request = $"GET /{path} HTTP/1.1\r\nHost: {baseUri.Authority}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n";
        await client._stream.WriteAsync(Encoding.ASCII.GetBytes(request));
        var head = new StringBuilder();
        var one = new byte[1];
        while (!head.ToString().EndsWith("\r\n\r\n", StringComparison.Ordinal))
        {
            if (await client._stream.ReadAsync(one) == 0)
                throw new IOException("connection closed during the handshake");
            head.Append((char)one[0]);
        }
        Assert.StartsWith("HTTP/1.1 101", head.ToString(), StringComparison.Ordinal);
        return client;
    }

    /// <summary>Sends one masked text frame.</summary>
    public async Task SendTextAsync(string text)
    {
        var payload = Encoding.UTF8.GetBytes(text);
        var frame = new List<byte> { 0x81 };
        if (payload.Length < 126)
        {
            frame.Add((byte)(0x80 | payload.Length));
        }
        else
        {
            frame.Add(0x80 | 126);
            frame.Add((byte)(payload.Length >> 8));
            frame.Add((byte)payload.Length);
        }
        var mask = RandomNumberGenerator.GetBytes(4);
        frame.AddRange(mask);
        for (var i = 0; i < payload.Length; i++)
            frame.Add((byte)(payload[i] ^ mask[i % 4]));
        await _stream.WriteAsync(frame.ToArray());
    }

    /// <summary>Reads one unfragmented text frame from the server.</summary>
    public async Task<string> ReceiveTextAsync()
    {
        var header = await ReadExactlyAsync(2);
        long length = header[1] & 0x7F;
        if (length == 126)
        {
            var ext = await ReadExactlyAsync(2);
            length = (ext[0] << 8) | ext[1];
        }
        else if (length == 127)
        {
            var ext = await ReadExactlyAsync(8);
            length = 0;
            foreach (var b in ext)
                length = (length << 8) | b;
        }
        Assert.Equal(0x81, header[0]);
        return Encoding.UTF8.GetString(await ReadExactlyAsync((int)length));
    }

    private async Task<byte[]> ReadExactlyAsync(int count)
    {
        var buffer = new byte[count];
        await _stream.ReadExactlyAsync(buffer);
        return buffer;
    }

    public void Dispose()
    {
        _stream.Dispose();
        _socket.Dispose();
    }
}
