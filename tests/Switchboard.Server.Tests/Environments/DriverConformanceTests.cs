using System.Net;
using System.Net.Http.Json;
using System.Text;
using System.Text.Json;
using Microsoft.Extensions.DependencyInjection;
using Switchboard.Server.Environments;
using Switchboard.Server.Tests.Infrastructure;

namespace Switchboard.Server.Tests.Environments;

/// <summary>
/// The behaviour every driver must have, run against each one: lifecycle and exit codes, logs (history, live, resume
/// with <c>since</c>, stdout/stderr), terminals, status and metrics, and nothing left behind on delete or shutdown.
/// Scripts are plain POSIX sh so they run the same on the host and in the busybox test image.
/// </summary>
public abstract class DriverConformanceTests
{
    protected abstract string Driver { get; }

    protected abstract void Configure(EnvironmentOptions options);

    /// <summary>The workload of an environment no longer exists (no process, no container).</summary>
    protected abstract Task AssertNothingLeftAsync(TestGateway gateway, string id, JsonElement lastInfo);

    protected Task<TestGateway> StartAsync(Action<EnvironmentOptions>? configure = null, string? dataDir = null) =>
        EnvTestKit.StartAsync(o =>
        {
            Configure(o);
            configure?.Invoke(o);
        }, dataDir: dataDir);

    protected virtual object CreateBody(string name, string script, bool start) => new
    {
        name,
        driver = Driver,
        command = "/bin/sh",
        args = new[] { "-c", script },
        env = new Dictionary<string, string> { ["GREETING"] = "hello" },
        cwd = "/tmp",
        start,
    };

    protected async Task<JsonElement> CreateAsync(TestGateway gateway, string name, string script, bool start = true)
    {
        var response = await gateway.Api.PostAsJsonAsync("api/v1/environments", CreateBody(name, script, start));
        var body = await response.Content.ReadAsStringAsync();
        Assert.True(response.StatusCode == HttpStatusCode.Created, body);
        var e = JsonDocument.Parse(body).RootElement;
        Assert.Equal(Driver, e.GetProperty("driver").GetString());
        return e;
    }

    private static async Task<JsonElement> PostAsync(TestGateway gateway, string path)
    {
        var response = await gateway.Api.PostAsync(path, null);
        var body = await response.Content.ReadAsStringAsync();
        Assert.True(response.IsSuccessStatusCode, body);
        return JsonDocument.Parse(body).RootElement;
    }

    [Fact]
    public async Task Lifecycle_stop_start_restart_exit_code_and_delete()
    {
        await using var gw = await StartAsync();
        var created = await CreateAsync(gw, "svc", "echo started; exec sleep 30");
        var id = created.GetProperty("id").GetString()!;
        Assert.Equal("running", created.GetProperty("status").GetString());
        // Each start prints one line; wait for it before stopping, or a loaded machine may stop the shell before its echo.
        await EnvTestKit.WaitUntilAsync(() => gw.GetEnvAsync(id).Result.GetProperty("lastSeq").GetInt64() == 1);

        var stopped = await PostAsync(gw, $"api/v1/environments/{id}/stop");
        Assert.Equal("stopped", stopped.GetProperty("status").GetString());
        Assert.Equal(128 + 15, stopped.GetProperty("exitCode").GetInt32()); // SIGTERM

        var started = await PostAsync(gw, $"api/v1/environments/{id}/start");
        Assert.Equal("running", started.GetProperty("status").GetString());
        await EnvTestKit.WaitUntilAsync(() => gw.GetEnvAsync(id).Result.GetProperty("lastSeq").GetInt64() == 2);
        var restarted = await PostAsync(gw, $"api/v1/environments/{id}/restart");
        Assert.Equal("running", restarted.GetProperty("status").GetString());
        Assert.NotEqual(started.GetProperty("startedAt").GetString(), restarted.GetProperty("startedAt").GetString());
        // Every start logged its line: three starts, three lines.
        await EnvTestKit.WaitUntilAsync(() => gw.GetEnvAsync(id).Result.GetProperty("lastSeq").GetInt64() == 3);

        var exits = await CreateAsync(gw, "exits", "echo bye; exit 7");
        var done = await gw.WaitStatusAsync(exits.GetProperty("id").GetString()!, "exited");
        Assert.Equal(7, done.GetProperty("exitCode").GetInt32());

        var idle = await CreateAsync(gw, "idle", "exit 0", start: false);
        Assert.Equal("stopped", idle.GetProperty("status").GetString());

        var beforeDelete = await gw.GetEnvAsync(id);
        Assert.Equal(HttpStatusCode.NoContent, (await gw.Api.DeleteAsync($"api/v1/environments/{id}")).StatusCode);
        Assert.Equal(HttpStatusCode.NotFound, (await gw.Api.GetAsync($"api/v1/environments/{id}")).StatusCode);
        await AssertNothingLeftAsync(gw, id, beforeDelete);
        // An exited environment is cleaned up on delete too.
        var exitedId = exits.GetProperty("id").GetString()!;
        Assert.Equal(HttpStatusCode.NoContent, (await gw.Api.DeleteAsync($"api/v1/environments/{exitedId}")).StatusCode);
        await AssertNothingLeftAsync(gw, exitedId, done);
    }

    [Fact]
    public async Task Logs_history_live_and_resume_with_since_keep_streams_apart_with_no_gap_or_duplicate()
    {
        await using var gw = await StartAsync();
        // 20 lines at once, then 60 more slowly; every 5th line goes to stderr.
        var e = await CreateAsync(gw, "counter",
            "i=1; while [ $i -le 80 ]; do if [ $((i % 5)) -eq 0 ]; then echo line$i >&2; else echo line$i; fi; " +
            "[ $i -eq 20 ] && sleep 1; [ $i -gt 20 ] && sleep 0.03; i=$((i+1)); done; echo \"$GREETING done in $(pwd)\"; exec sleep 60");
        var id = e.GetProperty("id").GetString()!;
        await EnvTestKit.WaitUntilAsync(() => gw.GetEnvAsync(id).Result.GetProperty("lastSeq").GetInt64() >= 20);

        var first = new List<SeenLine>();
        await using (var a = await gw.ConnectEnvAsync(id, "logs"))
        {
            var history = await a.ReceiveTypeAsync("batch");
            Assert.False(history.GetProperty("live").GetBoolean());
            EnvTestKit.Collect(history, first);
            // The burst of 20 at least; more when the connect came late (a loaded CI machine once took 1.5 s: 37),
            // but never the whole run, so live lines follow the history.
            Assert.InRange(first.Count, 20, 79);
            await a.ReadLinesUntilAsync(l => l.Count >= 40, first); // live lines
        }
        var resumeAfter = first[^1].Seq;
        await EnvTestKit.WaitUntilAsync(() => gw.GetEnvAsync(id).Result.GetProperty("lastSeq").GetInt64() == 81, TimeSpan.FromSeconds(15));
        await using var b = await gw.ConnectEnvAsync(id, "logs", $"&since={resumeAfter}");
        var second = await b.ReadLinesUntilAsync(l => l.Count > 0 && l[^1].Seq >= 81);

        var all = first.Concat(second).ToList();
        for (var i = 1; i < all.Count; i++)
            Assert.Equal(all[i - 1].Seq + 1, all[i].Seq); // contiguous across the reconnect
        Assert.Equal(1, all[0].Seq);
        Assert.Equal(81, all[^1].Seq);
        Assert.Equal("hello done in /tmp", all[^1].Message);
        var numbered = all.Where(l => l.Message.StartsWith("line", StringComparison.Ordinal)).ToList();
        Assert.Equal(Enumerable.Range(1, 80).Select(i => "line" + i).Order(), numbered.Select(l => l.Message).Order());
        Assert.All(numbered, l => Assert.Equal(int.Parse(l.Message[4..]) % 5 == 0 ? "stderr" : "stdout", l.Stream));
        // Within one stream the order is the order of writing.
        var stdout = numbered.Where(l => l.Stream == "stdout").Select(l => int.Parse(l.Message[4..])).ToList();
        Assert.Equal(stdout.Order(), stdout);
    }

    private static async Task<string> ReadOutputUntilAsync(TestSocket socket, string expected, StringBuilder output)
    {
        while (!output.ToString().Contains(expected, StringComparison.Ordinal))
        {
            var m = await socket.ReceiveJsonAsync();
            if (m.GetProperty("type").GetString() == "output")
                output.Append(m.GetProperty("data").GetString());
        }
        return output.ToString();
    }

    [Fact]
    public async Task Terminal_runs_commands_sees_resizes_reports_exit_code_and_closing_ends_its_processes()
    {
        await using var gw = await StartAsync();
        var e = await CreateAsync(gw, "term", "exec sleep 60");
        var id = e.GetProperty("id").GetString()!;
        await using (var socket = await gw.ConnectEnvAsync(id, "terminal", "&cmd=/bin/sh&cols=100&rows=30"))
        {
            Assert.Equal("ready", (await socket.ReceiveJsonAsync()).GetProperty("type").GetString());
            var output = new StringBuilder();
            await socket.SendJsonAsync(new { type = "input", data = "echo $((40+2))\r" });
            await ReadOutputUntilAsync(socket, "42\r\n", output);
            await socket.SendJsonAsync(new { type = "input", data = "echo \"$GREETING:$TERM\"\r" });
            await ReadOutputUntilAsync(socket, "hello:xterm-256color", output);
            await socket.SendJsonAsync(new { type = "input", data = "stty size\r" });
            await ReadOutputUntilAsync(socket, "30 100", output);
            await socket.SendJsonAsync(new { type = "resize", cols = 123, rows = 45 });
            await socket.SendJsonAsync(new { type = "input", data = "stty size\r" });
            await ReadOutputUntilAsync(socket, "45 123", output);
            await socket.SendJsonAsync(new { type = "input", data = "exit 3\r" });
            var exit = await socket.ReceiveTypeAsync("exit");
            Assert.Equal(3, exit.GetProperty("code").GetInt32());
            Assert.Equal(1000, await socket.WaitForCloseAsync());
        }

        // Closing the socket ends the shell and what it started in the background; another terminal is unaffected.
        var marker = "4" + Random.Shared.Next(10000, 99999);
        await using var one = await gw.ConnectEnvAsync(id, "terminal", "&cmd=/bin/sh");
        await using var two = await gw.ConnectEnvAsync(id, "terminal", "&cmd=/bin/sh");
        await one.ReceiveTypeAsync("ready");
        await two.ReceiveTypeAsync("ready");
        await one.SendJsonAsync(new { type = "input", data = $"sleep {marker} & echo started$((1+1))\r" });
        await ReadOutputUntilAsync(one, "started2", new StringBuilder());
        await EnvTestKit.WaitUntilAsync(() => EnvTestKit.FindProcesses($"sleep {marker}").Count == 1, because: "the background job runs");
        await one.Socket.CloseAsync(System.Net.WebSockets.WebSocketCloseStatus.NormalClosure, "bye", CancellationToken.None);
        await EnvTestKit.WaitUntilAsync(() => EnvTestKit.FindProcesses($"sleep {marker}").Count == 0, TimeSpan.FromSeconds(5), "the closed terminal's job ends");
        await two.SendJsonAsync(new { type = "input", data = "echo still$((3+3))\r" });
        await ReadOutputUntilAsync(two, "still6", new StringBuilder());
    }

    [Fact]
    public async Task Terminal_client_that_does_not_read_pauses_the_shell_instead_of_buffering()
    {
        await using var gw = await StartAsync(o => o.TerminalFlowControlBytes = 64 * 1024);
        var e = await CreateAsync(gw, "chatty", "exec sleep 60");
        await using var socket = await gw.ConnectEnvAsync(e.GetProperty("id").GetString()!, "terminal", "&cmd=/bin/sh");
        await socket.ReceiveTypeAsync("ready");
        var marker = Random.Shared.Next(100000, 999999);
        // Through env so that busybox runs yes as its own process (a shell may run applets in-process).
        await socket.SendJsonAsync(new { type = "input", data = $"env yes {marker}\r" });
        var pid = 0;
        await EnvTestKit.WaitUntilAsync(() => EnvTestKit.FindProcesses($"yes {marker}") is [var p] && (pid = p) > 0);
        // Unless the gateway stops reading, the writer never blocks (and the connection would hit 4008 or memory grow).
        static long Ticks(int pid)
        {
            var f = File.ReadAllText($"/proc/{pid}/stat").Split(") ")[1].Split(' ');
            return long.Parse(f[11]) + long.Parse(f[12]);
        }
        var blocked = false;
        var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(20);
        while (!blocked && DateTime.UtcNow < deadline)
        {
            var before = Ticks(pid);
            await Task.Delay(500);
            blocked = Ticks(pid) == before;
        }
        Assert.True(blocked, "yes kept running: the gateway kept reading for a client that does not read");
        Assert.Equal(System.Net.WebSockets.WebSocketState.Open, socket.Socket.State);
        Assert.Equal("output", (await socket.ReceiveJsonAsync()).GetProperty("type").GetString()); // reading resumes the flow
    }

    [Fact]
    public async Task Status_socket_sends_status_changes_and_metrics()
    {
        await using var gw = await StartAsync(o => o.MetricsInterval = TimeSpan.FromMilliseconds(300));
        var e = await CreateAsync(gw, "busy", "while true; do :; done");
        var id = e.GetProperty("id").GetString()!;
        await using var socket = await gw.ConnectEnvAsync(id, "status");
        var first = await socket.ReceiveJsonAsync();
        Assert.Equal("status", first.GetProperty("type").GetString());
        Assert.Equal("running", first.GetProperty("status").GetString());

        await socket.ReceiveTypeAsync("metrics");
        var metrics = await socket.ReceiveTypeAsync("metrics");
        Assert.True(metrics.GetProperty("cpu").GetDouble() > 10, metrics.ToString());
        Assert.True(metrics.GetProperty("memory").GetInt64() > 0, metrics.ToString());
        Assert.True(metrics.GetProperty("memoryLimit").GetInt64() >= metrics.GetProperty("memory").GetInt64(), metrics.ToString());
        Assert.True(metrics.GetProperty("network").GetProperty("rx").GetInt64() >= 0);

        await gw.Api.PostAsync($"api/v1/environments/{id}/stop", null);
        var stopped = await socket.ReceiveTypeAsync("status");
        Assert.Equal("stopped", stopped.GetProperty("status").GetString());
        Assert.Equal(128 + 15, stopped.GetProperty("exitCode").GetInt32());
        var idle = await socket.ReceiveTypeAsync("metrics");
        Assert.Equal(0, idle.GetProperty("cpu").GetDouble());

        await gw.Api.PostAsync($"api/v1/environments/{id}/start", null);
        Assert.Equal("creating", (await socket.ReceiveTypeAsync("status")).GetProperty("status").GetString());
        Assert.Equal("running", (await socket.ReceiveTypeAsync("status")).GetProperty("status").GetString());
    }

    [Fact]
    public async Task Gateway_shutdown_leaves_nothing_behind()
    {
        var gw = await StartAsync();
        JsonElement info;
        string id;
        try
        {
            var e = await CreateAsync(gw, "lingering", "trap '' TERM; echo up; while true; do sleep 0.1; done");
            id = e.GetProperty("id").GetString()!;
            await EnvTestKit.WaitUntilAsync(() => gw.GetEnvAsync(id).Result.GetProperty("lastSeq").GetInt64() >= 1);
            info = await gw.GetEnvAsync(id);
        }
        finally
        {
            await gw.App.StopAsync();
            await gw.App.DisposeAsync();
            gw.Http.Dispose();
        }
        await AssertNothingLeftAsync(gw, id, info);
    }
}

/// <summary>The conformance tests against the <c>process</c> driver.</summary>
[Collection("Environments")]
public sealed class ProcessDriverConformanceTests : DriverConformanceTests
{
    protected override string Driver => "process";

    protected override void Configure(EnvironmentOptions options)
    {
    }

    protected override Task AssertNothingLeftAsync(TestGateway gateway, string id, JsonElement lastInfo)
    {
        if (lastInfo.TryGetProperty("pid", out var pid) && pid.ValueKind == JsonValueKind.Number)
            return EnvTestKit.WaitUntilAsync(() => !EnvTestKit.ProcessExists(pid.GetInt32()), TimeSpan.FromSeconds(5), "the process is gone");
        return Task.CompletedTask;
    }
}

/// <summary>
/// The conformance tests against the <c>docker</c> driver on a real Docker-compatible engine: the unix socket in
/// <c>SWITCHBOARD_TEST_DOCKER_HOST</c> (test.sh starts podman's API service there) with the local busybox image.
/// </summary>
[Collection("Environments")] // serial with the flood tests, which measure timing
public sealed class DockerDriverConformanceTests : DriverConformanceTests
{
    public const string Image = "localhost/switchboard-test:latest";

    public static string Host
    {
        get
        {
            var host = Environment.GetEnvironmentVariable("SWITCHBOARD_TEST_DOCKER_HOST");
            if (string.IsNullOrEmpty(host))
                Assert.Fail("SWITCHBOARD_TEST_DOCKER_HOST is not set: run ./test.sh, whose scripts/test-deps.sh starts podman's Docker API service");
            return host;
        }
    }

    protected override string Driver => "docker";

    protected override void Configure(EnvironmentOptions options) => options.DockerHost = Host;

    protected override object CreateBody(string name, string script, bool start) => new
    {
        name,
        driver = "docker",
        image = Image,
        command = "/bin/sh",
        args = new[] { "-c", script },
        env = new Dictionary<string, string> { ["GREETING"] = "hello" },
        cwd = "/tmp",
        start,
    };

    /// <summary>Containers of an environment, asked from the engine itself.</summary>
    internal static async Task<IReadOnlyList<ContainerSummary>> ContainersAsync(string environmentId)
    {
        using var engine = new DockerEngine(Host);
        return await engine.ListContainersAsync(DockerEngine.EnvironmentLabel + "=" + environmentId, CancellationToken.None);
    }

    protected override async Task AssertNothingLeftAsync(TestGateway gateway, string id, JsonElement lastInfo)
    {
        Assert.Empty(await ContainersAsync(id));
        if (lastInfo.TryGetProperty("pid", out var pid) && pid.ValueKind == JsonValueKind.Number)
            Assert.False(EnvTestKit.ProcessExists(pid.GetInt32()));
    }

    [Fact]
    public async Task Containers_are_labelled_one_per_environment_and_a_missing_image_fails_without_pulling()
    {
        await using var gw = await StartAsync();
        var e = await CreateAsync(gw, "labelled", "exec sleep 60");
        var id = e.GetProperty("id").GetString()!;
        var container = Assert.Single(await ContainersAsync(id));
        Assert.Equal("running", container.State);
        Assert.Equal("labelled", container.Labels![DockerEngine.NameLabel]);
        Assert.True(e.GetProperty("pid").GetInt32() > 0);
        await gw.Api.PostAsync($"api/v1/environments/{id}/restart", null);
        var replaced = Assert.Single(await ContainersAsync(id)); // the old container was removed
        Assert.NotEqual(container.Id, replaced.Id);

        var response = await gw.Api.PostAsJsonAsync("api/v1/environments", new { name = "ghost", driver = "docker", image = "localhost/no-such-image:never" });
        var ghost = JsonDocument.Parse(await response.Content.ReadAsStringAsync()).RootElement;
        Assert.Equal("failed", ghost.GetProperty("status").GetString());
        Assert.Contains("does not pull", ghost.GetProperty("error").GetString());
        Assert.Empty(await ContainersAsync(ghost.GetProperty("id").GetString()!));
    }

    [Fact]
    public async Task Terminal_defaults_to_a_shell_present_in_the_image_and_needs_a_running_container()
    {
        await using var gw = await StartAsync();
        var e = await CreateAsync(gw, "shells", "exec sleep 60");
        var id = e.GetProperty("id").GetString()!;
        await using (var socket = await gw.ConnectEnvAsync(id, "terminal"))
        {
            await socket.ReceiveTypeAsync("ready");
            // The image has no bash: the default falls back to /bin/sh.
            await socket.SendJsonAsync(new { type = "input", data = "echo $0-$((6*7))\r" });
            var output = new StringBuilder();
            await ReadAsync(socket, "/bin/sh-42", output);
        }
        await gw.Api.PostAsync($"api/v1/environments/{id}/stop", null);
        await using var refused = await gw.ConnectEnvAsync(id, "terminal");
        var error = await refused.ReceiveTypeAsync("error");
        Assert.Contains("not running", error.GetProperty("data").GetString());
        Assert.Equal(1011, await refused.WaitForCloseAsync());
    }

    [Fact]
    public async Task Unreachable_engines_are_reported_and_only_unix_sockets_are_accepted()
    {
        using var missing = new DockerEngine("unix:///nonexistent/docker.sock");
        var ex = await Assert.ThrowsAsync<DockerException>(() => missing.PingAsync(CancellationToken.None));
        Assert.Contains("not reachable", ex.Message);
        Assert.Throws<ArgumentException>(() => new DockerEngine("tcp://127.0.0.1:2375"));

        // A configured but unreachable engine: the environment fails with the reason instead of hanging.
        await using var gw = await EnvTestKit.StartAsync(o => o.DockerHost = "unix:///nonexistent/docker.sock");
        var response = await gw.Api.PostAsJsonAsync("api/v1/environments", new { name = "nowhere", driver = "docker", image = Image });
        var e = JsonDocument.Parse(await response.Content.ReadAsStringAsync()).RootElement;
        Assert.Equal("failed", e.GetProperty("status").GetString());
        Assert.Contains("not reachable", e.GetProperty("error").GetString());
    }

    private static async Task ReadAsync(TestSocket socket, string expected, StringBuilder output)
    {
        while (!output.ToString().Contains(expected, StringComparison.Ordinal))
        {
            var m = await socket.ReceiveJsonAsync();
            if (m.GetProperty("type").GetString() == "output")
                output.Append(m.GetProperty("data").GetString());
        }
    }
}
