using System.Net.Http.Json;
using System.Text.Json;
using Microsoft.Extensions.DependencyInjection;
using Switchboard.Server.Environments;
using Switchboard.Server.Tests.Infrastructure;

namespace Switchboard.Server.Tests.Environments;

/// <summary>One line as a client sees it.</summary>
public sealed record SeenLine(long Seq, string Stream, string Message);

/// <summary>Helpers shared by the environment tests.</summary>
internal static class EnvTestKit
{
    public static Task<TestGateway> StartAsync(Action<EnvironmentOptions>? configure = null, Action<SwitchboardOptions>? gateway = null, string? dataDir = null) =>
        TestGateway.StartAsync(gateway, dataDir, services => services.Configure<EnvironmentOptions>(o =>
        {
            o.StopGracePeriod = TimeSpan.FromSeconds(1);
            configure?.Invoke(o);
        }));

    /// <summary>Creates an environment running <c>/bin/sh -c SCRIPT</c>; returns its JSON.</summary>
    public static async Task<JsonElement> CreateShAsync(this TestGateway gateway, string name, string script, bool start = true,
        Dictionary<string, string>? env = null, string? cwd = null)
    {
        var response = await gateway.Api.PostAsJsonAsync("api/v1/environments", new
        {
            name,
            driver = "process",
            command = "/bin/sh",
            args = new[] { "-c", script },
            cwd,
            // HOME without a .bashrc: terminals must not depend on the machine user's shell start-up files.
            env = new Dictionary<string, string>(env ?? []) { ["HOME"] = EmptyHome },
            start,
        });
        var body = await response.Content.ReadAsStringAsync();
        Assert.True(response.StatusCode == System.Net.HttpStatusCode.Created, body);
        return JsonDocument.Parse(body).RootElement;
    }

    private static readonly string EmptyHome = Directory.CreateTempSubdirectory("sb-home").FullName;

    public static async Task<JsonElement> GetEnvAsync(this TestGateway gateway, string id)
    {
        var response = await gateway.Api.GetAsync("api/v1/environments/" + id);
        response.EnsureSuccessStatusCode();
        return JsonDocument.Parse(await response.Content.ReadAsStringAsync()).RootElement;
    }

    /// <summary>Polls until the environment has <paramref name="status"/>.</summary>
    public static async Task<JsonElement> WaitStatusAsync(this TestGateway gateway, string id, string status, TimeSpan? timeout = null)
    {
        var deadline = DateTime.UtcNow + (timeout ?? TimeSpan.FromSeconds(10));
        while (true)
        {
            var e = await gateway.GetEnvAsync(id);
            if (e.GetProperty("status").GetString() == status)
                return e;
            if (DateTime.UtcNow > deadline)
                throw new TimeoutException($"status is {e.GetProperty("status").GetString()}, expected {status}");
            await Task.Delay(20);
        }
    }

    public static Task<TestSocket> ConnectEnvAsync(this TestGateway gateway, string id, string kind, string query = "", string? token = null) =>
        gateway.ConnectAsync($"api/v1/ws/environments/{id}/{kind}?token={Uri.EscapeDataString(token ?? gateway.Token())}{query}");

    /// <summary>Adds the lines of a <c>log</c> or <c>batch</c> message to <paramref name="lines"/>; returns the message type.</summary>
    public static string Collect(JsonElement message, List<SeenLine> lines)
    {
        var type = message.GetProperty("type").GetString()!;
        if (type == "log")
            lines.Add(Line(message));
        else if (type == "batch")
        {
            foreach (var l in message.GetProperty("logs").EnumerateArray())
                lines.Add(Line(l));
        }
        return type;
    }

    private static SeenLine Line(JsonElement e) =>
        new(e.GetProperty("seq").GetInt64(), e.GetProperty("stream").GetString()!, e.GetProperty("message").GetString()!);

    /// <summary>Reads log messages until <paramref name="done"/> holds for the collected lines.</summary>
    public static async Task<List<SeenLine>> ReadLinesUntilAsync(this TestSocket socket, Func<List<SeenLine>, bool> done, List<SeenLine>? lines = null, TimeSpan? timeout = null)
    {
        lines ??= [];
        using var cts = new CancellationTokenSource(timeout ?? TimeSpan.FromSeconds(15));
        while (!done(lines))
        {
            cts.Token.ThrowIfCancellationRequested();
            Collect(await socket.ReceiveJsonAsync(timeout ?? TimeSpan.FromSeconds(15)), lines);
        }
        return lines;
    }

    public static bool ProcessExists(int pid) => Directory.Exists("/proc/" + pid) && !File.ReadAllText($"/proc/{pid}/stat").Contains(") Z ", StringComparison.Ordinal);

    /// <summary>Pids of live processes whose command line (arguments joined by spaces) starts with <paramref name="marker"/>.</summary>
    public static List<int> FindProcesses(string marker)
    {
        var list = new List<int>();
        foreach (var dir in Directory.EnumerateDirectories("/proc"))
        {
            if (!int.TryParse(Path.GetFileName(dir), out var pid))
                continue;
            try
            {
                var cmd = File.ReadAllText(dir + "/cmdline").Replace('\0', ' ');
                if (cmd.StartsWith(marker, StringComparison.Ordinal) && ProcessExists(pid))
                    list.Add(pid);
            }
            catch (IOException)
            {
            }
            catch (UnauthorizedAccessException)
            {
            }
        }
        return list;
    }

    public static async Task WaitUntilAsync(Func<bool> condition, TimeSpan? timeout = null, string? because = null)
    {
        var deadline = DateTime.UtcNow + (timeout ?? TimeSpan.FromSeconds(10));
        while (!condition())
        {
            if (DateTime.UtcNow > deadline)
                throw new TimeoutException(because ?? "condition not met");
            await Task.Delay(20);
        }
    }
}
