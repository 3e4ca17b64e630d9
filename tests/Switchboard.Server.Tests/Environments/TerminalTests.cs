using System.Text;
using System.Text.Json;
using Switchboard.Server.Tests.Infrastructure;

namespace Switchboard.Server.Tests.Environments;

[Collection("Environments")]
public sealed class TerminalTests
{
    private static Task SendInputAsync(TestSocket socket, string data) => socket.SendJsonAsync(new { type = "input", data });

    /// <summary>Reads output until it contains <paramref name="expected"/>; returns everything read.</summary>
    private static async Task<string> ReadOutputUntilAsync(TestSocket socket, string expected, StringBuilder? output = null)
    {
        output ??= new StringBuilder();
        while (!output.ToString().Contains(expected, StringComparison.Ordinal))
        {
            var m = await socket.ReceiveJsonAsync();
            if (m.GetProperty("type").GetString() == "output")
                output.Append(m.GetProperty("data").GetString());
        }
        return output.ToString();
    }

    [Fact]
    public async Task Shell_runs_commands_sees_resizes_and_reports_its_exit_code()
    {
        await using var gw = await EnvTestKit.StartAsync();
        var dir = Directory.CreateTempSubdirectory("sb-term").FullName;
        try
        {
            var e = await gw.CreateShAsync("term", "exec sleep 60", env: new() { ["PROJECT"] = "switchboard" }, cwd: dir);
            await using var socket = await gw.ConnectEnvAsync(e.GetProperty("id").GetString()!, "terminal");
            Assert.Equal("ready", (await socket.ReceiveJsonAsync()).GetProperty("type").GetString());
            await SendInputAsync(socket, "echo $((40+2))\r");
            await ReadOutputUntilAsync(socket, "42\r\n");
            await SendInputAsync(socket, "echo \"$PROJECT:$(pwd):$TERM\"\r");
            await ReadOutputUntilAsync(socket, $"switchboard:{dir}:xterm-256color");

            await socket.SendJsonAsync(new { type = "resize", cols = 123, rows = 45 });
            await SendInputAsync(socket, "stty size\r");
            await ReadOutputUntilAsync(socket, "45 123");

            await SendInputAsync(socket, "exit 3\r");
            JsonElement exit;
            do
                exit = await socket.ReceiveJsonAsync();
            while (exit.GetProperty("type").GetString() != "exit");
            Assert.Equal(3, exit.GetProperty("code").GetInt32());
            Assert.Equal(1000, await socket.WaitForCloseAsync());
        }
        finally
        {
            Directory.Delete(dir, true);
        }
    }

    [Fact]
    public async Task Closing_the_socket_ends_the_shell_and_its_children_and_several_terminals_coexist()
    {
        await using var gw = await EnvTestKit.StartAsync();
        var e = await gw.CreateShAsync("multi", "exec sleep 60");
        var id = e.GetProperty("id").GetString()!;
        var marker = "sleep 400." + Random.Shared.Next(100000, 999999);
        await using var one = await gw.ConnectEnvAsync(id, "terminal", "&cmd=/bin/sh");
        await using var two = await gw.ConnectEnvAsync(id, "terminal");
        Assert.Equal("ready", (await one.ReceiveJsonAsync()).GetProperty("type").GetString());
        Assert.Equal("ready", (await two.ReceiveJsonAsync()).GetProperty("type").GetString());
        await SendInputAsync(one, $"{marker} & echo started$((1+1))\r");
        await ReadOutputUntilAsync(one, "started2");
        await SendInputAsync(two, "echo two$((2+2))\r");
        await ReadOutputUntilAsync(two, "two4");
        await EnvTestKit.WaitUntilAsync(() => EnvTestKit.FindProcesses(marker).Count == 1);

        await one.Socket.CloseAsync(System.Net.WebSockets.WebSocketCloseStatus.NormalClosure, "bye", CancellationToken.None);
        await EnvTestKit.WaitUntilAsync(() => EnvTestKit.FindProcesses(marker).Count == 0, TimeSpan.FromSeconds(5), "background job of the closed terminal ends");
        // The other terminal is unaffected.
        await SendInputAsync(two, "echo still$((3+3))\r");
        await ReadOutputUntilAsync(two, "still6");
    }

    [Fact]
    public async Task Idle_terminals_are_ended_and_disallowed_commands_are_refused()
    {
        await using var gw = await EnvTestKit.StartAsync(o => o.TerminalIdleTimeout = TimeSpan.FromMilliseconds(500));
        var e = await gw.CreateShAsync("idle", "exec sleep 60");
        var id = e.GetProperty("id").GetString()!;
        await using var idle = await gw.ConnectEnvAsync(id, "terminal");
        Assert.Equal("ready", (await idle.ReceiveJsonAsync()).GetProperty("type").GetString());
        Assert.Equal(1000, await idle.WaitForCloseAsync(TimeSpan.FromSeconds(5)));

        await using var refused = await gw.ConnectEnvAsync(id, "terminal", "&cmd=/usr/bin/python3");
        Assert.Equal(1008, await refused.WaitForCloseAsync());
    }

    [Fact]
    public async Task A_client_that_does_not_read_pauses_the_shell_instead_of_buffering()
    {
        await using var gw = await EnvTestKit.StartAsync(o => o.TerminalFlowControlBytes = 64 * 1024);
        var e = await gw.CreateShAsync("chatty", "exec sleep 60");
        await using var socket = await gw.ConnectEnvAsync(e.GetProperty("id").GetString()!, "terminal");
        Assert.Equal("ready", (await socket.ReceiveJsonAsync()).GetProperty("type").GetString());
        var marker = Random.Shared.Next(100000, 999999);
        // yes never stops; unless the gateway stops reading, the connection would hit 4008 or memory would grow.
        await SendInputAsync(socket, $"yes {marker}\r");
        int pid = 0;
        await EnvTestKit.WaitUntilAsync(() => EnvTestKit.FindProcesses($"yes {marker}") is [var p] && (pid = p) > 0);
        // The writer ends up blocked on the full PTY: its CPU time stops advancing while the socket stays open.
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
        Assert.True(blocked, "yes kept running: the gateway kept reading the PTY for a client that does not read");
        Assert.Equal(System.Net.WebSockets.WebSocketState.Open, socket.Socket.State);
        // Reading resumes the flow.
        var m = await socket.ReceiveJsonAsync();
        Assert.Equal("output", m.GetProperty("type").GetString());
        await SendInputAsync(socket, "\u0003");
    }
}
