using System.Diagnostics;
using System.Net;
using System.Net.Http.Headers;
using System.Net.Http.Json;
using System.Text.RegularExpressions;
using Microsoft.Extensions.Options;
using Switchboard.Server.Auth;
using Switchboard.Server.Tests.Infrastructure;
using Switchboard.Storage.Postgres.Tests;

namespace Switchboard.Server.Tests.Cluster;

/// <summary>Real <c>switchboard serve --database</c> processes behind real nginx; one is killed with SIGKILL.</summary>
public sealed partial class ProcessClusterTests(PostgresFixture fixture) : IClassFixture<PostgresFixture>
{
    [Fact]
    public async Task Clients_of_a_killed_node_reconnect_through_nginx_and_lose_nothing()
    {
        var cs = await fixture.CreateSchemaAsync();
        var nodes = new List<NodeProcess>();
        try
        {
            nodes.AddRange(await Task.WhenAll(Enumerable.Range(1, 3).Select(i => NodeProcess.StartAsync(cs, "proc-" + i))));
            await using var nginx = await NginxProcess.StartAsync(nodes.Select(n => n.Port));
            var lb = new Uri($"http://127.0.0.1:{nginx.Port}/");
            using var api = new HttpClient { BaseAddress = lb };
            api.DefaultRequestHeaders.Authorization = new AuthenticationHeaderValue("Bearer", TestGateway.ApiKey);
            var tokens = new TokenService(Options.Create(new SwitchboardOptions { Auth = { JwtSecret = TestGateway.JwtSecret } }), TimeProvider.System);
            var token = tokens.Create("alice", TimeSpan.FromHours(1), ["*"], ["*"]);

            var nodesList = await api.GetFromJsonAsync<System.Text.Json.JsonElement>("api/v1/nodes");
            Assert.Equal(3, nodesList.GetProperty("nodes").GetArrayLength());

            var clients = new List<LbClient>();
            for (var i = 0; i < 6; i++)
                clients.Add(await LbClient.ConnectAsync(token, lb, "proc:list", null));
            for (var n = 1; n <= 10; n++)
                await PublishAsync(api, n);
            foreach (var c in clients)
                await c.ExpectAsync(1, 10);

            // Kill (SIGKILL, no goodbye) the node holding the most clients.
            var counts = await Task.WhenAll(nodes.Select(n => n.ChannelConnectionsAsync()));
            var victim = nodes[Array.IndexOf(counts, counts.Max())];
            var onVictim = counts.Max();
            Assert.True(onVictim >= 1);
            await victim.KillAsync();
            for (var n = 11; n <= 20; n++)
                await PublishAsync(api, n);

            var reconnected = 0;
            for (var i = 0; i < clients.Count; i++)
            {
                while (true)
                {
                    try
                    {
                        await clients[i].ExpectAsync((int)clients[i].Offset + 1, 20);
                        break;
                    }
                    catch (Exception ex) when (ex is InvalidOperationException or System.Net.WebSockets.WebSocketException && clients[i].IsClosed)
                    {
                        reconnected++;
                        var old = clients[i];
                        await old.DisposeAsync();
                        clients[i] = await LbClient.ConnectAsync(token, lb, "proc:list", old);
                        Assert.True(clients[i].Recovered);
                    }
                }
            }
            Assert.Equal(onVictim, reconnected);
            await PublishAsync(api, 21);
            foreach (var c in clients)
            {
                await c.ExpectAsync(21, 21); // nothing duplicated: the next message is exactly 21
                await c.DisposeAsync();
            }
        }
        finally
        {
            foreach (var n in nodes)
                await n.DisposeAsync();
        }
    }

    private static async Task PublishAsync(HttpClient api, int n)
    {
        var response = await api.PostAsJsonAsync("api/v1/channels/proc:list/messages", new { data = "m" + n });
        Assert.Equal(HttpStatusCode.OK, response.StatusCode);
    }

    /// <summary>One <c>switchboard serve</c> process (the CLI built next to this test assembly's configuration).</summary>
    private sealed partial class NodeProcess : IAsyncDisposable
    {
        private readonly Process _process;
        private readonly string _dataDir;

        private NodeProcess(Process process, string dataDir, int port)
        {
            _process = process;
            _dataDir = dataDir;
            Port = port;
        }

        public int Port { get; }

        public static async Task<NodeProcess> StartAsync(string connectionString, string nodeId)
        {
            var configuration = new DirectoryInfo(Path.TrimEndingDirectorySeparator(AppContext.BaseDirectory)).Parent!.Name; // bin/<Configuration>/net10.0
            var dll = Path.Combine(NginxProcess.RepoRoot(), "src", "Switchboard.Cli", "bin", configuration, "net10.0", "switchboard.dll");
            Assert.True(File.Exists(dll), $"build the CLI first: {dll}");
            var dataDir = Path.Combine(Path.GetTempPath(), "switchboard-proc-" + Guid.NewGuid().ToString("N")[..8]);
            var psi = new ProcessStartInfo("dotnet") { RedirectStandardOutput = true, RedirectStandardError = true };
            foreach (var a in new[] { dll, "serve", "--database", connectionString, "--node-id", nodeId, "--urls", "http://127.0.0.1:0", "--data-dir", dataDir })
                psi.ArgumentList.Add(a);
            psi.Environment["SWITCHBOARD_API_KEY"] = TestGateway.ApiKey;
            psi.Environment["SWITCHBOARD_JWT_SECRET"] = TestGateway.JwtSecret;
            var process = Process.Start(psi)!;
            process.ErrorDataReceived += (_, _) => { };
            process.BeginErrorReadLine();
            using var timeout = new CancellationTokenSource(TimeSpan.FromSeconds(30));
            while (true)
            {
                var line = await process.StandardOutput.ReadLineAsync(timeout.Token)
                    ?? throw new InvalidOperationException($"{nodeId} exited ({(process.HasExited ? process.ExitCode : -1)}) before listening");
                var m = ListeningLine().Match(line);
                if (m.Success)
                {
                    // Keep draining stdout so the process never blocks on a full pipe.
                    _ = process.StandardOutput.BaseStream.CopyToAsync(Stream.Null, CancellationToken.None);
                    return new NodeProcess(process, dataDir, int.Parse(m.Groups[1].Value, System.Globalization.CultureInfo.InvariantCulture));
                }
            }
        }

        public async Task<long> ChannelConnectionsAsync()
        {
            using var http = new HttpClient { BaseAddress = new Uri($"http://127.0.0.1:{Port}/") };
            http.DefaultRequestHeaders.Authorization = new AuthenticationHeaderValue("Bearer", TestGateway.ApiKey);
            var text = await http.GetStringAsync("metrics");
            return text.Split('\n').Where(l => l.StartsWith("switchboard_connections_active{endpoint=\"channels\"}", StringComparison.Ordinal))
                .Sum(l => long.Parse(l[(l.LastIndexOf(' ') + 1)..], System.Globalization.CultureInfo.InvariantCulture));
        }

        /// <summary>SIGKILL, then wait until the process is gone (its sockets closed by the kernel).</summary>
        public async Task KillAsync()
        {
            _process.Kill(entireProcessTree: true);
            await _process.WaitForExitAsync();
        }

        public async ValueTask DisposeAsync()
        {
            if (!_process.HasExited)
            {
                _process.Kill(entireProcessTree: true);
                await _process.WaitForExitAsync();
            }
            _process.Dispose();
            try
            {
                Directory.Delete(_dataDir, true);
            }
            catch (IOException)
            {
            }
        }

        [GeneratedRegex(@"Listening\s+http://127\.0\.0\.1:(\d+)")]
        private static partial Regex ListeningLine();
    }
}
