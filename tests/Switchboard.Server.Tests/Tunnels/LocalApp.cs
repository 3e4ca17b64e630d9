using System.Net.WebSockets;
using System.Security.Cryptography;
using System.Text;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Http.Features;
using Microsoft.Extensions.Logging;

using Switchboard.Server.Tests.Infrastructure;

namespace Switchboard.Server.Tests.Tunnels;

/// <summary>The "local server" behind the agent: a real Kestrel app on 127.0.0.1:0 with test endpoints.</summary>
public sealed class LocalApp : IAsyncDisposable
{
    private LocalApp(WebApplication app)
    {
        App = app;
    }

    public WebApplication App { get; }
    public Uri Uri => new(App.Urls.First());

    /// <summary>SSE gate: the server produces event i+1 only after the test released it.</summary>
    public SemaphoreSlim SseGate { get; } = new(0);

    /// <summary>/gated gate: the server writes chunk i+1 only after the test released it.</summary>
    public SemaphoreSlim ChunkGate { get; } = new(0);

    /// <summary>Completes when a /hang request was cancelled (the agent cancelled the local request).</summary>
    public TaskCompletionSource HangAborted { get; } = new(TaskCreationOptions.RunContinuationsAsynchronously);

    /// <summary>Set when /sse produced each event (index).</summary>
    public List<int> SseProduced { get; } = [];

    public static byte[] Pattern(long size)
    {
        var data = new byte[size];
        for (long i = 0; i < size; i++)
            data[i] = (byte)(i * 31 % 251);
        return data;
    }

    /// <summary>Reads the request body to its end: "length:sha256-hex".</summary>
    private static async Task<string> LengthAndHashAsync(HttpContext c)
    {
        using var sha = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
        var buffer = new byte[64 * 1024];
        long total = 0;
        int n;
        while ((n = await c.Request.Body.ReadAsync(buffer, c.RequestAborted)) > 0)
        {
            sha.AppendData(buffer, 0, n);
            total += n;
        }
        return $"{total}:{Convert.ToHexStringLower(sha.GetHashAndReset())}";
    }

    /// <summary>Answers with <paramref name="size"/> bytes of <see cref="Pattern"/>, in 64 KiB writes, with Content-Length.</summary>
    private static async Task WritePatternAsync(HttpContext c, long size)
    {
        c.Response.ContentLength = size;
        var chunk = new byte[64 * 1024];
        for (long sent = 0; sent < size;)
        {
            var n = (int)Math.Min(chunk.Length, size - sent);
            for (var i = 0; i < n; i++)
                chunk[i] = (byte)((sent + i) * 31 % 251);
            await c.Response.Body.WriteAsync(chunk.AsMemory(0, n), c.RequestAborted);
            sent += n;
        }
    }

    public static async Task<LocalApp> StartAsync()
    {
        var builder = WebApplication.CreateSlimBuilder();
        builder.WebHost.UseUrls("http://127.0.0.1:0");
        builder.WebHost.ConfigureKestrel(k => k.Limits.MaxRequestBodySize = null);
        builder.Logging.ClearProviders();
        var app = builder.Build();
        var local = new LocalApp(app);
        app.UseWebSockets();
        app.MapGet("/hello", (HttpContext c) =>
        {
            var sb = new StringBuilder("hello ");
            sb.Append(c.Request.Path).Append(c.Request.QueryString);
            foreach (var h in new[] { "Host", "X-Forwarded-For", "X-Forwarded-Proto", "X-Forwarded-Host", "X-Forwarded-Prefix", "Authorization", "X-Multi" })
                sb.Append('\n').Append(h).Append('=').Append(string.Join("|", c.Request.Headers[h].ToArray()));
            return sb.ToString();
        });
        app.MapGet("/download", async (HttpContext c, long size, bool? cookies) =>
        {
            c.Response.ContentType = "application/octet-stream";
            if (cookies == true)
            {
                c.Response.Headers.Append("Set-Cookie", "a=1; Path=/");
                c.Response.Headers.Append("Set-Cookie", "b=2; Path=/; HttpOnly");
            }
            await WritePatternAsync(c, size);
        });
        app.MapGet("/gated", async (HttpContext c, long size, int chunk, int gated) =>
        {
            // A slow local server with a known length: each of the first `gated` chunks of the pattern only after the
            // test released the previous one (it does so when the chunk reached the public client), then the rest at once.
            c.Response.ContentType = "application/octet-stream";
            c.Response.ContentLength = size;
            var data = Pattern(size);
            var sent = 0;
            for (var i = 0; i < gated && sent < size; i++, sent += chunk)
            {
                await c.Response.Body.WriteAsync(data.AsMemory(sent, (int)Math.Min(chunk, size - sent)), c.RequestAborted);
                await c.Response.Body.FlushAsync(c.RequestAborted);
                await local.ChunkGate.WaitAsync(c.RequestAborted);
            }
            if (sent < size)
                await c.Response.Body.WriteAsync(data.AsMemory(sent), c.RequestAborted);
        });
        app.MapPost("/upload-download", async (HttpContext c, long size) =>
        {
            // Reads the whole upload, then answers with `size` bytes of the /download pattern and the upload's length
            // and SHA-256 in X-Upload.
            c.Response.Headers["X-Upload"] = await LengthAndHashAsync(c);
            c.Response.ContentType = "application/octet-stream";
            await WritePatternAsync(c, size);
        });
        app.MapPost("/upload", (Func<HttpContext, Task<string>>)LengthAndHashAsync); // the string is the answer
        app.MapGet("/sse", async (HttpContext c, int n) =>
        {
            c.Response.ContentType = "text/event-stream";
            c.Features.Get<IHttpResponseBodyFeature>()!.DisableBuffering();
            for (var i = 0; i < n; i++)
            {
                lock (local.SseProduced)
                    local.SseProduced.Add(i);
                await c.Response.WriteAsync($"id: {i}\ndata: event {i}\n\n", c.RequestAborted);
                await c.Response.Body.FlushAsync(c.RequestAborted);
                if (i < n - 1)
                    await local.SseGate.WaitAsync(c.RequestAborted);
            }
        });
        app.MapGet("/cookies", (HttpContext c) =>
        {
            c.Response.Headers.Append("Set-Cookie", "a=1; Path=/");
            c.Response.Headers.Append("Set-Cookie", "b=2; Path=/; HttpOnly");
            return "cookies";
        });
        app.MapGet("/slow", async (HttpContext c, int ms, int size) =>
        {
            await Task.Delay(ms, c.RequestAborted);
            await c.Response.Body.WriteAsync(Pattern(size), c.RequestAborted);
        });
        app.MapGet("/hang", async (HttpContext c) =>
        {
            using var _ = c.RequestAborted.Register(() => local.HangAborted.TrySetResult());
            await Task.Delay(Timeout.Infinite, c.RequestAborted);
        });
        app.MapGet("/trickle", async (HttpContext c) =>
        {
            c.Features.Get<IHttpResponseBodyFeature>()!.DisableBuffering();
            while (!c.RequestAborted.IsCancellationRequested)
            {
                await c.Response.WriteAsync("tick\n", c.RequestAborted);
                await c.Response.Body.FlushAsync(c.RequestAborted);
                await Task.Delay(50, c.RequestAborted);
            }
        });
        app.MapGet("/chunks", async (HttpContext c) =>
        {
            var data = Pattern(100_000);
            for (var i = 0; i < 10; i++)
            {
                await c.Response.Body.WriteAsync(data.AsMemory(i * 10_000, 10_000), c.RequestAborted);
                await c.Response.Body.FlushAsync(c.RequestAborted);
            }
        });
        app.MapGet("/redirect", (HttpContext c) => Results.Redirect("/hello"));
        app.MapMethods("/echo", ["PUT", "PATCH", "DELETE", "POST", "OPTIONS"], async (HttpContext c) =>
        {
            using var reader = new StreamReader(c.Request.Body);
            var body = await reader.ReadToEndAsync(c.RequestAborted);
            c.Response.StatusCode = 201;
            await c.Response.WriteAsync($"{c.Request.Method}:{body}", c.RequestAborted);
        });
        app.Map("/ws", async (HttpContext c) =>
        {
            if (!c.WebSockets.IsWebSocketRequest)
            {
                c.Response.StatusCode = 400;
                return;
            }
            using var ws = await c.WebSockets.AcceptWebSocketAsync(c.WebSockets.WebSocketRequestedProtocols.FirstOrDefault());
            var buffer = new byte[1024 * 1024];
            while (true)
            {
                var r = await ws.ReceiveAsync(buffer.AsMemory(), c.RequestAborted);
                if (r.MessageType == WebSocketMessageType.Close)
                {
                    await ws.CloseOutputAsync(ws.CloseStatus ?? WebSocketCloseStatus.NormalClosure, ws.CloseStatusDescription, c.RequestAborted);
                    return;
                }
                var length = r.Count;
                while (!r.EndOfMessage)
                {
                    r = await ws.ReceiveAsync(buffer.AsMemory(length), c.RequestAborted);
                    length += r.Count;
                }
                var text = r.MessageType == WebSocketMessageType.Text ? Encoding.UTF8.GetString(buffer, 0, length) : null;
                if (text == "close-me")
                {
                    await ws.CloseAsync((WebSocketCloseStatus)4001, "closed by server", c.RequestAborted);
                    return;
                }
                await ws.SendAsync(buffer.AsMemory(0, length), r.MessageType, true, c.RequestAborted);
            }
        });
        await app.StartAsync();
        return local;
    }

    public ValueTask DisposeAsync() => App.StopAndDisposeAsync();
}
