using System.Buffers;
using System.Net.WebSockets;
using System.Text.Json;
using System.Threading.Channels;
using Switchboard.Protocol;
using Switchboard.Protocol.Rooms;

namespace Switchboard.Client.Rooms;

/// <summary>Options of a <see cref="RoomClient"/>.</summary>
public sealed class RoomClientOptions
{
    /// <summary>JWT to present (<c>?token=</c>); optional, the room secret is the credential.</summary>
    public string? Token { get; set; }

    /// <summary>Reconnect (with <c>reconnect</c>, keeping the client id) after a close that says to retry. Default true.</summary>
    public bool AutoReconnect { get; set; } = true;

    /// <summary>Reconnect attempts before giving up. Default 5.</summary>
    public int MaxReconnectAttempts { get; set; } = 5;

    /// <summary>First backoff delay; doubled per attempt up to 10 s. Default 250 ms.</summary>
    public TimeSpan InitialBackoff { get; set; } = TimeSpan.FromMilliseconds(250);

    /// <summary>Server messages buffered for <see cref="RoomClient.Messages"/>; when full the client stops reading (and the server may close it as slow). Default 1024.</summary>
    public int MessageBuffer { get; set; } = 1024;

    /// <summary>Largest message accepted from the server. Default 4 MB.</summary>
    public int MaxMessageBytes { get; set; } = 4 * 1024 * 1024;
}

/// <summary>Thrown when the server refused or ended the room session with a close code that must not be retried.</summary>
public sealed class RoomClosedException(int closeCode, string? reason)
    : Exception($"room connection closed with {closeCode}: {reason}")
{
    public int CloseCode { get; } = closeCode;
    public string? Reason { get; } = reason;
}

/// <summary>
/// A member of a Switchboard room over <c>/v1/websocket</c>: joins, relays, answers the heartbeat, and reconnects
/// with its client id and secret after a retryable close (see <see cref="CloseCodes.ShouldReconnect"/>).
/// Server messages other than pings (<c>relay</c>, <c>client_joined</c>, <c>client_left</c>, <c>host_assigned</c>,
/// <c>room_closed</c>, <c>error</c>, and <c>connected</c> after a reconnect) are read from <see cref="Messages"/>.
/// </summary>
public sealed class RoomClient : IAsyncDisposable
{
    private static readonly byte[] Pong = """{"type":"pong"}"""u8.ToArray();
    private readonly Uri _endpoint;
    private readonly string _room;
    private readonly RoomClientOptions _options;
    private readonly Channel<JsonElement> _messages;
    private readonly CancellationTokenSource _stop = new();
    private readonly SemaphoreSlim _sendLock = new(1, 1);
    private ClientWebSocket _socket;
    private Task _readLoop = Task.CompletedTask;

    private RoomClient(Uri endpoint, string room, RoomClientOptions options, ClientWebSocket socket)
    {
        _endpoint = endpoint;
        _room = room;
        _options = options;
        _socket = socket;
        _messages = Channel.CreateBounded<JsonElement>(new BoundedChannelOptions(options.MessageBuffer) { SingleWriter = true, FullMode = BoundedChannelFullMode.Wait });
    }

    public string ClientId { get; private set; } = "";

    public string ClientSecret { get; private set; } = "";

    /// <summary>Whether this client was host when it (re)connected; follow <c>host_assigned</c> for changes.</summary>
    public bool IsHost { get; private set; }

    /// <summary>Members when this client (re)connected, itself included.</summary>
    public IReadOnlyList<RoomMemberInfo> Members { get; private set; } = [];

    /// <summary>Server messages in order. Completes when the session ends; faults with <see cref="RoomClosedException"/> on a final close.</summary>
    public ChannelReader<JsonElement> Messages => _messages.Reader;

    /// <summary>Connects to the gateway at <paramref name="gateway"/> (http/https or ws/wss base address) and joins a room.</summary>
    public static async Task<RoomClient> ConnectAsync(Uri gateway, string room, string secret, RoomClientOptions? options = null, CancellationToken cancellationToken = default)
    {
        options ??= new RoomClientOptions();
        var builder = new UriBuilder(new Uri(gateway, "v1/websocket"));
        builder.Scheme = builder.Scheme is "https" or "wss" ? "wss" : "ws";
        if (options.Token is not null)
            builder.Query = "token=" + Uri.EscapeDataString(options.Token);
        var client = new RoomClient(builder.Uri, room, options, new ClientWebSocket());
        try
        {
            await client.OpenAsync(client._socket, Write(w =>
            {
                w.WriteString("type", "connect");
                w.WriteString("room", room);
                w.WriteString("secret", secret);
            }), cancellationToken);
        }
        catch
        {
            client._socket.Dispose();
            throw;
        }
        client._readLoop = client.RunAsync();
        return client;
    }

    /// <summary>Relays <paramref name="data"/> to <c>broadcast</c>, <c>host</c> or a client id.</summary>
    public Task RelayAsync(string to, JsonElement data, CancellationToken cancellationToken = default) =>
        SendAsync(Write(w =>
        {
            w.WriteString("type", "relay");
            w.WriteString("to", to);
            w.WritePropertyName("data");
            data.WriteTo(w);
        }), cancellationToken);

    public Task KickAsync(string clientId, CancellationToken cancellationToken = default) =>
        SendAsync(Write(w =>
        {
            w.WriteString("type", "kick");
            w.WriteString("clientId", clientId);
        }), cancellationToken);

    public Task GrantHostAsync(string clientId, CancellationToken cancellationToken = default) =>
        SendAsync(Write(w =>
        {
            w.WriteString("type", "grant_host");
            w.WriteString("clientId", clientId);
        }), cancellationToken);

    private async Task SendAsync(byte[] message, CancellationToken cancellationToken)
    {
        await _sendLock.WaitAsync(cancellationToken);
        try
        {
            // The caller's token bounds only the wait above: cancelling a send in flight would abort the whole socket.
            await _socket.SendAsync(message, WebSocketMessageType.Text, true, _stop.Token);
        }
        finally
        {
            _sendLock.Release();
        }
    }

    // Connects a socket, sends the join message and reads 'connected'.
    private async Task<JsonElement> OpenAsync(ClientWebSocket socket, byte[] join, CancellationToken cancellationToken)
    {
        socket.Options.KeepAliveInterval = TimeSpan.Zero;
        await socket.ConnectAsync(_endpoint, cancellationToken);
        await socket.SendAsync(join, WebSocketMessageType.Text, true, cancellationToken);
        while (true)
        {
            var message = await ReceiveAsync(socket, cancellationToken)
                ?? throw new RoomClosedException((int?)socket.CloseStatus ?? 1006, socket.CloseStatusDescription);
            if (message.GetProperty("type").GetString() == "ping")
                continue;
            if (message.GetProperty("type").GetString() == "error")
                throw new RoomClosedException(CloseCodes.NotFound, message.GetProperty("message").GetString());
            var connected = message.Deserialize(RoomsJsonContext.Default.RoomConnectedMessage)
                ?? throw new InvalidDataException("expected 'connected'");
            ClientId = connected.ClientId;
            ClientSecret = connected.ClientSecret;
            IsHost = connected.Host;
            Members = connected.Members;
            return message;
        }
    }

    private async Task RunAsync()
    {
        var attempts = 0;
        while (true)
        {
            int code;
            string? reason;
            try
            {
                while (await ReceiveAsync(_socket, _stop.Token) is { } message)
                {
                    if (message.GetProperty("type").GetString() == "ping")
                    {
                        await SendAsync(Pong, _stop.Token);
                        continue;
                    }
                    await _messages.Writer.WriteAsync(message, _stop.Token);
                }
                code = (int?)_socket.CloseStatus ?? 1006;
                reason = _socket.CloseStatusDescription;
            }
            catch (OperationCanceledException) when (_stop.IsCancellationRequested)
            {
                _messages.Writer.TryComplete();
                return;
            }
            catch (Exception ex) when (ex is WebSocketException or IOException)
            {
                code = 1006;
                reason = ex.Message;
            }
            catch (Exception ex) when (ex is JsonException or InvalidDataException or KeyNotFoundException or InvalidOperationException)
            {
                // The server sent something this client does not understand: end the session.
                _socket.Abort();
                _messages.Writer.TryComplete(ex);
                return;
            }
            if (!_options.AutoReconnect || !CloseCodes.ShouldReconnect(code) || attempts >= _options.MaxReconnectAttempts)
            {
                _messages.Writer.TryComplete(code == CloseCodes.Normal ? null : new RoomClosedException(code, reason));
                return;
            }
            // Reconnect with the same identity, backing off when the close code asks for it.
            while (true)
            {
                attempts++;
                if (CloseCodes.ShouldBackOff(code) || attempts > 1)
                {
                    var delay = TimeSpan.FromTicks(Math.Min(_options.InitialBackoff.Ticks << Math.Min(attempts - 1, 10), TimeSpan.FromSeconds(10).Ticks));
                    try
                    {
                        await Task.Delay(delay, _stop.Token);
                    }
                    catch (OperationCanceledException)
                    {
                        _messages.Writer.TryComplete();
                        return;
                    }
                }
                var socket = new ClientWebSocket();
                try
                {
                    var connected = await OpenAsync(socket, Write(w =>
                    {
                        w.WriteString("type", "reconnect");
                        w.WriteString("room", _room);
                        w.WriteString("clientId", ClientId);
                        w.WriteString("clientSecret", ClientSecret);
                    }), _stop.Token);
                    var old = _socket;
                    _socket = socket;
                    old.Dispose();
                    attempts = 0;
                    await _messages.Writer.WriteAsync(connected, _stop.Token);
                    break;
                }
                catch (Exception ex) when (ex is WebSocketException or IOException or RoomClosedException or OperationCanceledException)
                {
                    socket.Dispose();
                    if (_stop.IsCancellationRequested || ex is RoomClosedException { CloseCode: var c } && !CloseCodes.ShouldReconnect(c) || attempts >= _options.MaxReconnectAttempts)
                    {
                        _messages.Writer.TryComplete(ex is RoomClosedException ? ex : new RoomClosedException(code, reason));
                        return;
                    }
                }
            }
        }
    }

    private async Task<JsonElement?> ReceiveAsync(ClientWebSocket socket, CancellationToken cancellationToken)
    {
        var buffer = new ArrayBufferWriter<byte>(4096);
        while (true)
        {
            var result = await socket.ReceiveAsync(buffer.GetMemory(4096), cancellationToken);
            if (result.MessageType == WebSocketMessageType.Close)
                return null;
            buffer.Advance(result.Count);
            if (buffer.WrittenCount > _options.MaxMessageBytes)
                throw new InvalidDataException($"server message exceeds {_options.MaxMessageBytes} bytes");
            if (result.EndOfMessage)
                return JsonDocument.Parse(buffer.WrittenMemory).RootElement.Clone();
        }
    }

    private static byte[] Write(Action<Utf8JsonWriter> body)
    {
        var buffer = new ArrayBufferWriter<byte>(256);
        using (var w = new Utf8JsonWriter(buffer))
        {
            w.WriteStartObject();
            body(w);
            w.WriteEndObject();
        }
        return buffer.WrittenSpan.ToArray();
    }

    /// <summary>Leaves the room (close 1000) and stops reconnecting.</summary>
    public async ValueTask DisposeAsync()
    {
        try
        {
            if (_socket.State == WebSocketState.Open)
            {
                using var timeout = new CancellationTokenSource(TimeSpan.FromSeconds(2));
                await _socket.CloseOutputAsync(WebSocketCloseStatus.NormalClosure, "bye", timeout.Token);
            }
        }
        catch (Exception ex) when (ex is WebSocketException or OperationCanceledException or IOException)
        {
        }
        await _stop.CancelAsync();
        try
        {
            await _readLoop;
        }
        catch (Exception ex) when (ex is WebSocketException or OperationCanceledException or IOException or InvalidDataException or JsonException)
        {
        }
        _socket.Dispose();
        _stop.Dispose();
        _sendLock.Dispose();
    }
}
