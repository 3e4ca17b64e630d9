using System.Collections.Concurrent;
using System.Net.WebSockets;
using System.Threading.Channels;

// The ceiling on this runtime: the least a WebSocket broadcast server on Kestrel must do. Default Kestrel and GC
// settings, one bounded queue and one writer loop per socket (a WebSocket allows one send at a time), zero-byte reads
// while idle, and each broadcast serialized once and queued for every socket. No auth, no store, no metrics.
//
//   WS   /ws                  receives every broadcast; a text message with "subscribe" is answered with
//                             {"type":"subscribed"} (so an idle client has exchanged one message each way, as
//                             with the gateway), one with "ping" with {"type":"pong"}
//   POST /publish             body = JSON value; broadcasts {"type":"message","data":<body>} to every socket
//   GET  /stats               connected sockets
var builder = WebApplication.CreateSlimBuilder(args);
builder.Logging.ClearProviders();
var app = builder.Build();
app.UseWebSockets(new WebSocketOptions { KeepAliveInterval = TimeSpan.Zero });

var sockets = new ConcurrentDictionary<long, Subscriber>();
long nextId = 0;

app.Map("/ws", async context =>
{
    if (!context.WebSockets.IsWebSocketRequest)
    {
        context.Response.StatusCode = 400;
        return;
    }
    using var socket = await context.WebSockets.AcceptWebSocketAsync();
    var subscriber = new Subscriber(socket);
    var id = Interlocked.Increment(ref nextId);
    sockets[id] = subscriber;
    try
    {
        await subscriber.RunAsync(context.RequestAborted);
    }
    finally
    {
        sockets.TryRemove(id, out _);
    }
});

app.MapPost("/publish", async context =>
{
    using var body = new MemoryStream();
    await context.Request.Body.CopyToAsync(body, context.RequestAborted);
    var frame = Subscriber.Frame(body.GetBuffer().AsSpan(0, (int)body.Length));
    var delivered = 0;
    foreach (var s in sockets.Values)
    {
        if (s.TrySend(frame))
            delivered++;
    }
    context.Response.ContentType = "application/json";
    await context.Response.WriteAsync("{\"delivered\":" + delivered + "}", context.RequestAborted);
});

app.MapGet("/stats", () => Results.Json(new Stats(sockets.Count), StatsContext.Default.Stats));

app.Run();

internal sealed record Stats(int Connections);

[System.Text.Json.Serialization.JsonSerializable(typeof(Stats))]
internal sealed partial class StatsContext : System.Text.Json.Serialization.JsonSerializerContext;

internal sealed class Subscriber(WebSocket socket)
{
    private static readonly byte[] Pong = "{\"type\":\"pong\"}"u8.ToArray();
    private static readonly byte[] Subscribed = "{\"type\":\"subscribed\"}"u8.ToArray();
    private static readonly byte[] Prefix = "{\"type\":\"message\",\"data\":"u8.ToArray();

    // Same bound as the gateway's default outbound queue; a full queue drops the socket.
    private readonly Channel<ReadOnlyMemory<byte>> _queue = Channel.CreateBounded<ReadOnlyMemory<byte>>(
        new BoundedChannelOptions(4096) { SingleReader = true, SingleWriter = false });

    public static byte[] Frame(ReadOnlySpan<byte> data)
    {
        var frame = new byte[Prefix.Length + data.Length + 1];
        Prefix.CopyTo(frame, 0);
        data.CopyTo(frame.AsSpan(Prefix.Length));
        frame[^1] = (byte)'}';
        return frame;
    }

    public bool TrySend(ReadOnlyMemory<byte> frame)
    {
        if (_queue.Writer.TryWrite(frame))
            return true;
        socket.Abort();
        return false;
    }

    public async Task RunAsync(CancellationToken cancellationToken)
    {
        var writer = WriteLoopAsync();
        try
        {
            var buffer = new byte[256];
            while (true)
            {
                // Zero-byte read: no receive buffer is pinned while the socket is idle.
                var peek = await socket.ReceiveAsync(Memory<byte>.Empty, cancellationToken);
                if (peek.MessageType == WebSocketMessageType.Close)
                    break;
                var result = await socket.ReceiveAsync(buffer.AsMemory(), cancellationToken);
                if (result.MessageType == WebSocketMessageType.Close)
                    break;
                var text = buffer.AsSpan(0, result.Count);
                if (text.IndexOf("\"subscribe\""u8) >= 0)
                    TrySend(Subscribed);
                else if (text.IndexOf("\"ping\""u8) >= 0)
                    TrySend(Pong);
            }
            if (socket.State == WebSocketState.CloseReceived)
                _queue.Writer.TryComplete();
        }
        catch (Exception ex) when (ex is WebSocketException or OperationCanceledException or IOException)
        {
        }
        finally
        {
            _queue.Writer.TryComplete();
            await writer;
        }
    }

    private async Task WriteLoopAsync()
    {
        var reader = _queue.Reader;
        try
        {
            while (await reader.WaitToReadAsync())
            {
                while (reader.TryRead(out var frame))
                    await socket.SendAsync(frame, WebSocketMessageType.Text, endOfMessage: true, CancellationToken.None);
            }
            if (socket.State is WebSocketState.Open or WebSocketState.CloseReceived)
                await socket.CloseOutputAsync(WebSocketCloseStatus.NormalClosure, "", CancellationToken.None);
        }
        catch (Exception ex) when (ex is WebSocketException or OperationCanceledException or IOException or ObjectDisposedException)
        {
            socket.Abort();
        }
    }
}
