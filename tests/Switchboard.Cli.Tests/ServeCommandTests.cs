using System.Net.Http.Headers;
using System.Net.WebSockets;
using System.Text;

namespace Switchboard.Cli.Tests;

public sealed class ServeCommandTests : CliWorkingDirectory
{
    [Fact]
    public async Task First_start_generates_private_secrets_prints_them_once_and_tokens_work()
    {
        string url;
        string apiKey;
        await using (var serve = CliProcess.Start(WorkDir, null, "serve", "--urls", "http://127.0.0.1:0"))
        {
            url = await serve.WaitForListeningUrlAsync();
            var output = serve.Stdout;
            Assert.StartsWith("http://127.0.0.1:", url);
            var keyFile = Path.Combine(WorkDir, "data", "api-key");
            var jwtFile = Path.Combine(WorkDir, "data", "jwt-secret");
            apiKey = File.ReadAllText(keyFile).Trim();
            Assert.Equal(UnixFileMode.UserRead | UnixFileMode.UserWrite, File.GetUnixFileMode(keyFile));
            Assert.Equal(UnixFileMode.UserRead | UnixFileMode.UserWrite, File.GetUnixFileMode(jwtFile));
            Assert.Contains(apiKey, output); // shown on first start only
            Assert.Contains("Dev token", output);
            Assert.True(apiKey.Length >= 40);

            // A token minted by the CLI is accepted by the server.
            var (code, token, _) = await CliProcess.RunAsync(WorkDir, null, "token", "--sub", "alice", "--channels", "list:*", "--ttl", "10m");
            Assert.Equal(0, code);
            using var ws = new ClientWebSocket();
            await ws.ConnectAsync(new Uri(url.Replace("http", "ws") + "/api/v1/ws?token=" + token.Trim()), CancellationToken.None);
            var buffer = new byte[1024];
            var r = await ws.ReceiveAsync(buffer, CancellationToken.None);
            Assert.Contains("welcome", Encoding.UTF8.GetString(buffer, 0, r.Count));

            using var http = new HttpClient();
            http.DefaultRequestHeaders.Authorization = new AuthenticationHeaderValue("Bearer", apiKey);
            var publish = await http.PostAsync(url + "/api/v1/channels/list:1/messages", new StringContent("{\"data\":1}", Encoding.UTF8, "application/json"));
            Assert.True(publish.IsSuccessStatusCode);

            // Graceful stop: the socket gets 1001.
            var stopping = serve.StopAsync();
            while (true)
            {
                var m = await ws.ReceiveAsync(buffer, CancellationToken.None);
                if (m.MessageType == WebSocketMessageType.Close)
                    break;
            }
            Assert.Equal(1001, (int)ws.CloseStatus!.Value);
            Assert.Equal(0, await stopping);
        }

        // Second start: same secrets, never printed again.
        await using (var again = CliProcess.Start(WorkDir, null, "serve", "--urls", "http://127.0.0.1:0"))
        {
            var output = await again.WaitForOutputAsync("Mint a token", TimeSpan.FromSeconds(30));
            Assert.DoesNotContain(apiKey, output);
            Assert.DoesNotContain(apiKey, again.Stderr);
            Assert.Contains(Path.Combine(WorkDir, "data", "api-key"), output);
            Assert.Equal(apiKey, File.ReadAllText(Path.Combine(WorkDir, "data", "api-key")).Trim());
        }
    }

    [Fact]
    public async Task Unreachable_database_fails_with_a_clear_message()
    {
        var (code, _, stderr) = await CliProcess.RunAsync(WorkDir, null, "serve", "--urls", "http://127.0.0.1:0", "--database", "Host=127.0.0.1;Port=1;Database=nowhere;Timeout=3");
        Assert.Equal(1, code);
        Assert.Contains("cannot use the database (PostgreSQL 127.0.0.1:1/nowhere)", stderr);
    }

    [Fact]
    public async Task Token_without_secret_fails_clearly_and_bad_ttl_is_rejected()
    {
        var (code, _, stderr) = await CliProcess.RunAsync(WorkDir, null, "token", "--sub", "a", "--data-dir", Path.Combine(WorkDir, "none"));
        Assert.NotEqual(0, code);
        Assert.Contains("switchboard serve", stderr);
        var env = new Dictionary<string, string> { ["SWITCHBOARD_JWT_SECRET"] = new string('k', 40) };
        var bad = await CliProcess.RunAsync(WorkDir, env, "token", "--sub", "a", "--ttl", "soon");
        Assert.NotEqual(0, bad.ExitCode);
        Assert.Contains("duration", bad.Stderr);
    }
}
