using System.Net.Http.Headers;
using System.Net.WebSockets;
using System.Security.Cryptography.X509Certificates;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;
using Switchboard.Server;
using Switchboard.Server.Auth;
using Switchboard.Storage.Sqlite;

namespace Switchboard.Server.Tests.Infrastructure;

/// <summary>
/// A real gateway on 127.0.0.1 (Kestrel, port 0) with a real SQLite file in a temp dir. Dispose closes it.
/// </summary>
public sealed class TestGateway : IAsyncDisposable
{
    public const string ApiKey = "test-api-key-0123456789abcdef";
    public const string JwtSecret = "test-jwt-secret-0123456789abcdef0123456789";

    private readonly List<ClientWebSocket> _sockets = [];

    private TestGateway(WebApplication app, string dataDir)
    {
        App = app;
        DataDir = dataDir;
        var address = app.Urls.First(u => u.StartsWith("http://", StringComparison.Ordinal));
        if (app.Urls.FirstOrDefault(u => u.StartsWith("https://", StringComparison.Ordinal)) is { } https)
            HttpsUri = new Uri(https.EndsWith('/') ? https : https + "/");
        BaseUri = new Uri(address.EndsWith('/') ? address : address + "/");
        WsBaseUri = new Uri(BaseUri.ToString().Replace("http://", "ws://", StringComparison.Ordinal));
        Http = new HttpClient { BaseAddress = BaseUri, Timeout = TimeSpan.FromSeconds(30) };
        Api = new HttpClient { BaseAddress = BaseUri, Timeout = TimeSpan.FromSeconds(30) };
        Api.DefaultRequestHeaders.Authorization = new AuthenticationHeaderValue("Bearer", ApiKey);
    }

    public WebApplication App { get; }
    public string DataDir { get; }
    public Uri BaseUri { get; }

    /// <summary>The https:// address when the gateway was started with a TLS certificate.</summary>
    public Uri? HttpsUri { get; }
    public Uri WsBaseUri { get; }

    /// <summary>Anonymous client.</summary>
    public HttpClient Http { get; }

    /// <summary>Client presenting the API key.</summary>
    public HttpClient Api { get; }

    public IServiceProvider Services => App.Services;

    /// <param name="tls">When given, the gateway also listens on an https:// address with this certificate (<see cref="HttpsUri"/>).</param>
    public static async Task<TestGateway> StartAsync(Action<SwitchboardOptions>? configure = null, string? dataDir = null,
        Action<IServiceCollection>? services = null, Action<WebApplication>? pipeline = null, X509Certificate2? tls = null)
    {
        dataDir ??= Path.Combine(Path.GetTempPath(), "switchboard-tests", Guid.NewGuid().ToString("N"));
        Directory.CreateDirectory(dataDir);
        var builder = WebApplication.CreateSlimBuilder();
        builder.WebHost.UseUrls(tls is null ? ["http://127.0.0.1:0"] : ["http://127.0.0.1:0", "https://127.0.0.1:0"]);
        if (tls is not null)
            builder.ConfigureSwitchboardTls(tls);
        builder.Logging.ClearProviders();
        builder.Logging.SetMinimumLevel(LogLevel.Warning);
        builder.ConfigureSwitchboardHost();
        builder.Services.AddSwitchboard(o =>
        {
            o.Auth.ApiKey = ApiKey;
            o.Auth.JwtSecret = JwtSecret;
            o.ShutdownDrainTimeout = TimeSpan.FromSeconds(2);
            configure?.Invoke(o);
        });
        builder.Services.AddSwitchboardSqlite(dataDir);
        services?.Invoke(builder.Services);
        var app = builder.Build();
        pipeline?.Invoke(app);
        app.MapSwitchboard();
        await app.StartAsync();
        return new TestGateway(app, dataDir);
    }

    /// <summary>Mints a token with the gateway's own service.</summary>
    public string Token(string subject = "alice", string[]? channels = null, string[]? publish = null, string[]? rooms = null,
        string[]? envs = null, string[]? tunnels = null, TimeSpan? lifetime = null, DateTimeOffset? notBefore = null) =>
        Services.GetRequiredService<TokenService>().Create(subject, lifetime ?? TimeSpan.FromHours(1), channels ?? ["*"], publish ?? ["*"],
            rooms ?? ["*"], envs ?? ["*"], tunnels ?? ["*"], notBefore);

    /// <summary>Opens a WebSocket to <paramref name="pathAndQuery"/> (relative, e.g. <c>api/v1/ws?token=…</c>).</summary>
    public async Task<TestSocket> ConnectAsync(string pathAndQuery, Action<ClientWebSocketOptions>? options = null, CancellationToken cancellationToken = default)
    {
        var ws = new ClientWebSocket();
        ws.Options.KeepAliveInterval = TimeSpan.Zero;
        options?.Invoke(ws.Options);
        lock (_sockets)
            _sockets.Add(ws);
        using var timeout = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
        timeout.CancelAfter(TimeSpan.FromSeconds(10));
        await ws.ConnectAsync(new Uri(WsBaseUri, pathAndQuery), timeout.Token);
        return new TestSocket(ws);
    }

    /// <summary>Connects to the channels endpoint with a token for <paramref name="subject"/> and reads the welcome.</summary>
    public async Task<TestSocket> ConnectChannelsAsync(string? token = null)
    {
        var socket = await ConnectAsync("api/v1/ws?token=" + Uri.EscapeDataString(token ?? Token()));
        var welcome = await socket.ReceiveJsonAsync();
        Assert.Equal("welcome", welcome.GetProperty("type").GetString());
        socket.ConnectionId = welcome.GetProperty("connectionId").GetString();
        return socket;
    }

    public async ValueTask DisposeAsync()
    {
        ClientWebSocket[] sockets;
        lock (_sockets)
            sockets = [.. _sockets];
        foreach (var ws in sockets)
        {
            ws.Abort();
            ws.Dispose();
        }
        Http.Dispose();
        Api.Dispose();
        using var timeout = new CancellationTokenSource(TimeSpan.FromSeconds(20));
        try
        {
            await App.StopAsync(timeout.Token);
        }
        finally
        {
            await App.DisposeAsync();
            Microsoft.Data.Sqlite.SqliteConnection.ClearAllPools();
            try
            {
                Directory.Delete(DataDir, recursive: true);
            }
            catch (IOException)
            {
            }
        }
    }
}
