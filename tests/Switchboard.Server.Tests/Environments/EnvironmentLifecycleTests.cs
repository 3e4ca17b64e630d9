using System.Net;
using System.Net.Http.Headers;
using System.Net.Http.Json;
using System.Text.Json;
using Microsoft.Extensions.DependencyInjection;
using Switchboard.Server.Tests.Infrastructure;

namespace Switchboard.Server.Tests.Environments;

[Collection("Environments")]
public sealed class EnvironmentLifecycleTests
{
    [Fact]
    public async Task Create_list_get_stop_start_restart_delete()
    {
        await using var gw = await EnvTestKit.StartAsync();
        var created = await gw.CreateShAsync("svc", "echo started; exec sleep 30");
        var id = created.GetProperty("id").GetString()!;
        Assert.StartsWith("env_", id);
        Assert.Equal("running", created.GetProperty("status").GetString());
        var pid = created.GetProperty("pid").GetInt32();
        Assert.True(EnvTestKit.ProcessExists(pid));

        var list = JsonDocument.Parse(await gw.Api.GetStringAsync("api/v1/environments")).RootElement.GetProperty("environments");
        Assert.Equal("svc", Assert.Single(list.EnumerateArray()).GetProperty("name").GetString());
        Assert.Equal(id, (await gw.GetEnvAsync("svc")).GetProperty("id").GetString()); // by name too

        var stopped = JsonDocument.Parse(await (await gw.Api.PostAsync($"api/v1/environments/{id}/stop", null)).Content.ReadAsStringAsync()).RootElement;
        Assert.Equal("stopped", stopped.GetProperty("status").GetString());
        Assert.Equal(128 + 15, stopped.GetProperty("exitCode").GetInt32()); // SIGTERM
        Assert.False(EnvTestKit.ProcessExists(pid));

        var started = JsonDocument.Parse(await (await gw.Api.PostAsync($"api/v1/environments/{id}/start", null)).Content.ReadAsStringAsync()).RootElement;
        Assert.Equal("running", started.GetProperty("status").GetString());
        var pid2 = started.GetProperty("pid").GetInt32();
        var restarted = JsonDocument.Parse(await (await gw.Api.PostAsync($"api/v1/environments/{id}/restart", null)).Content.ReadAsStringAsync()).RootElement;
        Assert.Equal("running", restarted.GetProperty("status").GetString());
        Assert.NotEqual(pid2, restarted.GetProperty("pid").GetInt32());
        Assert.False(EnvTestKit.ProcessExists(pid2));

        Assert.Equal(HttpStatusCode.NoContent, (await gw.Api.DeleteAsync($"api/v1/environments/{id}")).StatusCode);
        Assert.False(EnvTestKit.ProcessExists(restarted.GetProperty("pid").GetInt32()));
        Assert.Equal(HttpStatusCode.NotFound, (await gw.Api.GetAsync($"api/v1/environments/{id}")).StatusCode);
    }

    [Fact]
    public async Task Exit_code_is_reported_and_start_false_does_not_start()
    {
        await using var gw = await EnvTestKit.StartAsync();
        var e = await gw.CreateShAsync("exits", "exit 7");
        var done = await gw.WaitStatusAsync(e.GetProperty("id").GetString()!, "exited");
        Assert.Equal(7, done.GetProperty("exitCode").GetInt32());

        var idle = await gw.CreateShAsync("idle", "exit 0", start: false);
        Assert.Equal("stopped", idle.GetProperty("status").GetString());
        Assert.False(idle.TryGetProperty("pid", out _));
    }

    [Fact]
    public async Task Stop_escalates_to_sigkill_after_the_grace_period()
    {
        await using var gw = await EnvTestKit.StartAsync(o => o.StopGracePeriod = TimeSpan.FromMilliseconds(300));
        var e = await gw.CreateShAsync("stubborn", "trap '' TERM; echo ready; while true; do sleep 0.05; done");
        var id = e.GetProperty("id").GetString()!;
        await using (var logs = await gw.ConnectEnvAsync(id, "logs"))
            await logs.ReadLinesUntilAsync(l => l.Any(x => x.Message == "ready"));
        var started = System.Diagnostics.Stopwatch.StartNew();
        var stopped = JsonDocument.Parse(await (await gw.Api.PostAsync($"api/v1/environments/{id}/stop", null)).Content.ReadAsStringAsync()).RootElement;
        Assert.Equal("stopped", stopped.GetProperty("status").GetString());
        Assert.Equal(128 + 9, stopped.GetProperty("exitCode").GetInt32());
        Assert.InRange(started.Elapsed, TimeSpan.FromMilliseconds(250), TimeSpan.FromSeconds(5));
    }

    [Fact]
    public async Task Bad_working_directory_fails_and_env_and_cwd_are_applied()
    {
        await using var gw = await EnvTestKit.StartAsync();
        var bad = await gw.CreateShAsync("bad", "true", cwd: "/nonexistent-dir-xyz");
        Assert.Equal("failed", bad.GetProperty("status").GetString());
        Assert.Contains("does not exist", bad.GetProperty("error").GetString());

        var dir = Directory.CreateTempSubdirectory("sb-env-cwd").FullName;
        try
        {
            var e = await gw.CreateShAsync("vars", "echo \"$GREETING from $(pwd)\"", env: new() { ["GREETING"] = "hello" }, cwd: dir);
            await using var logs = await gw.ConnectEnvAsync(e.GetProperty("id").GetString()!, "logs");
            var lines = await logs.ReadLinesUntilAsync(l => l.Count >= 1);
            Assert.Equal($"hello from {dir}", lines[0].Message);
        }
        finally
        {
            Directory.Delete(dir, true);
        }
    }

    [Fact]
    public async Task Rest_needs_api_key_or_a_granting_token()
    {
        await using var gw = await EnvTestKit.StartAsync();
        var e = await gw.CreateShAsync("granted", "exec sleep 30");
        var id = e.GetProperty("id").GetString()!;
        await gw.CreateShAsync("other", "exec sleep 30");

        Assert.Equal(HttpStatusCode.Unauthorized, (await gw.Http.GetAsync("api/v1/environments")).StatusCode);
        using var limited = new HttpClient { BaseAddress = gw.BaseUri };
        limited.DefaultRequestHeaders.Authorization = new AuthenticationHeaderValue("Bearer", gw.Token(envs: ["granted"]));
        var list = JsonDocument.Parse(await limited.GetStringAsync("api/v1/environments")).RootElement.GetProperty("environments");
        Assert.Equal("granted", Assert.Single(list.EnumerateArray()).GetProperty("name").GetString());
        Assert.Equal(HttpStatusCode.OK, (await limited.GetAsync($"api/v1/environments/{id}")).StatusCode);
        Assert.Equal(HttpStatusCode.Forbidden, (await limited.GetAsync("api/v1/environments/other")).StatusCode);
        Assert.Equal(HttpStatusCode.Forbidden, (await limited.PostAsJsonAsync("api/v1/environments", new { name = "new1", command = "true" })).StatusCode);
        using var byId = new HttpClient { BaseAddress = gw.BaseUri };
        byId.DefaultRequestHeaders.Authorization = new AuthenticationHeaderValue("Bearer", gw.Token(envs: [id]));
        Assert.Equal(HttpStatusCode.OK, (await byId.PostAsync($"api/v1/environments/{id}/stop", null)).StatusCode);

        Assert.Equal(HttpStatusCode.Conflict, (await gw.Api.PostAsJsonAsync("api/v1/environments", new { name = "granted", command = "true" })).StatusCode);
        Assert.Equal(HttpStatusCode.BadRequest, (await gw.Api.PostAsJsonAsync("api/v1/environments", new { name = "no command" })).StatusCode);
    }

    [Fact]
    public async Task Gateway_shutdown_leaves_no_process_behind_and_definitions_and_seq_survive_restart()
    {
        var dataDir = Path.Combine(Path.GetTempPath(), "switchboard-tests", Guid.NewGuid().ToString("N"));
        var marker = "sleep 300." + Random.Shared.Next(100000, 999999);
        string id;
        long lastSeq;
        var gw = await EnvTestKit.StartAsync(dataDir: dataDir);
        try
        {
            // A child and a grandchild that ignores SIGTERM: both must be gone after shutdown.
            var e = await gw.CreateShAsync("tree", $"echo one; echo two; (trap '' TERM; {marker}; true) & {marker}");
            id = e.GetProperty("id").GetString()!;
            await EnvTestKit.WaitUntilAsync(() => EnvTestKit.FindProcesses(marker).Count == 2, because: "both processes start");
            await using (var logs = await gw.ConnectEnvAsync(id, "logs"))
                await logs.ReadLinesUntilAsync(l => l.Count >= 2);
            await Task.Delay(300); // let the persister write
            lastSeq = (await gw.GetEnvAsync(id)).GetProperty("lastSeq").GetInt64();
        }
        finally
        {
            await gw.App.StopAsync();
            await gw.App.DisposeAsync();
            gw.Http.Dispose();
        }
        await EnvTestKit.WaitUntilAsync(() => EnvTestKit.FindProcesses(marker).Count == 0, TimeSpan.FromSeconds(5), "no orphan after shutdown");

        await using var again = await EnvTestKit.StartAsync(dataDir: dataDir);
        var restored = await again.GetEnvAsync(id);
        Assert.Equal("tree", restored.GetProperty("name").GetString());
        Assert.Equal("stopped", restored.GetProperty("status").GetString());
        // One node: a new node id at every start, and the node takes every environment of its store.
        Assert.Equal(again.Services.GetRequiredService<Switchboard.Server.Nodes.INodeRegistry>().NodeId, restored.GetProperty("node").GetString());
        Assert.Equal(2, lastSeq);
        Assert.Equal(lastSeq, restored.GetProperty("lastSeq").GetInt64());
        await using var history = await again.ConnectEnvAsync(id, "logs");
        var batch = await history.ReceiveTypeAsync("batch");
        Assert.Equal(["one", "two"], batch.GetProperty("logs").EnumerateArray().Select(l => l.GetProperty("message").GetString()));
    }
}
