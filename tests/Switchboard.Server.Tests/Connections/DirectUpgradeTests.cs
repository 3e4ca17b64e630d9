using System.Buffers.Binary;
using System.Net;
using System.Net.Sockets;
using System.Security.Cryptography;
using System.Text;
using System.Text.Json;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Server.Kestrel.Core;
using Microsoft.Extensions.DependencyInjection;
using Switchboard.Server.Tests.Infrastructure;

namespace Switchboard.Server.Tests.Connections;

/// <summary>
/// WebSocket upgrades accepted on the connection (SwitchboardOptions.DirectWebSocketUpgrade) against the HTTP
/// pipeline: the same behaviour either way, and everything the direct path does not take reaches the pipeline intact.
/// Raw TCP where the bytes on the wire matter.
/// </summary>
public sealed class DirectUpgradeTests
{
    [Theory]
    [InlineData(true, 0)]
    [InlineData(false, 1)]
    public async Task Channel_upgrade_takes_the_direct_path_only_when_enabled(bool direct, int pipelineRequests)
    {
        var seen = 0;
        await using var gw = await TestGateway.StartAsync(o => o.DirectWebSocketUpgrade = direct, pipeline: app => app.Use((context, next) =>
        {
            if (context.Request.Path == "/api/v1/ws")
                Interlocked.Increment(ref seen);
            return next(context);
        }));
        await using var socket = await gw.ConnectChannelsAsync();
        await socket.SendJsonAsync(new { type = "subscribe", channel = "list:1" });
        var subscribed = await socket.ReceiveTypeAsync("subscribed");
        Assert.Equal(0, subscribed.GetProperty("offset").GetInt64());
        var publish = await gw.Api.PostAsync("api/v1/channels/list:1/messages", JsonContent("""{"data":{"n":1}}"""));
        Assert.Equal(HttpStatusCode.OK, publish.StatusCode);
        var message = await socket.ReceiveTypeAsync("message");
        Assert.Equal(1, message.GetProperty("data").GetProperty("n").GetInt32());
        Assert.Equal(pipelineRequests, Volatile.Read(ref seen));
    }

    [Fact]
    public async Task Token_from_authorization_header_or_cookie_is_accepted_and_a_bad_one_gets_4401()
    {
        await using var gw = await TestGateway.StartAsync();
        await using (var header = await gw.ConnectAsync("api/v1/ws", o => o.SetRequestHeader("Authorization", "Bearer " + gw.Token("bob"))))
            Assert.Equal("welcome", (await header.ReceiveJsonAsync()).GetProperty("type").GetString());

        await using (var cookie = await gw.ConnectAsync("api/v1/ws", o =>
        {
            o.Cookies = new CookieContainer();
            o.Cookies.Add(gw.BaseUri, new Cookie("switchboard_token", gw.Token("carol")));
        }))
            Assert.Equal("welcome", (await cookie.ReceiveJsonAsync()).GetProperty("type").GetString());

        await using var bad = await gw.ConnectAsync("api/v1/ws?token=not-a-jwt");
        Assert.Equal(4401, await bad.WaitForCloseAsync());
        await using var none = await gw.ConnectAsync("api/v1/ws");
        Assert.Equal(4401, await none.WaitForCloseAsync());
    }

    [Fact]
    public async Task Frames_sent_with_the_head_are_read_and_the_accept_key_is_rfc6455()
    {
        await using var gw = await TestGateway.StartAsync();
        using var tcp = await RawAsync(gw);
        var key = Convert.ToBase64String(RandomNumberGenerator.GetBytes(16));
        var head = $"GET /api/v1/ws?token={gw.Token()} HTTP/1.1\r\nHost: {gw.BaseUri.Authority}\r\nUpgrade: websocket\r\n" +
                   $"Connection: keep-alive, Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n";
        // Head and first frame in one write: the direct path must leave the frame for the WebSocket.
        var bytes = Encoding.ASCII.GetBytes(head).Concat(MaskedText("""{"type":"subscribe","channel":"list:7"}""")).ToArray();
        await tcp.GetStream().WriteAsync(bytes);

        var response = await ReadHeadAsync(tcp);
        Assert.StartsWith("HTTP/1.1 101 ", response, StringComparison.Ordinal);
        var expected = Convert.ToBase64String(SHA1.HashData(Encoding.ASCII.GetBytes(key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11")));
        Assert.Contains("Sec-WebSocket-Accept: " + expected + "\r\n", response, StringComparison.Ordinal);
        Assert.Equal("welcome", (await ReadTextFrameAsync(tcp)).GetProperty("type").GetString());
        var subscribed = await ReadTextFrameAsync(tcp);
        Assert.Equal("subscribed", subscribed.GetProperty("type").GetString());
        Assert.Equal("list:7", subscribed.GetProperty("channel").GetString());
    }

    [Fact]
    public async Task Requests_the_direct_path_does_not_take_reach_the_pipeline_intact()
    {
        await using var gw = await TestGateway.StartAsync();
        var host = gw.BaseUri.Authority;

        // A bad key (not 16 bytes): the endpoint's own 400.
        using (var tcp = await RawAsync(gw))
        {
            await SendAsync(tcp, $"GET /api/v1/ws HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: c2hvcnQ=\r\nSec-WebSocket-Version: 13\r\n\r\n");
            var response = await ReadHeadAsync(tcp);
            Assert.StartsWith("HTTP/1.1 400 ", response, StringComparison.Ordinal);
        }

        // A tunnel's host: the tunnel router answers (no agent), not the channels endpoint.
        using (var tcp = await RawAsync(gw))
        {
            var key = Convert.ToBase64String(RandomNumberGenerator.GetBytes(16));
            await SendAsync(tcp, $"GET /api/v1/ws HTTP/1.1\r\nHost: demo.localhost:{gw.BaseUri.Port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n");
            Assert.StartsWith("HTTP/1.1 404 ", await ReadHeadAsync(tcp), StringComparison.Ordinal);
        }

        // A plain request first, then an upgrade on the same keep-alive connection: both through the pipeline.
        using (var tcp = await RawAsync(gw))
        {
            await SendAsync(tcp, $"GET /healthz HTTP/1.1\r\nHost: {host}\r\n\r\n");
            var health = await ReadHeadAsync(tcp);
            Assert.StartsWith("HTTP/1.1 200 ", health, StringComparison.Ordinal);
            var length = int.Parse(health.Split("\r\n").First(l => l.StartsWith("Content-Length:", StringComparison.OrdinalIgnoreCase))[15..].Trim(), System.Globalization.CultureInfo.InvariantCulture);
            await ReadExactlyAsync(tcp, length);
            var key = Convert.ToBase64String(RandomNumberGenerator.GetBytes(16));
            await SendAsync(tcp, $"GET /api/v1/ws?token={gw.Token()} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n");
            Assert.StartsWith("HTTP/1.1 101 ", await ReadHeadAsync(tcp), StringComparison.Ordinal);
            Assert.Equal("welcome", (await ReadTextFrameAsync(tcp)).GetProperty("type").GetString());
        }

        // A head split over several writes is still matched.
        using (var tcp = await RawAsync(gw))
        {
            var key = Convert.ToBase64String(RandomNumberGenerator.GetBytes(16));
            var head = $"GET /api/v1/ws?token={gw.Token()} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n";
            foreach (var part in head.Chunk(17))
            {
                await SendAsync(tcp, new string(part));
                await Task.Delay(5);
            }
            Assert.StartsWith("HTTP/1.1 101 ", await ReadHeadAsync(tcp), StringComparison.Ordinal);
            Assert.Equal("welcome", (await ReadTextFrameAsync(tcp)).GetProperty("type").GetString());
        }
    }

    [Fact]
    public async Task A_head_read_in_pieces_and_then_refused_gets_the_pipelines_answer()
    {
        await using var gw = await TestGateway.StartAsync(o => o.AllowedOrigins = ["https://app.example.com"]);
        var key = Convert.ToBase64String(RandomNumberGenerator.GetBytes(16));

        // Split over writes, then refused (origin): the bytes read while waiting are handed to Kestrel intact.
        using (var tcp = await RawAsync(gw))
        {
            var head = $"GET /api/v1/ws?token={gw.Token()} HTTP/1.1\r\nHost: {gw.BaseUri.Authority}\r\nOrigin: https://evil.example.net\r\n" +
                       $"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n";
            foreach (var part in head.Chunk(60))
            {
                await SendAsync(tcp, new string(part));
                await Task.Delay(100); // each piece read on its own
            }
            Assert.StartsWith("HTTP/1.1 403 ", await ReadHeadAsync(tcp), StringComparison.Ordinal);
        }

        // Bare LF line ends never complete a CRLF head: handed to Kestrel at once, which answers (no wait for the timeout).
        using (var tcp = await RawAsync(gw))
        {
            await SendAsync(tcp, $"GET /api/v1/ws HTTP/1.1\nHost: {gw.BaseUri.Authority}\nUpgrade: websocket\nConnection: Upgrade\n" +
                                 $"Sec-WebSocket-Key: {key}\nSec-WebSocket-Version: 13\n\n");
            var answer = await ReadHeadAsync(tcp, "\n\n");
            Assert.StartsWith("HTTP/1.1 ", answer, StringComparison.Ordinal);
        }

        // The same cookie twice: the direct path takes the value the pipeline would (ASP.NET Core's cookie parser).
        var carol = gw.Token("carol");
        await using var cookie = await gw.ConnectAsync("api/v1/ws", o => o.SetRequestHeader("Cookie", "switchboard_token=not-a-jwt; switchboard_token=" + carol));
        Assert.Equal("welcome", (await cookie.ReceiveJsonAsync()).GetProperty("type").GetString());
    }

    [Fact]
    public async Task An_incomplete_head_is_dropped_after_the_request_headers_timeout()
    {
        await using var gw = await TestGateway.StartAsync(services: s => s.Configure<KestrelServerOptions>(k => k.Limits.RequestHeadersTimeout = TimeSpan.FromSeconds(1)));
        using var tcp = await RawAsync(gw);
        await SendAsync(tcp, $"GET /api/v1/ws HTTP/1.1\r\nHost: {gw.BaseUri.Authority}\r\n");
        var started = DateTime.UtcNow;
        using var timeout = new CancellationTokenSource(TimeSpan.FromSeconds(10));
        var buffer = new byte[64];
        int read;
        try
        {
            read = await tcp.GetStream().ReadAsync(buffer, timeout.Token);
        }
        catch (IOException)
        {
            read = 0; // reset instead of FIN: closed either way
        }
        Assert.Equal(0, read);
        Assert.InRange(DateTime.UtcNow - started, TimeSpan.FromSeconds(0.5), TimeSpan.FromSeconds(8));
    }

    [Fact]
    public async Task Room_clients_connect_through_the_direct_path()
    {
        await using var gw = await TestGateway.StartAsync();
        var created = await gw.Api.PostAsync("v1/api/rooms", JsonContent("{}"));
        Assert.Equal(HttpStatusCode.Created, created.StatusCode);
        var room = JsonDocument.Parse(await created.Content.ReadAsStringAsync()).RootElement;
        await using var socket = await gw.ConnectAsync("v1/websocket");
        await socket.SendJsonAsync(new { type = "connect", room = room.GetProperty("id").GetString(), secret = room.GetProperty("secret").GetString() });
        var connected = await socket.ReceiveTypeAsync("connected");
        Assert.True(connected.GetProperty("host").GetBoolean());
    }

    private static StringContent JsonContent(string json) => new(json, Encoding.UTF8, "application/json");

    private static async Task<TcpClient> RawAsync(TestGateway gw)
    {
        var tcp = new TcpClient();
        await tcp.ConnectAsync(IPAddress.Loopback, gw.BaseUri.Port);
        tcp.ReceiveTimeout = 10_000;
        return tcp;
    }

    private static Task SendAsync(TcpClient tcp, string text) => tcp.GetStream().WriteAsync(Encoding.ASCII.GetBytes(text)).AsTask();

    private static async Task<string> ReadHeadAsync(TcpClient tcp, string end = "\r\n\r\n")
    {
        var head = new StringBuilder();
        var one = new byte[1];
        using var timeout = new CancellationTokenSource(TimeSpan.FromSeconds(5));
        while (!head.ToString().EndsWith(end, StringComparison.Ordinal) && !head.ToString().EndsWith("\r\n\r\n", StringComparison.Ordinal))
        {
            if (await tcp.GetStream().ReadAsync(one, timeout.Token) == 0)
                throw new IOException("connection closed in the response head: " + head);
            head.Append((char)one[0]);
        }
        return head.ToString();
    }

    private static async Task<byte[]> ReadExactlyAsync(TcpClient tcp, int count)
    {
        var data = new byte[count];
        using var timeout = new CancellationTokenSource(TimeSpan.FromSeconds(10));
        await tcp.GetStream().ReadExactlyAsync(data, timeout.Token);
        return data;
    }

    // One unfragmented, unmasked server text frame.
    private static async Task<JsonElement> ReadTextFrameAsync(TcpClient tcp)
    {
        var header = await ReadExactlyAsync(tcp, 2);
        Assert.Equal(0x81, header[0]);
        long length = header[1] & 0x7f;
        if (length == 126)
            length = BinaryPrimitives.ReadUInt16BigEndian(await ReadExactlyAsync(tcp, 2));
        else if (length == 127)
            length = (long)BinaryPrimitives.ReadUInt64BigEndian(await ReadExactlyAsync(tcp, 8));
        return JsonDocument.Parse(await ReadExactlyAsync(tcp, (int)length)).RootElement;
    }

    private static byte[] MaskedText(string text)
    {
        var payload = Encoding.UTF8.GetBytes(text);
        Assert.True(payload.Length < 126);
        var mask = RandomNumberGenerator.GetBytes(4);
        var frame = new byte[2 + 4 + payload.Length];
        frame[0] = 0x81;
        frame[1] = (byte)(0x80 | payload.Length);
        mask.CopyTo(frame, 2);
        for (var i = 0; i < payload.Length; i++)
            frame[6 + i] = (byte)(payload[i] ^ mask[i % 4]);
        return frame;
    }
}
