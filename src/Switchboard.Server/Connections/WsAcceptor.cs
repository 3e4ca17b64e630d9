using System.Net.WebSockets;
using Microsoft.AspNetCore.Http;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Options;
using Switchboard.Protocol;
using Switchboard.Server.Auth;
using Switchboard.Server.Diagnostics;
using Switchboard.Server.Http;
using Switchboard.Server.Limits;

namespace Switchboard.Server.Connections;

/// <summary>
/// The one way every WebSocket endpoint accepts a connection: origin check (403), per-IP rate (429), upgrade,
/// token validation (close 4401), per-user limit (close 4429), registration. Refusals after the upgrade use close
/// codes because browsers cannot read the HTTP status of a failed upgrade.
/// </summary>
public sealed partial class WsAcceptor(
    ConnectionManager manager,
    RequestAuth auth,
    ConnectionRateLimiter rateLimiter,
    OriginPolicy origins,
    SwitchboardMetrics metrics,
    ILogger<WsAcceptor> logger)
{
    /// <summary>
    /// Accepts a connection, or answers the request and returns null. With <paramref name="anonymous"/> a connection
    /// without a token is accepted with anonymous grants (rooms use the room secret instead), but a token that is
    /// present must still be valid. <paramref name="inlineWrites"/>: see <see cref="ConnectionSettings.InlineWrites"/>.
    /// </summary>
    public async Task<WsConnection?> AcceptAsync(HttpContext context, string endpoint, bool anonymous = false, bool inlineWrites = false)
    {
        if (!context.WebSockets.IsWebSocketRequest)
        {
            await ApiResults.WriteProblemAsync(context, StatusCodes.Status400BadRequest, "websocket_required", "this endpoint accepts WebSocket upgrades only");
            return null;
        }
        if (manager.IsShuttingDown)
        {
            context.Response.Headers.RetryAfter = "1";
            await ApiResults.WriteProblemAsync(context, StatusCodes.Status503ServiceUnavailable, "shutting_down", "the server is shutting down");
            return null;
        }
        if (!origins.IsAllowed(context.Request))
        {
            Log.OriginRefused(logger, context.Request.Headers.Origin.ToString(), endpoint);
            await ApiResults.WriteProblemAsync(context, StatusCodes.Status403Forbidden, "origin_not_allowed", "this origin may not connect");
            return null;
        }
        var ip = context.Connection.RemoteIpAddress;
        if (!rateLimiter.TryAcquire(ip))
        {
            context.Response.Headers.RetryAfter = "1";
            await ApiResults.WriteProblemAsync(context, StatusCodes.Status429TooManyRequests, "rate_limited", "too many new connections from this address");
            return null;
        }

        TokenValidation validation;
        var hasCredential = auth.FindToken(context.Request) is not null;
        if (anonymous && !hasCredential)
            validation = new(new Grants("anonymous:" + Guid.NewGuid().ToString("N")[..12], [], [], [], [], [], null), null);
        else
            validation = await auth.AuthenticateAsync(context.Request);

        var socket = await context.WebSockets.AcceptWebSocketAsync(new WebSocketAcceptContext
        {
            KeepAliveInterval = TimeSpan.Zero, // the application heartbeat (HeartbeatService) replaces protocol keep-alives
            DangerousEnableCompression = false,
        });
        var connection = manager.Create(socket, endpoint, validation.Grants ?? new Grants("unauthenticated", [], [], [], [], [], null), ip, inlineWrites);
        if (!validation.IsValid)
        {
            await RejectAsync(connection, CloseCodes.Unauthorized, validation.Error ?? "unauthorized");
            return null;
        }
        if (!manager.TryRegister(connection))
        {
            await RejectAsync(connection, CloseCodes.TooManyRequests, "too many connections for this user");
            return null;
        }
        return connection;
    }

    /// <summary>Refuses an accepted but unregistered connection with a close code (counted in metrics).</summary>
    public Task RejectAsync(WsConnection connection, int code, string reason)
    {
        metrics.ConnectionRejected(connection.Endpoint, code);
        return connection.RejectAsync(code, reason);
    }

    /// <summary>Runs a registered connection to its end and unregisters it.</summary>
    public async Task RunAsync(WsConnection connection, MessageHandler handler, CancellationToken cancellationToken)
    {
        try
        {
            await connection.RunAsync(handler, cancellationToken);
        }
        finally
        {
            manager.Unregister(connection);
        }
    }

    /// <summary>Closes a registered connection before running it (resource not found, forbidden) and unregisters it.</summary>
    public async Task CloseRegisteredAsync(WsConnection connection, int code, string reason)
    {
        try
        {
            await connection.RejectAsync(code, reason);
        }
        finally
        {
            manager.Unregister(connection);
        }
    }

    private static partial class Log
    {
        [LoggerMessage(1201, LogLevel.Information, "Refused origin '{Origin}' on {Endpoint}.")]
        public static partial void OriginRefused(ILogger logger, string origin, string endpoint);
    }
}

/// <summary>Browser origin allow-list (see <see cref="SwitchboardOptions.AllowedOrigins"/>).</summary>
public sealed class OriginPolicy(IOptions<SwitchboardOptions> options)
{
    private readonly string[] _allowed = [.. options.Value.AllowedOrigins.Select(o => o.TrimEnd('/'))];

    public bool IsAllowed(HttpRequest request)
    {
        var origin = request.Headers.Origin.ToString();
        if (string.IsNullOrEmpty(origin))
            return true; // not a browser
        foreach (var allowed in _allowed)
        {
            if (allowed == "*" || string.Equals(allowed, origin, StringComparison.OrdinalIgnoreCase) || Auth.Pattern.Matches(allowed.ToLowerInvariant(), origin.ToLowerInvariant()))
                return true;
        }
        // Same origin: the Origin's authority equals the Host header.
        return Uri.TryCreate(origin, UriKind.Absolute, out var uri) &&
               string.Equals(uri.Authority, request.Host.Value, StringComparison.OrdinalIgnoreCase);
    }
}
