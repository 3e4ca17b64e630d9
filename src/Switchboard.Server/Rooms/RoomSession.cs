using System.Net.WebSockets;
using System.Text.Json;
using Switchboard.Protocol;
using Switchboard.Protocol.Rooms;
using Switchboard.Server.Connections;

namespace Switchboard.Server.Rooms;

/// <summary>
/// The rooms protocol on one WebSocket connection: the first message must be <c>connect</c> or <c>reconnect</c>;
/// afterwards <c>relay</c>, <c>kick</c> and <c>grant_host</c> act on the room. The room secret is the credential;
/// a token, when the client presented one, must also grant the room (JWT claim <c>rooms</c>).
/// </summary>
internal sealed class RoomSession(WsConnection connection, RoomManager rooms, bool tokenPresented)
{
    private Room? _room;
    private RoomMember? _member;

    public async ValueTask HandleAsync(WsConnection _, ReadOnlyMemory<byte> payload, WebSocketMessageType type, CancellationToken cancellationToken)
    {
        if (type != WebSocketMessageType.Text)
            throw new ProtocolViolationException("room messages are JSON text frames");
        var message = JsonSerializer.Deserialize(payload.Span, RoomsJsonContext.Default.RoomClientMessage)
            ?? throw new ProtocolViolationException("message must be a JSON object");
        switch (message.Type)
        {
            case "connect":
            case "reconnect":
                if (_member is not null)
                    throw new ProtocolViolationException("already connected to a room");
                await ConnectAsync(message, cancellationToken);
                break;
            case "relay":
                Relay(message);
                break;
            case "kick":
                Reply(Joined().Room.Kick(Joined().Member, Required(message.ClientId, "clientId")));
                break;
            case "grant_host":
                Reply(Joined().Room.GrantHost(Joined().Member, Required(message.ClientId, "clientId")));
                break;
            case "pong":
            case "ping":
                break;
            case null:
                throw new ProtocolViolationException("message needs a 'type'");
            default:
                throw new ProtocolViolationException($"unknown message type '{message.Type}'");
        }
    }

    /// <summary>The connection ended: leave the room (the identity stays reusable for the reconnect grace period).</summary>
    public void OnClosed()
    {
        if (_room is { } room && _member is { } member)
            room.Leave(member, connection, Room.LeaveReason(connection.CloseCode));
    }

    private async ValueTask ConnectAsync(RoomClientMessage message, CancellationToken cancellationToken)
    {
        var roomId = Required(message.Room, "room");
        var reconnect = message.Type == "reconnect";
        var room = await rooms.GetAsync(roomId, cancellationToken);
        if (room is null || room.IsClosed)
        {
            connection.Close(CloseCodes.NotFound, "unknown room");
            return;
        }
        if (tokenPresented && !connection.Grants.CanUseRoom(room.Id))
        {
            connection.Close(CloseCodes.Forbidden, "the token does not grant this room");
            return;
        }
        JoinResult result;
        if (reconnect)
        {
            var clientId = Required(message.ClientId, "clientId");
            var clientSecret = Required(message.ClientSecret, "clientSecret");
            result = room.Rejoin(connection, clientId, clientSecret);
        }
        else
        {
            if (!RoomSecrets.Matches(Required(message.Secret, "secret"), room.Record.SecretHash))
            {
                connection.Close(CloseCodes.Forbidden, "wrong room secret");
                return;
            }
            result = room.Join(connection);
        }
        switch (result.Status)
        {
            case JoinStatus.Joined:
                _room = room;
                _member = result.Member;
                break;
            case JoinStatus.Full:
                connection.Close(CloseCodes.TooManyRequests, $"room is full ({room.Record.MaxClients} clients)");
                break;
            case JoinStatus.Closed:
                connection.Close(CloseCodes.NotFound, "unknown room");
                break;
            case JoinStatus.BadClientSecret:
                connection.Close(CloseCodes.Forbidden, "wrong client secret");
                break;
            case JoinStatus.ReconnectExpired:
                // Recoverable: the client may send a fresh 'connect' on this connection.
                Reply(new RoomDenial("reconnect_expired", "unknown client id or the reconnect grace period expired; send 'connect' to join as a new client"));
                break;
        }
    }

    private void Relay(RoomClientMessage message)
    {
        var (room, member) = Joined();
        var to = Required(message.To, "to");
        if (message.Data is not { } data || data.ValueKind == JsonValueKind.Undefined)
            throw new ProtocolViolationException("relay needs 'data'");
        Reply(room.Relay(member, to, data));
    }

    private (Room Room, RoomMember Member) Joined() =>
        _room is { } room && _member is { } member ? (room, member) : throw new ProtocolViolationException("send 'connect' first");

    private static string Required(string? value, string field) =>
        string.IsNullOrEmpty(value) ? throw new ProtocolViolationException($"'{field}' is required") : value;

    private void Reply(RoomDenial? denial)
    {
        if (denial is not null)
            connection.TrySendJson(new RoomErrorMessage(denial.Code, denial.Message), RoomsJsonContext.Default.RoomErrorMessage);
    }
}
