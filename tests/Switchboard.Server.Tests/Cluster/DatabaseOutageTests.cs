using System.Net;
using System.Net.Http.Json;
using Microsoft.Extensions.DependencyInjection;
using Npgsql;
using Switchboard.Server.Tests.Infrastructure;
using Switchboard.Storage.Postgres;
using Switchboard.Storage.Postgres.Tests;

namespace Switchboard.Server.Tests.Cluster;

/// <summary>What a node does when every database connection is cut (as in a PostgreSQL restart or failover).</summary>
public sealed class DatabaseOutageTests(PostgresFixture fixture) : IClassFixture<PostgresFixture>
{
    [Fact]
    public async Task After_all_connections_are_cut_nodes_reconnect_and_subscribers_miss_nothing()
    {
        ClearStalePool();
        await using var cluster = await TestCluster.StartAsync(fixture, 2);
        var subscriber = await cluster[1].ConnectChannelsAsync();
        await subscriber.SendJsonAsync(new { type = "subscribe", channel = "outage" });
        await subscriber.ReceiveTypeAsync("subscribed");

        var published = new List<long>();
        var failures = 0;
        for (var i = 1; i <= 40; i++)
        {
            if (i == 20)
                await TerminateAllAsync(cluster.ConnectionString);
            var response = await cluster[0].Api.PostAsJsonAsync("api/v1/channels/outage/messages", new { data = i });
            if (response.StatusCode == HttpStatusCode.OK)
                published.Add((await response.Content.ReadFromJsonAsync<System.Text.Json.JsonElement>()).GetProperty("offset").GetInt64());
            else
                failures++;
        }
        Assert.Equal(Enumerable.Range(1, published.Count).Select(i => (long)i), published);
        foreach (var offset in published)
            Assert.Equal(offset, (await subscriber.ReceiveTypeAsync("message")).GetProperty("offset").GetInt64());
        var bus = cluster[1].Services.GetRequiredService<PostgresBus>();
        Assert.True(bus.IsListening);
        Assert.True(failures <= 2, $"{failures} publishes failed after the outage"); // measured: 0
        await subscriber.DisposeAsync();
    }

    [Fact]
    public async Task While_the_database_refuses_connections_publishes_get_503_with_retry_after_then_succeed()
    {
        ClearStalePool();
        await using var cluster = await TestCluster.StartAsync(fixture, 1);
        var database = new NpgsqlConnectionStringBuilder(cluster.ConnectionString).Database!;
        await using var client = await cluster[0].ConnectChannelsAsync();
        await AdminAsync($"ALTER DATABASE {database} ALLOW_CONNECTIONS false");
        try
        {
            await AdminAsync($"SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname = '{database}'");
            using var refused = await cluster[0].Api.PostAsJsonAsync("api/v1/channels/down/messages", new { data = 1 });
            Assert.Equal(HttpStatusCode.ServiceUnavailable, refused.StatusCode);
            Assert.Equal(TimeSpan.FromSeconds(1), refused.Headers.RetryAfter?.Delta);
            Assert.Equal("store_unavailable", (await refused.Content.ReadFromJsonAsync<System.Text.Json.JsonElement>()).GetProperty("error").GetString());
            using var history = await cluster[0].Api.GetAsync("api/v1/channels/down/messages");
            Assert.Equal(HttpStatusCode.ServiceUnavailable, history.StatusCode);
            // Over WebSocket: an error reply, and the connection stays open.
            await client.SendJsonAsync(new { type = "publish", channel = "down", data = 1, id = "p1" });
            var error = await client.ReceiveTypeAsync("error");
            Assert.Equal(("store_unavailable", "p1"), (error.GetProperty("code").GetString(), error.GetProperty("id").GetString()));
            Assert.Equal(System.Net.WebSockets.WebSocketState.Open, client.Socket.State);
        }
        finally
        {
            await AdminAsync($"ALTER DATABASE {database} ALLOW_CONNECTIONS true");
        }
        // Back: the next publish is stored (the failed one was not: the store was never reached).
        HttpResponseMessage? ok = null;
        for (var i = 0; i < 50 && ok?.StatusCode != HttpStatusCode.OK; i++)
        {
            ok?.Dispose();
            if (i > 0)
                await Task.Delay(200);
            ok = await cluster[0].Api.PostAsJsonAsync("api/v1/channels/down/messages", new { data = 2 });
        }
        Assert.Equal(HttpStatusCode.OK, ok!.StatusCode);
        Assert.Equal(1, (await ok.Content.ReadFromJsonAsync<System.Text.Json.JsonElement>()).GetProperty("offset").GetInt64());
        ok.Dispose();

        static async Task AdminAsync(string sql)
        {
            await using var admin = new NpgsqlConnection(PostgresTestServer.AdminConnectionString);
            await admin.OpenAsync();
            await using var cmd = new NpgsqlCommand(sql, admin);
            await cmd.ExecuteNonQueryAsync();
        }
    }

    // The other test of this class cuts every connection of this database: drop the dead idle ones it left in the pool.
    private void ClearStalePool()
    {
        using var stale = new NpgsqlConnection(fixture.ConnectionString);
        NpgsqlConnection.ClearPool(stale);
    }

    private static async Task TerminateAllAsync(string connectionString)
    {
        await using var admin = new NpgsqlConnection(connectionString);
        await admin.OpenAsync();
        await using var kill = new NpgsqlCommand("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()", admin);
        Assert.True((long)(await kill.ExecuteScalarAsync())! >= 2);
    }
}
