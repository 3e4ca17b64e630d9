using System.Net.WebSockets;
using System.Text.Json;
using Switchboard.Protocol;
using Switchboard.Server.Connections;

namespace Switchboard.Server.Channels;

/// <summary>The channel protocol on one WebSocket connection: parses client messages and holds its subscriptions.</summary>
internal sealed class ChannelSession(WsConnection connection, ChannelHub hub, int maxSubscriptions) : IChannelSubscriber, IRecoverableSubscriber
{
    private readonly Subscriptions _subscriptions = new();
    private readonly Lock _gate = new();

    public string Id => connection.Id;

    public bool Deliver(ChannelBroadcast broadcast) => connection.TrySend(OutboundFrame.Text(broadcast.Json));

    bool IChannelSubscriber.Deliver(ChannelBroadcast broadcast, SenderStarts starts) => starts.TrySend(connection, OutboundFrame.Text(broadcast.Json));

    public void Resync(string channel) =>
        connection.Close(CloseCodes.SlowConsumer, $"channel {channel} has an unrecoverable gap: resubscribe", drain: true);

    public async ValueTask HandleAsync(WsConnection _, ReadOnlyMemory<byte> payload, WebSocketMessageType type, CancellationToken cancellationToken)
    {
        if (type != WebSocketMessageType.Text)
            throw new ProtocolViolationException("channel messages are JSON text frames");
        var message = JsonSerializer.Deserialize(payload.Span, ProtocolJsonContext.Default.ChannelClientMessage)
            ?? throw new ProtocolViolationException("message must be a JSON object");
        switch (message.Type)
        {
            case "subscribe":
                await SubscribeAsync(message, cancellationToken);
                break;
            case "unsubscribe":
                Unsubscribe(message);
                break;
            case "publish":
                await PublishAsync(message, cancellationToken);
                break;
            case "pong":
            case "ping":
                break;
            default:
                throw new ProtocolViolationException($"unknown message type '{message.Type}'");
        }
    }

    private async ValueTask SubscribeAsync(ChannelClientMessage message, CancellationToken cancellationToken)
    {
        var channel = message.Channel;
        if (!hub.IsValidName(channel, out var error))
        {
            Error("bad_channel", error, channel, message.Id);
            return;
        }
        if (!connection.Grants.CanSubscribe(channel!))
        {
            Error("forbidden", "the token does not grant this channel", channel, message.Id);
            return;
        }
        lock (_gate)
        {
            if (_subscriptions.Contains(channel!))
            {
                Error("already_subscribed", "already subscribed to this channel", channel, message.Id);
                return;
            }
            if (_subscriptions.Count >= maxSubscriptions)
            {
                Error("too_many_subscriptions", $"at most {maxSubscriptions} subscriptions per connection", channel, message.Id);
                return;
            }
            _subscriptions.Add(channel!);
        }
        await hub.SubscribeAsync(channel!, this, message.Since, result =>
        {
            // Queued under the channel gate, before live messages: subscribed, then the missed messages in order.
            connection.TrySendJson(new SubscribedMessage(channel!, result.Position.Offset, result.Position.Epoch, result.Recovered, message.Id),
                ProtocolJsonContext.Default.SubscribedMessage);
            foreach (var m in result.Missed)
                Deliver(m);
        }, cancellationToken);
    }

    private void Unsubscribe(ChannelClientMessage message)
    {
        var channel = message.Channel ?? "";
        bool removed;
        lock (_gate)
            removed = _subscriptions.Remove(channel);
        if (removed)
            hub.Unsubscribe(channel, this);
        connection.TrySendJson(new UnsubscribedMessage(channel, message.Id), ProtocolJsonContext.Default.UnsubscribedMessage);
    }

    private async ValueTask PublishAsync(ChannelClientMessage message, CancellationToken cancellationToken)
    {
        var channel = message.Channel;
        if (!hub.IsValidName(channel, out var error))
        {
            Error("bad_channel", error, channel, message.Id);
            return;
        }
        if (!connection.Grants.CanPublish(channel!))
        {
            Error("forbidden", "the token does not grant publishing to this channel", channel, message.Id);
            return;
        }
        if (message.Data is not { } data || data.ValueKind == JsonValueKind.Undefined)
        {
            Error("bad_message", "publish needs 'data'", channel, message.Id);
            return;
        }
        Storage.ChannelPosition position;
        try
        {
            position = await hub.PublishAsync(channel!, ChannelBroadcast.NormalizeData(data), null, cancellationToken);
        }
        catch (System.Data.Common.DbException)
        {
            // The store is unreachable (database restarting): the connection stays; the client may retry.
            Error("store_unavailable", "the store is unavailable; retry shortly", channel, message.Id);
            return;
        }
        connection.TrySendJson(new PublishedMessage(channel!, position.Offset, position.Epoch, message.Id), ProtocolJsonContext.Default.PublishedMessage);
    }

    private void Error(string code, string text, string? channel, string? id) =>
        connection.TrySendJson(new ErrorMessage(code, text, channel, id), ProtocolJsonContext.Default.ErrorMessage);

    /// <summary>Removes every subscription (connection ended).</summary>
    public void Dispose()
    {
        string[] channels;
        lock (_gate)
        {
            channels = _subscriptions.TakeAll();
        }
        foreach (var c in channels)
            hub.Unsubscribe(c, this);
    }

    /// <summary>
    /// The channels of one connection. Most connections view one channel, and every idle connection holds this, so
    /// the first is a field and a set exists only from the second on. Not thread-safe (guarded by the session's gate).
    /// </summary>
    private sealed class Subscriptions
    {
        private string? _first;
        private HashSet<string>? _more;

        public int Count => (_first is null ? 0 : 1) + (_more?.Count ?? 0);

        public bool Contains(string channel) => channel == _first || (_more?.Contains(channel) ?? false);

        public void Add(string channel)
        {
            if (_first is null)
                _first = channel;
            else
                (_more ??= new HashSet<string>(StringComparer.Ordinal)).Add(channel);
        }

        public bool Remove(string channel)
        {
            if (channel == _first)
            {
                _first = null;
                return true;
            }
            return _more?.Remove(channel) ?? false;
        }

        public string[] TakeAll()
        {
            string[] all = [.. (_first is null ? [] : new[] { _first }), .. (_more ?? [])];
            _first = null;
            _more = null;
            return all;
        }
    }
}
