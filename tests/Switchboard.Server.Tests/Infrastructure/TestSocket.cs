using System.Net.WebSockets;
using System.Text;
using System.Text.Json;

namespace Switchboard.Server.Tests.Infrastructure;

/// <summary>A client WebSocket with helpers to send and receive JSON and observe the close code.</summary>
public sealed class TestSocket(ClientWebSocket socket) : IAsyncDisposable
{
    public ClientWebSocket Socket { get; } = socket;

    public string? ConnectionId { get; set; }

    /// <summary>Set once the server's close frame arrived.</summary>
    public WebSocketCloseStatus? CloseStatus => Socket.CloseStatus;

    public Task SendTextAsync(string text) =>
        Socket.SendAsync(Encoding.UTF8.GetBytes(text), WebSocketMessageType.Text, true, CancellationToken.None);

    public Task SendJsonAsync(object value) => SendTextAsync(JsonSerializer.Serialize(value));

    /// <summary>Receives one whole message; null when the server closed.</summary>
    public async Task<(WebSocketMessageType Type, byte[] Data)?> ReceiveAsync(TimeSpan? timeout = null)
    {
        using var cts = new CancellationTokenSource(timeout ?? TimeSpan.FromSeconds(10));
        var buffer = new byte[64 * 1024];
        using var ms = new MemoryStream();
        while (true)
        {
            var r = await Socket.ReceiveAsync(buffer, cts.Token);
            if (r.MessageType == WebSocketMessageType.Close)
                return null;
            ms.Write(buffer, 0, r.Count);
            if (r.EndOfMessage)
                return (r.MessageType, ms.ToArray());
        }
    }

    /// <summary>Receives the next JSON message, skipping server pings. Fails if the socket closes.</summary>
    public async Task<JsonElement> ReceiveJsonAsync(TimeSpan? timeout = null)
    {
        while (true)
        {
            var m = await ReceiveAsync(timeout) ?? throw new InvalidOperationException($"socket closed: {Socket.CloseStatus} {Socket.CloseStatusDescription}");
            var e = JsonDocument.Parse(m.Data).RootElement;
            if (e.TryGetProperty("type", out var t) && t.GetString() == "ping")
                continue;
            return e;
        }
    }

    /// <summary>Receives JSON messages until one has the given type.</summary>
    public async Task<JsonElement> ReceiveTypeAsync(string type, TimeSpan? timeout = null)
    {
        while (true)
        {
            var e = await ReceiveJsonAsync(timeout);
            if (e.GetProperty("type").GetString() == type)
                return e;
        }
    }

    /// <summary>Reads until the server closes; returns the close code. Messages before the close are discarded.</summary>
    public async Task<int> WaitForCloseAsync(TimeSpan? timeout = null)
    {
        using var cts = new CancellationTokenSource(timeout ?? TimeSpan.FromSeconds(10));
        var buffer = new byte[64 * 1024];
        try
        {
            while (true)
            {
                var r = await Socket.ReceiveAsync(buffer, cts.Token);
                if (r.MessageType == WebSocketMessageType.Close)
                    return (int)Socket.CloseStatus!.Value;
            }
        }
        catch (WebSocketException) when (Socket.CloseStatus is { } status)
        {
            return (int)status;
        }
        catch (WebSocketException)
        {
            return 1006;
        }
    }

    public async ValueTask DisposeAsync()
    {
        try
        {
            if (Socket.State == WebSocketState.Open)
            {
                using var cts = new CancellationTokenSource(TimeSpan.FromSeconds(2));
                await Socket.CloseAsync(WebSocketCloseStatus.NormalClosure, "bye", cts.Token);
            }
        }
        catch (Exception ex) when (ex is WebSocketException or OperationCanceledException)
        {
        }
        Socket.Dispose();
    }
}
