using System.Collections.Concurrent;
using System.Net.WebSockets;
using System.Text.Json;
using System.Threading.Channels;
using Switchboard.Client.Connections;
using Switchboard.Protocol;

namespace Switchboard.Client.Channels;

/// <summary>A message received on a channel, or a notice that the subscription could not be recovered.</summary>
public sealed record ChannelEvent(string Channel, long Offset, string Epoch, JsonElement Data, bool IsReset = false);

/// <summary>
/// Client for <c>/api/v1/ws</c>: one connection, many subscriptions, automatic reconnect with backoff that
/// resubscribes with <c>since</c> so nothing is missed. When the server cannot recover a gap, the subscription
/// yields a <see cref="ChannelEvent"/> with <see cref="ChannelEvent.IsReset"/> so the application reloads its state.
/// </summary>
public sealed class ChannelClient : IAsyncDisposable
{
    private readonly Uri _endpoint;
    private readonly Func<CancellationToken, ValueTask<string>> _token;
    private readonly ReconnectPolicy _policy;
    private readonly ConcurrentDictionary<string, Subscription> _subscriptions = new(StringComparer.Ordinal);
    private readonly CancellationTokenSource _stop = new();
    private readonly SemaphoreSlim _sendGate = new(1, 1);
    private readonly TaskCompletionSource _firstConnect = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private ClientWebSocket? _socket;
    private Task? _loop;

    /// <param name="server">Gateway base address, e.g. <c>http://127.0.0.1:8080</c>.</param>
    /// <param name="token">Returns a JWT; called before every (re)connect so tokens can be refreshed.</param>
    public ChannelClient(Uri server, Func<CancellationToken, ValueTask<string>> token, ReconnectPolicy? policy = null)
    {
        var ws = new UriBuilder(server) { Scheme = server.Scheme == "https" ? "wss" : "ws" };
        ws.Path = ws.Path.TrimEnd('/') + "/api/v1/ws";
        _endpoint = ws.Uri;
        _token = token;
        _policy = policy ?? ReconnectPolicy.Default;
    }

    /// <summary>Connection id of the current connection (for <c>excludeConnection</c>).</summary>
    public string? ConnectionId { get; private set; }

    /// <summary>Number of successful connections so far (1 after the first connect).</summary>
    public int Connections { get; private set; }

    /// <summary>Close code of the last disconnect (0 while none).</summary>
    public int LastCloseCode { get; private set; }

    /// <summary>Completes when the client stops for good (a final close code, or disposal).</summary>
    public Task Completion => _loop ?? Task.CompletedTask;

    /// <summary>Connects (first attempt must succeed) and keeps the connection up in the background.</summary>
    public async Task ConnectAsync(CancellationToken cancellationToken)
    {
        _loop = RunAsync();
        await _firstConnect.Task.WaitAsync(cancellationToken);
    }

    /// <summary>Subscribes to a channel. Events are read from the returned reader (bounded: an application that stops reading
    /// makes the server close the connection as slow, after which the client reconnects and recovers).</summary>
    public ChannelReader<ChannelEvent> Subscribe(string channel, StreamPosition? since = null, int capacity = 1024)
    {
        var sub = new Subscription(channel, since, Channel.CreateBounded<ChannelEvent>(new BoundedChannelOptions(capacity) { SingleWriter = true }));
        if (!_subscriptions.TryAdd(channel, sub))
            throw new InvalidOperationException($"already subscribed to {channel}");
        _ = SendAsync(SubscribeMessage(sub), _stop.Token);
        return sub.Events.Reader;
    }

    /// <summary>Last position received on a channel (what a reconnect resumes from).</summary>
    public StreamPosition? PositionOf(string channel) => _subscriptions.TryGetValue(channel, out var s) ? s.Position : null;

    /// <summary>
    /// Publishes a JSON value over the socket (the token needs a <c>publish</c> grant). Fire-and-forget: nothing is sent
    /// while disconnected and the <c>published</c> acknowledgement is not awaited; use the HTTP publish API when the
    /// caller must know the message was stored.
    /// </summary>
    public Task PublishAsync(string channel, JsonElement data, CancellationToken cancellationToken) =>
        SendAsync(JsonSerializer.SerializeToUtf8Bytes(new ChannelClientMessage { Type = "publish", Channel = channel, Data = data },
            ProtocolJsonContext.Default.ChannelClientMessage), cancellationToken);

    private static byte[] SubscribeMessage(Subscription sub) =>
        JsonSerializer.SerializeToUtf8Bytes(new ChannelClientMessage { Type = "subscribe", Channel = sub.Channel, Since = sub.Position }, ProtocolJsonContext.Default.ChannelClientMessage);

    private async Task SendAsync(byte[] message, CancellationToken cancellationToken)
    {
        try
        {
            await _sendGate.WaitAsync(cancellationToken);
        }
        catch (Exception ex) when (ex is OperationCanceledException or ObjectDisposedException)
        {
            return;
        }
        try
        {
            // The caller's token bounds only the wait above: cancelling a send in flight would abort the whole socket.
            if (_socket is { State: WebSocketState.Open } socket)
                await socket.SendAsync(message, WebSocketMessageType.Text, true, _stop.Token);
            // Not connected: the subscription is sent on (re)connect.
        }
        catch (Exception ex) when (ex is WebSocketException or ObjectDisposedException or OperationCanceledException)
        {
            // The connection dropped or the client is closing; the run loop reconnects and resubscribes.
        }
        finally
        {
            _sendGate.Release();
        }
    }

    private async Task RunAsync()
    {
        var attempt = 0;
        while (!_stop.IsCancellationRequested)
        {
            var code = 1006;
            try
            {
                code = await ConnectOnceAsync(() => attempt = 0);
            }
            catch (OperationCanceledException) when (_stop.IsCancellationRequested)
            {
                break;
            }
            catch (Exception ex)
            {
                // Network failure, a bad frame or a failing token callback: reconnect (or fail the first connect).
                if (!_firstConnect.Task.IsCompleted)
                {
                    _firstConnect.TrySetException(ex);
                    return;
                }
            }
            LastCloseCode = code;
            var delay = _policy.NextDelay(++attempt, code);
            if (delay is null)
                break;
            try
            {
                await Task.Delay(delay.Value, _stop.Token);
            }
            catch (OperationCanceledException)
            {
                break;
            }
        }
        _firstConnect.TrySetException(new WebSocketException($"connection closed with {LastCloseCode}"));
        foreach (var s in _subscriptions.Values)
            s.Events.Writer.TryComplete();
    }

    private async Task<int> ConnectOnceAsync(Action onConnected)
    {
        using var socket = new ClientWebSocket();
        socket.Options.KeepAliveInterval = TimeSpan.Zero;
        var token = await _token(_stop.Token);
        var uri = new UriBuilder(_endpoint) { Query = "token=" + Uri.EscapeDataString(token) }.Uri;
        await socket.ConnectAsync(uri, _stop.Token);
        await _sendGate.WaitAsync(_stop.Token);
        try
        {
            _socket = socket;
            foreach (var s in _subscriptions.Values)
                await socket.SendAsync(SubscribeMessage(s), WebSocketMessageType.Text, true, _stop.Token);
        }
        finally
        {
            _sendGate.Release();
        }
        Connections++;
        onConnected();
        _firstConnect.TrySetResult();
        var buffer = new byte[64 * 1024];
        using var message = new MemoryStream();
        try
        {
            while (true)
            {
                var result = await socket.ReceiveAsync(buffer, _stop.Token);
                if (result.MessageType == WebSocketMessageType.Close)
                {
                    await AnswerCloseAsync(socket);
                    return (int)(socket.CloseStatus ?? WebSocketCloseStatus.Empty);
                }
                message.Write(buffer, 0, result.Count);
                if (!result.EndOfMessage)
                    continue;
                await HandleAsync(socket, message.GetBuffer().AsMemory(0, (int)message.Length));
                message.SetLength(0);
            }
        }
        catch (WebSocketException)
        {
            return socket.CloseStatus is { } s ? (int)s : 1006;
        }
        finally
        {
            await _sendGate.WaitAsync(CancellationToken.None);
            _socket = null;
            _sendGate.Release();
        }
    }

    private async Task AnswerCloseAsync(ClientWebSocket socket)
    {
        await _sendGate.WaitAsync(CancellationToken.None);
        try
        {
            using var timeout = new CancellationTokenSource(TimeSpan.FromSeconds(2));
            if (socket.State == WebSocketState.CloseReceived)
                await socket.CloseOutputAsync(socket.CloseStatus ?? WebSocketCloseStatus.NormalClosure, null, timeout.Token);
        }
        catch (Exception ex) when (ex is WebSocketException or OperationCanceledException)
        {
        }
        finally
        {
            _sendGate.Release();
        }
    }

    private async Task HandleAsync(ClientWebSocket socket, ReadOnlyMemory<byte> payload)
    {
        var m = JsonSerializer.Deserialize(payload.Span, ProtocolJsonContext.Default.ChannelServerMessage);
        if (m is null)
            return;
        switch (m.Type)
        {
            case "ping":
                await _sendGate.WaitAsync(_stop.Token);
                try
                {
                    await socket.SendAsync("""{"type":"pong"}"""u8.ToArray(), WebSocketMessageType.Text, true, _stop.Token);
                }
                finally
                {
                    _sendGate.Release();
                }
                break;
            case "welcome":
                ConnectionId = m.ConnectionId;
                break;
            case "subscribed" when m.Channel is not null && _subscriptions.TryGetValue(m.Channel, out var sub):
                if (m.Recovered == false)
                    await sub.Events.Writer.WriteAsync(new ChannelEvent(m.Channel, m.Offset, m.Epoch!, default, IsReset: true), _stop.Token);
                // Recovered: the missed messages follow and advance the position; otherwise start from the current offset.
                sub.Position = m.Recovered == true && sub.Position is { } held ? held with { Epoch = m.Epoch! } : new StreamPosition(m.Offset, m.Epoch!);
                break;
            case "message" when m.Channel is not null && _subscriptions.TryGetValue(m.Channel, out var target):
                if (target.Position is { } p && m.Offset <= p.Offset)
                    break; // duplicate after a reconnect race
                var epoch = target.Position?.Epoch ?? "";
                target.Position = new StreamPosition(m.Offset, epoch);
                await target.Events.Writer.WriteAsync(new ChannelEvent(m.Channel, m.Offset, epoch, m.Data ?? default), _stop.Token);
                break;
        }
    }

    public async ValueTask DisposeAsync()
    {
        // Close first (so the server sees 1000), then stop the loop.
        await _sendGate.WaitAsync(CancellationToken.None);
        try
        {
            if (_socket is { State: WebSocketState.Open } socket)
            {
                using var timeout = new CancellationTokenSource(TimeSpan.FromSeconds(2));
                await socket.CloseOutputAsync(WebSocketCloseStatus.NormalClosure, "bye", timeout.Token);
            }
        }
        catch (Exception ex) when (ex is WebSocketException or OperationCanceledException or ObjectDisposedException)
        {
        }
        finally
        {
            _sendGate.Release();
        }
        if (_loop is not null)
            await Task.WhenAny(_loop, Task.Delay(TimeSpan.FromSeconds(2)));
        _stop.Cancel();
        if (_loop is not null)
            await _loop.ConfigureAwait(ConfigureAwaitOptions.SuppressThrowing);
        _stop.Dispose();
    }

    private sealed class Subscription(string channel, StreamPosition? since, Channel<ChannelEvent> events)
    {
        public string Channel { get; } = channel;
        public Channel<ChannelEvent> Events { get; } = events;
        public StreamPosition? Position { get; set; } = since;
    }
}
