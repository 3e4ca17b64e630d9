using System.Globalization;
using System.Security.Cryptography;
using System.Text;
using System.Text.Json;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Routing;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Options;
using Switchboard.Protocol;
using Switchboard.Server.Auth;
using Switchboard.Server.Connections;
using Switchboard.Server.Diagnostics;
using Switchboard.Server.Http;
using Switchboard.Server.Limits;

namespace Switchboard.Server.Channels;

/// <summary>Channels: the WebSocket endpoint, SSE, the publish/history HTTP API and webhook intake.</summary>
public static class ChannelEndpoints
{
    public static IEndpointRouteBuilder MapChannels(this IEndpointRouteBuilder app)
    {
        app.Map("/api/v1/ws", HandleWebSocketAsync);
        var services = app.ServiceProvider;
        var acceptor = services.GetRequiredService<WsAcceptor>();
        var hub = services.GetRequiredService<ChannelHub>();
        var options = services.GetRequiredService<IOptions<SwitchboardOptions>>();
        services.GetService<WsFastUpgrade>()?.Map("/api/v1/ws", "channels", anonymous: false,
            (connection, _, ct) => RunSessionAsync(connection, acceptor, hub, options.Value, ct));
        app.MapGet("/api/v1/sse", HandleSseAsync);

        var api = app.MapGroup("/api/v1/channels").AddEndpointFilter<StoreUnavailableFilter>();
        api.MapPost("/{channel}/messages", PublishAsync);
        api.MapGet("/{channel}/messages", HistoryAsync);

        app.MapPost("/api/v1/webhooks/github", GitHubWebhookAsync).AddEndpointFilter<StoreUnavailableFilter>();
        return app;
    }

    private static async Task HandleWebSocketAsync(HttpContext context, WsAcceptor acceptor, ChannelHub hub, IOptions<SwitchboardOptions> options)
    {
        var connection = await acceptor.AcceptAsync(context, "channels");
        if (connection is not null)
            await RunSessionAsync(connection, acceptor, hub, options.Value, context.RequestAborted);
    }

    // The channel protocol on an accepted connection, whichever way it was accepted (HTTP pipeline or WsFastUpgrade).
    private static async Task RunSessionAsync(WsConnection connection, WsAcceptor acceptor, ChannelHub hub, SwitchboardOptions options, CancellationToken cancellationToken)
    {
        var session = new ChannelSession(connection, hub, options.Limits.MaxSubscriptionsPerConnection);
        connection.TrySendJson(new WelcomeMessage(connection.Id, options.Heartbeat.Interval.TotalSeconds), ProtocolJsonContext.Default.WelcomeMessage);
        try
        {
            await acceptor.RunAsync(connection, session.HandleAsync, cancellationToken);
        }
        finally
        {
            session.Dispose();
        }
    }

    private static async Task HandleSseAsync(HttpContext context, RequestAuth auth, ChannelHub hub, OriginPolicy origins, ConnectionRateLimiter rate,
        ConnectionManager manager, SwitchboardMetrics metrics, IOptions<SwitchboardOptions> options, TimeProvider time, IHostApplicationLifetime lifetime)
    {
        var o = options.Value;
        if (manager.IsShuttingDown)
        {
            await ApiResults.WriteProblemAsync(context, 503, "shutting_down", "the server is shutting down");
            return;
        }
        if (!origins.IsAllowed(context.Request))
        {
            await ApiResults.WriteProblemAsync(context, 403, "origin_not_allowed", "this origin may not connect");
            return;
        }
        if (!rate.TryAcquire(context.Connection.RemoteIpAddress))
        {
            context.Response.Headers.RetryAfter = "1";
            await ApiResults.WriteProblemAsync(context, 429, "rate_limited", "too many new connections from this address");
            return;
        }
        var validation = await auth.AuthenticateAsync(context.Request);
        if (validation.Grants is not { } grants)
        {
            await ApiResults.WriteProblemAsync(context, 401, "unauthorized", validation.Error ?? "unauthorized");
            return;
        }
        var channel = context.Request.Query["channel"].ToString();
        if (!hub.IsValidName(channel, out var error))
        {
            await ApiResults.WriteProblemAsync(context, 400, "bad_channel", error);
            return;
        }
        if (!grants.CanSubscribe(channel))
        {
            await ApiResults.WriteProblemAsync(context, 403, "forbidden", "the token does not grant this channel");
            return;
        }
        StreamPosition? since = null;
        var lastId = context.Request.Headers["Last-Event-ID"].ToString();
        if (string.IsNullOrEmpty(lastId))
            lastId = context.Request.Query["since"].ToString();
        if (!string.IsNullOrEmpty(lastId))
        {
            // Event ids are OFFSET:EPOCH, so a browser's automatic Last-Event-ID also detects a history reset;
            // a bare OFFSET (with an optional ?epoch=) is accepted too.
            var colon = lastId.IndexOf(':', StringComparison.Ordinal);
            var idEpoch = colon >= 0 ? lastId[(colon + 1)..] : null;
            if (!long.TryParse(colon >= 0 ? lastId[..colon] : lastId, NumberStyles.None, CultureInfo.InvariantCulture, out var offset) || idEpoch is { Length: 0 })
            {
                await ApiResults.WriteProblemAsync(context, 400, "bad_since", "Last-Event-ID / since must be OFFSET or OFFSET:EPOCH");
                return;
            }
            var epoch = idEpoch ?? context.Request.Query["epoch"].ToString();
            if (string.IsNullOrEmpty(epoch))
                epoch = (await hub.HistoryAsync(channel, 0, null, 0, context.RequestAborted)).Position.Epoch;
            since = new StreamPosition(offset, epoch);
        }

        if (!manager.TryAcquireUserSlot(grants))
        {
            context.Response.Headers.RetryAfter = "5";
            await ApiResults.WriteProblemAsync(context, 429, "too_many_connections",
                $"at most {o.Limits.MaxConnectionsPerUser} connections (WebSocket and SSE together) per user");
            return;
        }
        try
        {
            await StreamSseAsync(context, channel, since, hub, metrics, o, time, lifetime);
        }
        finally
        {
            manager.ReleaseUserSlot(grants);
        }
    }

    private static async Task StreamSseAsync(HttpContext context, string channel, StreamPosition? since, ChannelHub hub, SwitchboardMetrics metrics,
        SwitchboardOptions o, TimeProvider time, IHostApplicationLifetime lifetime)
    {
        context.Response.Headers.ContentType = "text/event-stream";
        context.Response.Headers.CacheControl = "no-cache";
        context.Response.Headers["X-Accel-Buffering"] = "no";
        context.Features.Get<Microsoft.AspNetCore.Http.Features.IHttpResponseBodyFeature>()?.DisableBuffering();
        var subscriber = new SseSubscriber(o.Limits.MaxQueuedMessages, o.Limits.MaxQueuedBytes, metrics);
        metrics.ConnectionOpened("sse");
        var started = time.GetUtcNow();
        using var stopping = lifetime.ApplicationStopping.Register(subscriber.Stop);
        try
        {
            await hub.SubscribeAsync(channel, subscriber, since, result =>
            {
                var hello = JsonSerializer.Serialize(new SubscribedMessage(channel, result.Position.Offset, result.Position.Epoch, result.Recovered, null), ProtocolJsonContext.Default.SubscribedMessage);
                subscriber.Enqueue(Encoding.UTF8.GetBytes($"retry: 1000\nevent: subscribed\ndata: {hello}\n\n"));
                foreach (var m in result.Missed)
                    subscriber.Deliver(m);
            }, context.RequestAborted);
            await subscriber.RunAsync(context.Response, o.Heartbeat.Interval, time, context.RequestAborted);
        }
        catch (OperationCanceledException)
        {
        }
        finally
        {
            hub.Unsubscribe(channel, subscriber);
            metrics.ConnectionClosed("sse", 1000, time.GetUtcNow() - started);
        }
    }

    private static async Task<IResult> PublishAsync(string channel, HttpContext context, RequestAuth auth, ChannelHub hub, IOptions<SwitchboardOptions> options)
    {
        var validation = await auth.AuthenticateHeaderAsync(context.Request);
        if (validation.Grants is not { } grants)
            return ApiResults.Unauthorized(validation.Error ?? "unauthorized");
        if (!hub.IsValidName(channel, out var error))
            return ApiResults.BadRequest(error);
        if (!grants.CanPublish(channel))
            return ApiResults.Forbidden("the credentials do not grant publishing to this channel");
        var body = await ReadBodyAsync(context, options.Value.Limits.MaxHttpBodyBytes);
        if (body is null)
            return ApiResults.Problem(413, "too_large", $"body exceeds {options.Value.Limits.MaxHttpBodyBytes} bytes");
        PublishRequest? request;
        try
        {
            request = JsonSerializer.Deserialize(body, ProtocolJsonContext.Default.PublishRequest);
        }
        catch (JsonException ex)
        {
            return ApiResults.BadRequest("body is not valid JSON: " + ex.Message);
        }
        if (request is null || request.Data.ValueKind == JsonValueKind.Undefined)
            return ApiResults.BadRequest("body must be {\"data\": <any JSON>}");
        var position = await hub.PublishAsync(channel, ChannelBroadcast.NormalizeData(request.Data), request.ExcludeConnection, context.RequestAborted);
        return Results.Json(new PublishResult(position.Offset, position.Epoch), ProtocolJsonContext.Default.PublishResult);
    }

    private static async Task<IResult> HistoryAsync(string channel, HttpContext context, RequestAuth auth, ChannelHub hub, IOptions<SwitchboardOptions> options,
        long? since, string? epoch, int? limit)
    {
        var validation = await auth.AuthenticateAsync(context.Request);
        if (validation.Grants is not { } grants)
            return ApiResults.Unauthorized(validation.Error ?? "unauthorized");
        if (!hub.IsValidName(channel, out var error))
            return ApiResults.BadRequest(error);
        if (!grants.CanSubscribe(channel))
            return ApiResults.Forbidden("the credentials do not grant this channel");
        if (since < 0)
            return ApiResults.BadRequest("since must not be negative");
        var max = options.Value.Channels.HistorySize;
        var take = Math.Clamp(limit ?? max, 0, Math.Max(max, 1));
        var (position, recovered, messages) = await hub.HistoryAsync(channel, since, epoch, take, context.RequestAborted);
        var items = messages.Select(m => new HistoryItem(m.Offset, JsonElement.Parse(m.Data.Span), m.Timestamp)).ToList();
        return Results.Json(new HistoryResponse(channel, position.Offset, position.Epoch, recovered, items), ProtocolJsonContext.Default.HistoryResponse);
    }

    private static async Task<IResult> GitHubWebhookAsync(HttpContext context, ChannelHub hub, IOptions<SwitchboardOptions> options)
    {
        var o = options.Value;
        var secret = o.Auth.GitHubWebhookSecret;
        if (string.IsNullOrEmpty(secret))
            return ApiResults.NotFound("webhook intake is not configured (set Switchboard:Auth:GitHubWebhookSecret)");
        var body = await ReadBodyAsync(context, o.Limits.MaxHttpBodyBytes);
        if (body is null)
            return ApiResults.Problem(413, "too_large", $"body exceeds {o.Limits.MaxHttpBodyBytes} bytes");
        var signature = context.Request.Headers["X-Hub-Signature-256"].ToString();
        if (!VerifyGitHubSignature(secret, body, signature))
            return ApiResults.Unauthorized("X-Hub-Signature-256 does not match the payload");
        JsonElement payload;
        try
        {
            payload = JsonDocument.Parse(body).RootElement;
        }
        catch (JsonException)
        {
            return ApiResults.BadRequest("payload is not JSON");
        }
        var repo = payload.ValueKind == JsonValueKind.Object && payload.TryGetProperty("repository", out var r) && r.ValueKind == JsonValueKind.Object &&
                   r.TryGetProperty("full_name", out var fn) && fn.ValueKind == JsonValueKind.String ? fn.GetString()! : "unknown";
        var channel = o.Auth.GitHubWebhookChannel.Replace("{repo}", repo, StringComparison.Ordinal);
        if (!hub.IsValidName(channel, out var error))
            return ApiResults.BadRequest("target channel is invalid: " + error);
        var buffer = new System.Buffers.ArrayBufferWriter<byte>(body.Length + 128);
        using (var w = new Utf8JsonWriter(buffer))
        {
            w.WriteStartObject();
            w.WriteString("source", "github");
            w.WriteString("event", context.Request.Headers["X-GitHub-Event"].ToString());
            w.WriteString("delivery", context.Request.Headers["X-GitHub-Delivery"].ToString());
            w.WritePropertyName("payload");
            payload.WriteTo(w);
            w.WriteEndObject();
        }
        var position = await hub.PublishAsync(channel, buffer.WrittenMemory, null, context.RequestAborted);
        return Results.Json(new PublishResult(position.Offset, position.Epoch), ProtocolJsonContext.Default.PublishResult);
    }

    /// <summary>Checks <c>sha256=HEX</c> against HMAC-SHA256(secret, body) in constant time.</summary>
    public static bool VerifyGitHubSignature(string secret, ReadOnlySpan<byte> body, string header)
    {
        const string prefix = "sha256=";
        if (!header.StartsWith(prefix, StringComparison.Ordinal) || header.Length != prefix.Length + 64)
            return false;
        Span<byte> presented = stackalloc byte[32];
        try
        {
            if (Convert.FromHexString(header.AsSpan(prefix.Length), presented, out _, out var written) != System.Buffers.OperationStatus.Done || written != 32)
                return false;
        }
        catch (FormatException)
        {
            return false;
        }
        Span<byte> expected = stackalloc byte[32];
        HMACSHA256.HashData(Encoding.UTF8.GetBytes(secret), body, expected);
        return CryptographicOperations.FixedTimeEquals(expected, presented);
    }

    /// <summary>Reads a request body up to <paramref name="max"/> bytes; null when it is larger.</summary>
    internal static async Task<byte[]?> ReadBodyAsync(HttpContext context, int max)
    {
        if (context.Request.ContentLength > max)
            return null;
        using var ms = new MemoryStream();
        var buffer = new byte[16 * 1024];
        int read;
        while ((read = await context.Request.Body.ReadAsync(buffer, context.RequestAborted)) > 0)
        {
            if (ms.Length + read > max)
                return null;
            ms.Write(buffer, 0, read);
        }
        return ms.ToArray();
    }
}
