using System.Net;
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

        var request = context.Request;
        var validation = await ValidateAsync(RequestAuth.BearerToken(request), auth.FindToken(request), anonymous);
        var socket = await context.WebSockets.AcceptWebSocketAsync(new WebSocketAcceptContext
        {
            KeepAliveInterval = TimeSpan.Zero, // the application heartbeat (HeartbeatService) replaces protocol keep-alives
            DangerousEnableCompression = false,
        });
        return await CompleteAsync(socket, endpoint, ip, validation, inlineWrites);
    }

    /// <summary>
    /// For an upgrade read without the HTTP pipeline (<see cref="WsFastUpgrade"/>): every check that answers with an
    /// HTTP status (shutting down, origin, per-IP rate). False: let the HTTP pipeline handle the request, which
    /// repeats the checks and answers with the documented status.
    /// </summary>
    internal bool TryAdmit(string? origin, string? host, IPAddress? remoteIp) =>
        !manager.IsShuttingDown && origins.IsAllowed(origin, host) && rateLimiter.TryAcquire(remoteIp);

    /// <summary>
    /// Validates the credential of an upgrade: <paramref name="bearer"/> may be the API key; <paramref name="token"/> is
    /// the JWT found in the query, header or cookie. With <paramref name="anonymous"/> and no token, anonymous grants.
    /// </summary>
    internal ValueTask<TokenValidation> ValidateAsync(string? bearer, string? token, bool anonymous) =>
        anonymous && token is null
            ? ValueTask.FromResult(new TokenValidation(new Grants("anonymous:" + Guid.NewGuid().ToString("N")[..12], [], [], [], [], [], null), null))
            : auth.AuthenticateAsync(bearer, token);

    /// <summary>After the upgrade: refuses an invalid credential (4401) or a user over the limit (4429), else registers the connection.</summary>
    internal async Task<WsConnection?> CompleteAsync(WebSocket socket, string endpoint, IPAddress? ip, TokenValidation validation, bool inlineWrites)
    {
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

    /// <summary>Runs a registered connection to its end (it unregisters itself when it finishes).</summary>
    public Task RunAsync(WsConnection connection, MessageHandler handler, CancellationToken cancellationToken) =>
        connection.RunAsync(handler, cancellationToken);

    /// <summary>Closes a registered connection before running it (resource not found, forbidden) and unregisters it.</summary>
    public Task CloseRegisteredAsync(WsConnection connection, int code, string reason) => connection.RejectAsync(code, reason);

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

    public bool IsAllowed(HttpRequest request) => IsAllowed(request.Headers.Origin.ToString(), request.Host.Value);

    /// <summary>The same for header values already read: <paramref name="origin"/> (empty: not a browser) and the <c>Host</c> header.</summary>
    public bool IsAllowed(string? origin, string? host)
    {
        if (string.IsNullOrEmpty(origin))
            return true; // not a browser
        foreach (var allowed in _allowed)
        {
            if (allowed == "*" || string.Equals(allowed, origin, StringComparison.OrdinalIgnoreCase) || Auth.Pattern.Matches(allowed.ToLowerInvariant(), origin.ToLowerInvariant()))
                return true;
        }
        // Same origin: the Origin's authority equals the Host header.
        return Uri.TryCreate(origin, UriKind.Absolute, out var uri) &&
               string.Equals(uri.Authority, host, StringComparison.OrdinalIgnoreCase);
    }
}
