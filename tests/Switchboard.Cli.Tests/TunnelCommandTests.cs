using System.Net;
using System.Net.Sockets;
using System.Text;
using System.Text.RegularExpressions;

namespace Switchboard.Cli.Tests;

/// <summary>
/// <c>switchboard serve</c> and <c>switchboard tunnel http PORT</c> (or the standalone <c>switchboard-agent tunnel http
/// PORT</c>) as a person runs them, with a real local HTTP server.
/// </summary>
public sealed partial class TunnelCommandTests : CliWorkingDirectory
{
    [GeneratedRegex(@"Forwarding\s+(http://127\.0\.0\.1:\d+/t/\S+/)\s+->")]
    private static partial Regex PathForwardingLine();

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public async Task Tunnel_forwards_from_the_printed_url_and_stops_with_the_agent(bool standaloneAgent)
    {
        await using var setup = await Setup.StartAsync(WorkDir);
        var (port, url, token) = (setup.Port, setup.Url, setup.Token);

        string publicUrl;
        string[] agentArgs = ["tunnel", "http", port.ToString(System.Globalization.CultureInfo.InvariantCulture), "--server", url, "--token", token, "--subdomain", "cli-test"];
        await using (var agent = standaloneAgent ? CliProcess.StartAgent(WorkDir, null, agentArgs) : CliProcess.Start(WorkDir, null, agentArgs))
        {
            var printed = await agent.WaitForOutputAsync("/t/cli-test/", TimeSpan.FromSeconds(30));
            publicUrl = PathForwardingLine().Match(printed).Groups[1].Value;
            Assert.Equal(url + "/t/cli-test/", publicUrl);
            if (!standaloneAgent && CliProcess.Native is { } native && OperatingSystem.IsLinux()
                && File.Exists(Path.Combine(Path.GetDirectoryName(native)!, "switchboard-agent")))
            {
                // The native `switchboard tunnel` handed its process over to the switchboard-agent next to it.
                var exe = File.ResolveLinkTarget($"/proc/{agent.Process.Id}/exe", returnFinalTarget: false)?.FullName;
                Assert.Equal("switchboard-agent", Path.GetFileName(exe));
            }

            using var http = new HttpClient();
            var get = await http.GetAsync(publicUrl + "hello?x=1");
            Assert.Equal(HttpStatusCode.OK, get.StatusCode);
            Assert.Equal("GET /hello?x=1", await get.Content.ReadAsStringAsync());
            var body = new string('z', 300_000);
            var post = await http.PostAsync(publicUrl + "echo", new StringContent(body, Encoding.UTF8, "text/plain"));
            Assert.Equal("POST /echo " + body, await post.Content.ReadAsStringAsync());
            await agent.WaitForOutputAsync("POST", TimeSpan.FromSeconds(10)); // the live request line

            Assert.Equal(0, await agent.StopAsync()); // SIGTERM: a graceful stop (the tunnel is closed with a close frame)
            Assert.DoesNotContain("Unhandled", agent.Stderr, StringComparison.Ordinal);
        }

        // Once the gateway has seen the agent go: 404 naming the tunnel. While it is still closing: 502 (never "busy").
        using var after = new HttpClient();
        HttpResponseMessage gone;
        var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(10);
        while (true)
        {
            gone = await after.GetAsync(publicUrl + "hello");
            if (gone.StatusCode == HttpStatusCode.NotFound || DateTime.UtcNow > deadline)
                break;
            Assert.Equal(HttpStatusCode.BadGateway, gone.StatusCode);
            await Task.Delay(50);
        }
        Assert.Equal(HttpStatusCode.NotFound, gone.StatusCode);
        Assert.Contains("cli-test", await gone.Content.ReadAsStringAsync(), StringComparison.Ordinal);

        // The agent closed the tunnel with a close frame (1000), not by dropping the connection (1006).
        after.DefaultRequestHeaders.Authorization = new System.Net.Http.Headers.AuthenticationHeaderValue("Bearer",
            File.ReadAllText(Path.Combine(WorkDir, "data", "api-key")).Trim());
        var metrics = await after.GetStringAsync(url + "/metrics");
        Assert.Contains("switchboard_connections_closed_total{endpoint=\"tunnel\",code=\"1000\"} 1", metrics, StringComparison.Ordinal);
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public async Task Large_downloads_are_byte_exact_with_and_without_zero_copy(bool noZeroCopy)
    {
        await using var setup = await Setup.StartAsync(WorkDir);
        var (port, url, token) = (setup.Port, setup.Url, setup.Token);
        string[] agentArgs = ["tunnel", "http", port.ToString(System.Globalization.CultureInfo.InvariantCulture), "--server", url, "--token", token, "--subdomain", "big",
            .. noZeroCopy ? new[] { "--no-zero-copy" } : []];
        await using (var agent = CliProcess.StartAgent(WorkDir, null, agentArgs))
        {
            await agent.WaitForOutputAsync("/t/big/", TimeSpan.FromSeconds(30));
            using var http = new HttpClient();
            // Over the data path's 1 MiB minimum, three times on the same tunnel: with zero copy each one retires its
            // local connection, and the next must open a new one.
            foreach (var size in new[] { 8 * 1024 * 1024, 3 * 1024 * 1024 + 17, 2 * 1024 * 1024 })
            {
                var body = await http.GetByteArrayAsync($"{url}/t/big/big?size={size}");
                Assert.Equal(Big(size), body);
            }
            Assert.Equal(0, await agent.StopAsync());
            Assert.DoesNotContain("Unhandled", agent.Stderr, StringComparison.Ordinal);
        }
    }

    [Fact]
    public async Task Standalone_agent_refuses_a_bad_token_and_a_bad_target_clearly()
    {
        await using var serve = CliProcess.Start(WorkDir, null, "serve", "--urls", "http://127.0.0.1:0");
        var url = await serve.WaitForListeningUrlAsync();

        var (code, _, stderr) = await CliProcess.RunAgentAsync(WorkDir, null, "tunnel", "http", "3000", "--server", url, "--token", "not-a-token");
        Assert.Equal(3, code); // unauthorized: the documented exit code, no retry loop
        Assert.Contains("refused the tunnel (4401)", stderr, StringComparison.Ordinal);

        (code, _, stderr) = await CliProcess.RunAgentAsync(WorkDir, null, "tunnel", "http", "ftp://example");
        Assert.Equal(2, code);
        Assert.Contains("is not a port, host:port or http(s) URL", stderr, StringComparison.Ordinal);

        // The agent carries only the tunnel command: no server, no store.
        var (helpCode, help, _) = await CliProcess.RunAgentAsync(WorkDir, null, "--help");
        Assert.Equal(0, helpCode);
        Assert.Matches(@"(?m)^\s+tunnel\s+Expose a local server", help);
        Assert.DoesNotMatch(@"(?m)^\s+(serve|token|tokens|publish|env)\s", help);
    }

    /// <summary>A local HTTP server (<see cref="ServeAsync"/>), <c>switchboard serve</c> and an agent token for it.</summary>
    private sealed class Setup : IAsyncDisposable
    {
        private readonly HttpListener _local;
        private readonly Task _serving;
        private readonly CliProcess _serve;

        private Setup(HttpListener local, Task serving, CliProcess serve, int port, string url, string token)
        {
            (_local, _serving, _serve) = (local, serving, serve);
            (Port, Url, Token) = (port, url, token);
        }

        public int Port { get; }

        public string Url { get; }

        public string Token { get; }

        public static async Task<Setup> StartAsync(string workDir)
        {
            var port = FreePort();
            var local = new HttpListener();
            local.Prefixes.Add($"http://127.0.0.1:{port}/");
            local.Start();
            var serving = ServeAsync(local);
            var serve = CliProcess.Start(workDir, null, "serve", "--urls", "http://127.0.0.1:0");
            var url = await serve.WaitForListeningUrlAsync();
            var (code, token, error) = await CliProcess.RunAsync(workDir, null, "tokens", "create", "--kind", "agent");
            Assert.True(code == 0, error);
            return new Setup(local, serving, serve, port, url, token.Trim());
        }

        public async ValueTask DisposeAsync()
        {
            _local.Stop();
            await _serving;
            ((IDisposable)_local).Dispose();
            await _serve.DisposeAsync();
        }
    }

    private static byte[] Big(int size)
    {
        var data = new byte[size];
        for (var i = 0; i < size; i++)
            data[i] = (byte)(i * 31 % 251);
        return data;
    }

    // Answers "METHOD /path?query" plus the request body; /big?size=N answers N bytes of a pattern with Content-Length.
    private static async Task ServeAsync(HttpListener listener)
    {
        while (listener.IsListening)
        {
            HttpListenerContext context;
            try
            {
                context = await listener.GetContextAsync();
            }
            catch (Exception ex) when (ex is HttpListenerException or ObjectDisposedException or InvalidOperationException)
            {
                return;
            }
            if (context.Request.Url!.AbsolutePath == "/big")
            {
                var big = Big(int.Parse(context.Request.QueryString["size"]!, System.Globalization.CultureInfo.InvariantCulture));
                context.Response.ContentType = "application/octet-stream";
                context.Response.ContentLength64 = big.Length;
                await context.Response.OutputStream.WriteAsync(big);
                context.Response.Close();
                continue;
            }
            using var reader = new StreamReader(context.Request.InputStream);
            var body = await reader.ReadToEndAsync();
            var text = context.Request.HttpMethod + " " + context.Request.Url!.PathAndQuery + (body.Length > 0 ? " " + body : "");
            var bytes = Encoding.UTF8.GetBytes(text);
            context.Response.ContentType = "text/plain";
            context.Response.ContentLength64 = bytes.Length;
            await context.Response.OutputStream.WriteAsync(bytes);
            context.Response.Close();
        }
    }

    private static int FreePort()
    {
        using var probe = new TcpListener(IPAddress.Loopback, 0);
        probe.Start();
        return ((IPEndPoint)probe.LocalEndpoint).Port;
    }
}
