using System.Net;
using System.Net.Http.Json;
using System.Text.Json;
using Switchboard.Server.Tests.Infrastructure;

namespace Switchboard.Server.Tests.Rooms;

/// <summary>A room member as a test sees it: its socket and the identity from <c>connected</c>.</summary>
internal sealed record TestMember(TestSocket Socket, string ClientId, string ClientSecret, bool Host, JsonElement Connected);

internal static class RoomTestKit
{
    public static async Task<(string Id, string Secret, JsonElement Body)> CreateRoomAsync(TestGateway gw, string? protocol = null, int? maxClients = null, string? name = null)
    {
        var response = await gw.Api.PostAsJsonAsync("v1/api/rooms", new { name, maxClients, protocol });
        Assert.Equal(HttpStatusCode.Created, response.StatusCode);
        var body = await response.Content.ReadFromJsonAsync<JsonElement>();
        return (body.GetProperty("id").GetString()!, body.GetProperty("secret").GetString()!, body);
    }

    /// <summary>Opens a socket and sends <c>connect</c> (does not read the reply).</summary>
    public static async Task<TestSocket> SendConnectAsync(TestGateway gw, string room, string secret, string? token = null)
    {
        var socket = await gw.ConnectAsync("v1/websocket" + (token is null ? "" : "?token=" + Uri.EscapeDataString(token)));
        await socket.SendJsonAsync(new { type = "connect", room, secret });
        return socket;
    }

    public static async Task<TestMember> JoinAsync(TestGateway gw, string room, string secret, string? token = null)
    {
        var socket = await SendConnectAsync(gw, room, secret, token);
        return await ReadConnectedAsync(socket);
    }

    public static async Task<TestMember> ReadConnectedAsync(TestSocket socket)
    {
        var connected = await socket.ReceiveJsonAsync();
        Assert.Equal("connected", connected.GetProperty("type").GetString());
        return new TestMember(socket, connected.GetProperty("clientId").GetString()!, connected.GetProperty("clientSecret").GetString()!,
            connected.GetProperty("host").GetBoolean(), connected);
    }

    public static Task RelayAsync(this TestMember client, string to, object data) =>
        client.Socket.SendJsonAsync(new { type = "relay", to, data });

    public static Task<JsonElement> NextAsync(this TestMember client, string type) => client.Socket.ReceiveTypeAsync(type);

    public static async Task<JsonElement> NextAsync(this TestMember client) => await client.Socket.ReceiveJsonAsync();

    /// <summary>
    /// Asserts nothing else arrived: <paramref name="prober"/> relays a marker directly to <paramref name="client"/>, and the
    /// marker must be the next message (a timed-out receive would abort a client WebSocket, so silence is proven this way).
    /// </summary>
    public static async Task AssertQuietAsync(this TestMember client, TestMember prober)
    {
        var marker = Guid.NewGuid().ToString("N");
        await prober.RelayAsync(client.ClientId, new { probe = marker });
        var next = await client.NextAsync();
        Assert.True(next.Type() == "relay" && next.GetProperty("data").TryGetProperty("probe", out var p) && p.GetString() == marker,
            "unexpected message: " + next.GetRawText());
    }

    public static string Type(this JsonElement e) => e.GetProperty("type").GetString()!;

    public static string Str(this JsonElement e, string property) => e.GetProperty(property).GetString()!;
}
