using System.Text.Json;
using Switchboard.Protocol;
using Switchboard.Server.Storage;
using Microsoft.Extensions.DependencyInjection;

namespace Switchboard.Server.Tests.Environments;

[Collection("Environments")]
public sealed class StatusAndLimitsTests
{
    [Fact]
    public async Task Status_socket_sends_current_status_every_change_and_metrics()
    {
        await using var gw = await EnvTestKit.StartAsync(o => o.MetricsInterval = TimeSpan.FromMilliseconds(200));
        var bus = gw.Services.GetRequiredService<IMessageBus>();
        var published = new List<string>();
        using var sub = bus.Subscribe("env:*", (m, _) =>
        {
            lock (published)
                published.Add(m.Topic + " " + JsonDocument.Parse(m.Payload).RootElement.GetProperty("status").GetString());
            return ValueTask.CompletedTask;
        });
        // Busy loop so CPU is visibly above zero.
        var e = await gw.CreateShAsync("watched", "while true; do :; done");
        var id = e.GetProperty("id").GetString()!;
        await using var socket = await gw.ConnectEnvAsync(id, "status");
        var first = await socket.ReceiveJsonAsync();
        Assert.Equal("status", first.GetProperty("type").GetString());
        Assert.Equal("running", first.GetProperty("status").GetString());

        var metrics = await socket.ReceiveTypeAsync("metrics");
        metrics = await socket.ReceiveTypeAsync("metrics");
        Assert.True(metrics.GetProperty("cpu").GetDouble() > 10, metrics.ToString());
        Assert.True(metrics.GetProperty("memory").GetInt64() > 0);
        Assert.True(metrics.GetProperty("memoryLimit").GetInt64() >= metrics.GetProperty("memory").GetInt64());
        Assert.True(metrics.GetProperty("network").GetProperty("rx").GetInt64() >= 0);
        Assert.True(metrics.TryGetProperty("timestamp", out _));

        await gw.Api.PostAsync($"api/v1/environments/{id}/stop", null);
        var stopped = await socket.ReceiveTypeAsync("status");
        Assert.Equal("stopped", stopped.GetProperty("status").GetString());
        var idle = await socket.ReceiveTypeAsync("metrics");
        Assert.Equal(0, idle.GetProperty("cpu").GetDouble());

        await gw.Api.PostAsync($"api/v1/environments/{id}/start", null);
        Assert.Equal("creating", (await socket.ReceiveTypeAsync("status")).GetProperty("status").GetString());
        Assert.Equal("running", (await socket.ReceiveTypeAsync("status")).GetProperty("status").GetString());
        lock (published)
            Assert.Contains($"env:{id}:status stopped", published);
    }

    [Fact]
    public async Task Close_codes_for_bad_token_unknown_environment_forbidden_and_bad_messages()
    {
        await using var gw = await EnvTestKit.StartAsync();
        var e = await gw.CreateShAsync("codes", "exec sleep 60");
        var id = e.GetProperty("id").GetString()!;

        foreach (var kind in new[] { "logs", "terminal", "status" })
        {
            await using (var bad = await gw.ConnectEnvAsync(id, kind, token: "not-a-jwt"))
                Assert.Equal(CloseCodes.Unauthorized, await bad.WaitForCloseAsync());
            await using (var unknown = await gw.ConnectEnvAsync("env_doesnotexist", kind))
                Assert.Equal(CloseCodes.NotFound, await unknown.WaitForCloseAsync());
            await using (var forbidden = await gw.ConnectEnvAsync(id, kind, token: gw.Token(envs: ["something-else"])))
                Assert.Equal(CloseCodes.Forbidden, await forbidden.WaitForCloseAsync());
        }
        // A token granting the name works for the id.
        await using (var byName = await gw.ConnectEnvAsync(id, "status", token: gw.Token(envs: ["codes"])))
            Assert.Equal("status", (await byName.ReceiveJsonAsync()).GetProperty("type").GetString());

        await using (var logs = await gw.ConnectEnvAsync(id, "logs"))
        {
            await logs.ReceiveTypeAsync("batch");
            await logs.SendTextAsync("""{"action":"explode"}""");
            Assert.Equal(CloseCodes.PolicyViolation, await logs.WaitForCloseAsync());
        }
        await using (var logs = await gw.ConnectEnvAsync(id, "logs"))
        {
            await logs.SendTextAsync("not json");
            Assert.Equal(CloseCodes.PolicyViolation, await logs.WaitForCloseAsync());
        }
        await using (var badQuery = await gw.ConnectEnvAsync(id, "logs", "&since=abc"))
            Assert.Equal(CloseCodes.PolicyViolation, await badQuery.WaitForCloseAsync());
        await using (var term = await gw.ConnectEnvAsync(id, "terminal"))
        {
            await term.ReceiveTypeAsync("ready");
            await term.SendTextAsync("""{"type":"resize","cols":0,"rows":5}""");
            Assert.Equal(CloseCodes.PolicyViolation, await term.WaitForCloseAsync());
        }
        await using (var status = await gw.ConnectEnvAsync(id, "status"))
        {
            await status.ReceiveTypeAsync("status");
            await status.SendTextAsync("{{{");
            Assert.Equal(CloseCodes.PolicyViolation, await status.WaitForCloseAsync());
        }

        // Deleting the environment closes its sockets with 4410 (do not reconnect).
        await using var watcher = await gw.ConnectEnvAsync(id, "status");
        await watcher.ReceiveTypeAsync("status");
        await gw.Api.DeleteAsync($"api/v1/environments/{id}");
        Assert.Equal(CloseCodes.ResourceClosed, await watcher.WaitForCloseAsync());
    }

    [Fact]
    public async Task At_most_ten_connections_per_environment()
    {
        await using var gw = await EnvTestKit.StartAsync();
        var e = await gw.CreateShAsync("popular", "exec sleep 60");
        var id = e.GetProperty("id").GetString()!;
        var other = (await gw.CreateShAsync("quiet", "exec sleep 60")).GetProperty("id").GetString()!;
        var open = new List<Infrastructure.TestSocket>();
        try
        {
            for (var i = 0; i < 10; i++)
            {
                var s = await gw.ConnectEnvAsync(id, i % 2 == 0 ? "status" : "logs", token: gw.Token(subject: "user" + i));
                await s.ReceiveJsonAsync();
                open.Add(s);
            }
            await using (var eleventh = await gw.ConnectEnvAsync(id, "status", token: gw.Token(subject: "another")))
                Assert.Equal(CloseCodes.TooManyRequests, await eleventh.WaitForCloseAsync());
            // Another environment is not affected.
            await using (var fine = await gw.ConnectEnvAsync(other, "status"))
                Assert.Equal("status", (await fine.ReceiveJsonAsync()).GetProperty("type").GetString());
            // A slot frees when a connection closes.
            await open[0].DisposeAsync();
            open.RemoveAt(0);
            await EnvTestKit.WaitUntilAsync(() => ((Server.Environments.EnvironmentManager)gw.Services.GetService(typeof(Server.Environments.EnvironmentManager))!)
                .FindAsync(id).AsTask().Result!.ConnectionCount < 10);
            await using var again = await gw.ConnectEnvAsync(id, "status");
            Assert.Equal("status", (await again.ReceiveJsonAsync()).GetProperty("type").GetString());
        }
        finally
        {
            foreach (var s in open)
                await s.DisposeAsync();
        }
    }
}
