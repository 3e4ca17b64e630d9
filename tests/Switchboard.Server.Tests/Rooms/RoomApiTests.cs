using System.Net;
using System.Net.Http.Headers;
using System.Net.Http.Json;
using System.Security.Cryptography;
using System.Text;
using System.Text.Json;
using Microsoft.Extensions.DependencyInjection;
using Switchboard.Protocol;
using Switchboard.Server.Storage;
using Switchboard.Server.Tests.Infrastructure;

namespace Switchboard.Server.Tests.Rooms;

public sealed class RoomApiTests
{
    [Fact]
    public async Task Create_list_get_summary_delete_never_list_the_secret()
    {
        await using var gw = await TestGateway.StartAsync();
        var (id, secret, created) = await RoomTestKit.CreateRoomAsync(gw, "open", 4, "game night");
        Assert.Equal("game night", created.Str("name"));
        Assert.Equal(4, created.GetProperty("maxClients").GetInt32());
        Assert.Equal("open", created.Str("protocol"));
        Assert.True(created.TryGetProperty("createdAt", out _));
        Assert.True(secret.Length >= 32);
        var (id2, secret2, hostRoom) = await RoomTestKit.CreateRoomAsync(gw);
        Assert.NotEqual(id, id2);
        Assert.NotEqual(secret, secret2);
        Assert.Equal("host", hostRoom.Str("protocol"));
        Assert.Equal(16, hostRoom.GetProperty("maxClients").GetInt32());

        var a = await RoomTestKit.JoinAsync(gw, id, secret);

        var listText = await gw.Api.GetStringAsync("v1/api/rooms");
        Assert.DoesNotContain(secret, listText, StringComparison.Ordinal);
        Assert.DoesNotContain(secret2, listText, StringComparison.Ordinal);
        Assert.DoesNotContain("secret", listText, StringComparison.OrdinalIgnoreCase);
        var list = JsonDocument.Parse(listText).RootElement.GetProperty("rooms");
        Assert.Equal(2, list.GetArrayLength());
        var listed = list.EnumerateArray().Single(r => r.Str("id") == id);
        Assert.Equal(1, listed.GetProperty("memberCount").GetInt32());
        Assert.Equal(a.ClientId, listed.Str("hostId"));

        var getText = await gw.Api.GetStringAsync($"v1/api/rooms/{id}");
        Assert.DoesNotContain(secret, getText, StringComparison.Ordinal);
        var got = JsonDocument.Parse(getText).RootElement;
        Assert.Equal("game night", got.Str("name"));
        Assert.Equal(a.ClientId, got.GetProperty("members")[0].Str("clientId"));
        Assert.True(got.GetProperty("members")[0].GetProperty("host").GetBoolean());

        var summary = await gw.Api.GetFromJsonAsync<JsonElement>("v1/api/summary");
        Assert.Equal(2, summary.GetProperty("rooms").GetInt32());
        Assert.Equal(1, summary.GetProperty("clients").GetInt32());
        Assert.Equal(1, summary.GetProperty("protocols").GetProperty("open").GetProperty("rooms").GetInt32());
        Assert.Equal(1, summary.GetProperty("protocols").GetProperty("open").GetProperty("clients").GetInt32());
        Assert.Equal(1, summary.GetProperty("protocols").GetProperty("host").GetProperty("rooms").GetInt32());
        Assert.Equal(0, summary.GetProperty("protocols").GetProperty("host").GetProperty("clients").GetInt32());

        Assert.Equal(HttpStatusCode.NoContent, (await gw.Api.DeleteAsync($"v1/api/rooms/{id2}")).StatusCode);
        Assert.Equal(HttpStatusCode.NotFound, (await gw.Api.GetAsync($"v1/api/rooms/{id2}")).StatusCode);
        Assert.Equal(HttpStatusCode.NotFound, (await gw.Api.DeleteAsync($"v1/api/rooms/{id2}")).StatusCode);
        Assert.Single((await gw.Api.GetFromJsonAsync<JsonElement>("v1/api/rooms")).GetProperty("rooms").EnumerateArray());
    }

    [Fact]
    public async Task Api_needs_the_api_key()
    {
        await using var gw = await TestGateway.StartAsync();
        var (id, _, _) = await RoomTestKit.CreateRoomAsync(gw);
        using var withJwt = new HttpClient { BaseAddress = gw.BaseUri };
        withJwt.DefaultRequestHeaders.Authorization = new AuthenticationHeaderValue("Bearer", gw.Token(rooms: ["*"]));
        foreach (var client in new[] { gw.Http, withJwt })
        {
            Assert.Equal(HttpStatusCode.Unauthorized, (await client.PostAsJsonAsync("v1/api/rooms", new { })).StatusCode);
            Assert.Equal(HttpStatusCode.Unauthorized, (await client.GetAsync("v1/api/rooms")).StatusCode);
            Assert.Equal(HttpStatusCode.Unauthorized, (await client.GetAsync($"v1/api/rooms/{id}")).StatusCode);
            Assert.Equal(HttpStatusCode.Unauthorized, (await client.DeleteAsync($"v1/api/rooms/{id}")).StatusCode);
            Assert.Equal(HttpStatusCode.Unauthorized, (await client.GetAsync("v1/api/summary")).StatusCode);
        }
        Assert.Equal(HttpStatusCode.OK, (await gw.Api.GetAsync($"v1/api/rooms/{id}")).StatusCode);
    }

    [Fact]
    public async Task Invalid_input_is_400_with_a_message_and_the_room_limit_is_429()
    {
        await using var gw = await TestGateway.StartAsync(o =>
        {
            o.Rooms.MaxRooms = 2;
            o.Rooms.MaxClientsLimit = 50;
        });
        async Task<string> BadAsync(HttpContent content)
        {
            var r = await gw.Api.PostAsync("v1/api/rooms", content);
            Assert.Equal(HttpStatusCode.BadRequest, r.StatusCode);
            var body = await r.Content.ReadFromJsonAsync<JsonElement>();
            Assert.Equal("bad_request", body.Str("error"));
            return body.Str("message");
        }
        Assert.Contains("protocol must be one of: host, open", await BadAsync(JsonContent.Create(new { protocol = "chaos" })), StringComparison.Ordinal);
        Assert.Contains("between 1 and 50", await BadAsync(JsonContent.Create(new { maxClients = 0 })), StringComparison.Ordinal);
        Assert.Contains("between 1 and 50", await BadAsync(JsonContent.Create(new { maxClients = 51 })), StringComparison.Ordinal);
        Assert.Contains("at most 100", await BadAsync(JsonContent.Create(new { name = new string('x', 101) })), StringComparison.Ordinal);
        await BadAsync(new StringContent("{not json", Encoding.UTF8, "application/json"));
        await BadAsync(new StringContent("{\"maxClients\":\"many\"}", Encoding.UTF8, "application/json"));

        // An empty body takes every default.
        var empty = await gw.Api.PostAsync("v1/api/rooms", null);
        Assert.Equal(HttpStatusCode.Created, empty.StatusCode);
        await RoomTestKit.CreateRoomAsync(gw, maxClients: 50);
        var third = await gw.Api.PostAsJsonAsync("v1/api/rooms", new { });
        Assert.Equal(HttpStatusCode.TooManyRequests, third.StatusCode);
        Assert.Equal("too_many_rooms", (await third.Content.ReadFromJsonAsync<JsonElement>()).Str("error"));

        Assert.Equal(HttpStatusCode.NotFound, (await gw.Api.GetAsync("v1/api/rooms/nope")).StatusCode);
        Assert.Equal(HttpStatusCode.NotFound, (await gw.Api.DeleteAsync("v1/api/rooms/nope")).StatusCode);
    }

    [Fact]
    public async Task The_store_keeps_only_a_hash_of_the_secret()
    {
        await using var gw = await TestGateway.StartAsync();
        var (id, secret, _) = await RoomTestKit.CreateRoomAsync(gw);
        var store = gw.Services.GetRequiredService<IRoomStore>();
        var record = await store.GetAsync(id, default);
        Assert.NotNull(record);
        Assert.Equal(SHA256.HashData(Encoding.UTF8.GetBytes(secret)), record.SecretHash);
        await gw.App.StopAsync();
        Microsoft.Data.Sqlite.SqliteConnection.ClearAllPools();
        foreach (var file in Directory.GetFiles(gw.DataDir))
        {
            var bytes = await File.ReadAllBytesAsync(file);
            Assert.Equal(-1, bytes.AsSpan().IndexOf(Encoding.UTF8.GetBytes(secret)));
        }
    }

    [Fact]
    public async Task Rooms_survive_a_restart()
    {
        var dataDir = Path.Combine(Path.GetTempPath(), "switchboard-tests", Guid.NewGuid().ToString("N"));
        var first = await TestGateway.StartAsync(dataDir: dataDir);
        string id, secret;
        try
        {
            (id, secret, _) = await RoomTestKit.CreateRoomAsync(first, "open", 3, "kept");
        }
        finally
        {
            await first.App.StopAsync();
            await first.App.DisposeAsync();
            Microsoft.Data.Sqlite.SqliteConnection.ClearAllPools();
        }

        await using var second = await TestGateway.StartAsync(dataDir: dataDir);
        var got = await second.Api.GetFromJsonAsync<JsonElement>($"v1/api/rooms/{id}");
        Assert.Equal("kept", got.Str("name"));
        Assert.Equal("open", got.Str("protocol"));
        var a = await RoomTestKit.JoinAsync(second, id, secret);
        Assert.True(a.Host);
        Assert.Equal("open", a.Connected.Str("protocol"));
        var wrong = await RoomTestKit.SendConnectAsync(second, id, secret + "x");
        Assert.Equal(CloseCodes.Forbidden, await wrong.WaitForCloseAsync());
    }
}
