using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using System.Text.RegularExpressions;
using Switchboard.Server.Tests.Infrastructure;

namespace Switchboard.Server.Tests.Cluster;

/// <summary>nginx with the shipped config, pointed at the given node ports, on a free loopback port.</summary>
internal sealed partial class NginxProcess : IAsyncDisposable
{
    private readonly string _dir;
    private readonly string _conf;

    private NginxProcess(string dir, string conf, int port)
    {
        _dir = dir;
        _conf = conf;
        Port = port;
    }

    public int Port { get; }

    /// <summary>The last lines of nginx's error log (when the configuration writes one to its directory), for failure messages.</summary>
    public string ErrorLogTail(int lines = 20)
    {
        var path = Path.Combine(_dir, "error.log");
        return File.Exists(path) ? string.Join('\n', File.ReadLines(path).TakeLast(lines)) : "";
    }

    public static Task<NginxProcess> StartAsync(IEnumerable<int> nodePorts) => StartAsync(async (dir, port) =>
    {
        var template = await File.ReadAllTextAsync(Path.Combine(RepoRoot(), "deploy", "nginx.conf"));
        var servers = string.Concat(nodePorts.Select(p => $"        server 127.0.0.1:{p} max_fails=1 fail_timeout=5s;\n"));
        var conf = ServerLine().Replace(template, "");
        return conf.Replace("least_conn;\n", "least_conn;\n" + servers, StringComparison.Ordinal)
            .Replace("listen 127.0.0.1:8080;", $"listen 127.0.0.1:{port};", StringComparison.Ordinal)
            .Replace("worker_processes 1;", $"worker_processes 1;\npid {dir}/nginx.pid;\nerror_log {dir}/error.log;", StringComparison.Ordinal)
            .Replace("http {", $"http {{\n    access_log off;\n    client_body_temp_path {dir}/tmp/body;\n    proxy_temp_path {dir}/tmp/proxy;\n    fastcgi_temp_path {dir}/tmp/fastcgi;\n    uwsgi_temp_path {dir}/tmp/uwsgi;\n    scgi_temp_path {dir}/tmp/scgi;", StringComparison.Ordinal);
    });

    /// <summary>nginx with the configuration <paramref name="config"/> writes for its own directory and a free loopback port.</summary>
    public static async Task<NginxProcess> StartAsync(Func<string, int, Task<string>> config)
    {
        var dir = Path.Combine(Path.GetTempPath(), "switchboard-nginx-" + Guid.NewGuid().ToString("N")[..8]);
        Directory.CreateDirectory(Path.Combine(dir, "tmp"));
        var port = FreePort();
        var path = Path.Combine(dir, "nginx.conf");
        await File.WriteAllTextAsync(path, await config(dir, port));
        await RunAsync("nginx", $"-c {path} -p {dir}");
        return new NginxProcess(dir, path, port);
    }

    public async ValueTask DisposeAsync()
    {
        await RunAsync("nginx", $"-c {_conf} -p {_dir} -s stop");
        try
        {
            Directory.Delete(_dir, true);
        }
        catch (IOException)
        {
        }
    }

    private static async Task RunAsync(string file, string args)
    {
        Process? started;
        try
        {
            started = Process.Start(new ProcessStartInfo(file, args) { RedirectStandardError = true, RedirectStandardOutput = true });
        }
        catch (System.ComponentModel.Win32Exception ex)
        {
            throw new InvalidOperationException($"{file} is needed for this test and is not installed (apt-get install {file})", ex);
        }
        using var p = started ?? throw new InvalidOperationException("cannot start " + file);
        var stderr = await p.StandardError.ReadToEndAsync();
        await p.WaitForExitAsync();
        if (p.ExitCode != 0)
            throw new InvalidOperationException($"{file} {args} failed ({p.ExitCode}): {stderr}");
    }

    private static int FreePort()
    {
        using var l = new TcpListener(IPAddress.Loopback, 0);
        l.Start();
        return ((IPEndPoint)l.LocalEndpoint).Port;
    }

    public static string RepoRoot()
    {
        var d = new DirectoryInfo(AppContext.BaseDirectory);
        while (d is not null && !File.Exists(Path.Combine(d.FullName, "Switchboard.slnx")))
            d = d.Parent;
        return d?.FullName ?? throw new InvalidOperationException("repository root not found");
    }

    [GeneratedRegex(@"^\s*server 127\.0\.0\.1:808\d.*\n", RegexOptions.Multiline)]
    private static partial Regex ServerLine();
}

/// <summary>A channel subscriber that tracks its position, as a client library does.</summary>
internal sealed class LbClient : IAsyncDisposable
{
    private readonly TestSocket _socket;

    private LbClient(TestSocket socket, long offset, string epoch, bool recovered)
    {
        _socket = socket;
        Offset = offset;
        Epoch = epoch;
        Recovered = recovered;
    }

    public long Offset { get; private set; }
    public string Epoch { get; }
    public bool Recovered { get; }
    public bool IsClosed => _socket.Socket.State != System.Net.WebSockets.WebSocketState.Open;

    /// <summary>Connects through nginx and subscribes, resuming after <paramref name="since"/> when given.</summary>
    public static async Task<LbClient> ConnectAsync(string token, Uri lb, string channel, LbClient? since)
    {
        var ws = new System.Net.WebSockets.ClientWebSocket();
        ws.Options.KeepAliveInterval = TimeSpan.Zero;
        using var timeout = new CancellationTokenSource(TimeSpan.FromSeconds(10));
        await ws.ConnectAsync(new Uri($"ws://{lb.Authority}/api/v1/ws?token={Uri.EscapeDataString(token)}"), timeout.Token);
        var socket = new TestSocket(ws);
        await socket.ReceiveTypeAsync("welcome");
        await socket.SendJsonAsync(since is null
            ? new { type = "subscribe", channel }
            : new { type = "subscribe", channel, since = new { offset = since.Offset, epoch = since.Epoch } });
        var subscribed = await socket.ReceiveTypeAsync("subscribed");
        var recovered = subscribed.TryGetProperty("recovered", out var r) && r.GetBoolean();
        // A recovered subscription replays everything after `since`, so the client's position stays where it was.
        var offset = since is not null && recovered ? since.Offset : subscribed.GetProperty("offset").GetInt64();
        return new LbClient(socket, offset, subscribed.GetProperty("epoch").GetString()!, recovered);
    }

    public async Task ExpectAsync(int from, int to)
    {
        for (var n = from; n <= to; n++)
        {
            var m = await _socket.ReceiveTypeAsync("message");
            Assert.Equal("m" + n, m.GetProperty("data").GetString());
            Assert.Equal(n, m.GetProperty("offset").GetInt64());
            Offset = n;
        }
    }

    public ValueTask DisposeAsync() => _socket.DisposeAsync();
}
