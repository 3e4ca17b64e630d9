using System.Collections.Frozen;
using System.IO.Pipelines;
using System.Net;
using System.Net.WebSockets;
using System.Text;
using Microsoft.AspNetCore.Connections;
using Microsoft.AspNetCore.Server.Kestrel.Core;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Options;
using Switchboard.Server.Auth;

namespace Switchboard.Server.Connections;

/// <summary>Runs a registered connection of one endpoint to its end. <paramref name="tokenPresented"/>: the upgrade carried a token.</summary>
public delegate Task UpgradedConnectionHandler(WsConnection connection, bool tokenPresented, CancellationToken cancellationToken);

/// <summary>
/// Accepts WebSocket upgrades to the high-fan-out endpoints (channels, rooms) on the connection itself, before Kestrel's
/// HTTP/1.1 layer: a Kestrel connection middleware reads the first request head; when it is a well-formed upgrade to a
/// registered path that passes the same origin, rate and shutdown checks, it answers 101 and runs the WebSocket over
/// the transport's pipes. An idle connection then holds the socket, its two pipes, the WebSocket and our session, but
/// no HTTP connection, request, response, header dictionaries, HttpContext or request-scoped services (about half of
/// what an idle WebSocket costs when accepted through the HTTP pipeline; see docs/benchmarks.md).
/// <para>
/// Everything else goes on to the HTTP pipeline untouched, with the bytes read so far still unconsumed: other paths,
/// TLS (the middleware runs outside HTTPS), HTTP/2, any unusual or malformed head, and upgrades that would be refused
/// with an HTTP status (origin 403, rate 429, shutting down 503), which the endpoint then answers as before. Only the
/// first request of a connection is examined. Behaviour after the 101 (token validation with 4401, per-user limits,
/// close codes, heartbeats, shutdown) is the same code as for the HTTP path. Off with
/// <see cref="SwitchboardOptions.DirectWebSocketUpgrade"/>.
/// </para>
/// </summary>
public sealed partial class WsFastUpgrade(
    WsAcceptor acceptor,
    RequestAuth auth,
    IOptions<SwitchboardOptions> options,
    IOptions<KestrelServerOptions> kestrel,
    ILogger<WsFastUpgrade> logger)
{
    private sealed record Route(string Endpoint, bool Anonymous, UpgradedConnectionHandler Handler);

    // A head that needs more reads than this (a client trickling bytes) is left to Kestrel, which has its own defences;
    // each read re-parses what is buffered, so this bounds the work per connection.
    private const int MaxReadsPerHead = 32;

    private static readonly byte[] SwitchingProtocols = "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Accept: "u8.ToArray();

    private readonly Dictionary<string, Route> _building = new(StringComparer.Ordinal);
    private FrozenDictionary<string, Route>? _routes;
    private readonly bool _enabled = options.Value.DirectWebSocketUpgrade;
    private readonly bool _batchedWrites = options.Value.BatchedWebSocketWrites;
    private readonly string _tunnelDomain = options.Value.TunnelDomain;
    private readonly TimeSpan _headTimeout = kestrel.Value.Limits.RequestHeadersTimeout;

    /// <summary>Registers a path (exact, case-sensitive, as the HTTP endpoint mapped for the same handler). Call before the server starts.</summary>
    public void Map(string path, string endpoint, bool anonymous, UpgradedConnectionHandler handler)
    {
        if (_routes is not null)
            throw new InvalidOperationException("routes must be mapped before the server accepts connections");
        _building[path] = new Route(endpoint, anonymous, handler);
    }

    /// <summary>The Kestrel connection middleware.</summary>
    public Task OnConnectionAsync(ConnectionContext context, ConnectionDelegate next)
    {
        var routes = _routes ??= _building.ToFrozenDictionary(StringComparer.Ordinal);
        // Disabled: straight through, without an async frame held for the connection's life.
        return _enabled && routes.Count > 0 ? AcceptOrPassAsync(context, next, routes) : next(context);
    }

    private async Task AcceptOrPassAsync(ConnectionContext context, ConnectionDelegate next, FrozenDictionary<string, Route> routes)
    {
        var (head, route, aborted) = await ReadHeadAsync(context, routes);
        if (aborted)
            return;
        if (head is null || route is null)
        {
            await next(context); // the bytes read so far are still unconsumed: Kestrel reads the same request
            return;
        }

        // One async frame for the whole connection (this one): it is held by every idle connection, as is every local
        // that lives across an await, so the request head is dropped once read.
        WebSocket? socket = null;
        try
        {
            var bearer = RequestAuth.BearerToken(head.Authorization);
            var token = auth.FindToken(head.Query, head.Authorization, head.Cookie);
            var accept = UpgradeHead.AcceptValue(head.Key);
            head = null;
            var validation = await acceptor.ValidateAsync(bearer, token, route.Anonymous);
            var tokenPresented = token is not null;
            bearer = token = null;
            if (!await WriteSwitchingProtocolsAsync(context.Transport.Output, accept, context.ConnectionClosed))
            {
                context.Abort();
                return;
            }
            var stream = new DuplexPipeStream(context.Transport);
            socket = WebSocket.CreateFromStream(stream, new WebSocketCreationOptions { IsServer = true, KeepAliveInterval = TimeSpan.Zero });
            var connection = await acceptor.CompleteAsync(socket, route.Endpoint, (context.RemoteEndPoint as IPEndPoint)?.Address, validation, inlineWrites: false);
            validation = default;
            if (connection is not null)
            {
                if (_batchedWrites)
                    connection.UseDirectWrites(stream);
                await route.Handler(connection, tokenPresented, context.ConnectionClosed);
            }
        }
        catch (Exception ex) when (ex is IOException or OperationCanceledException or ConnectionResetException)
        {
            // The peer went away during the handshake.
        }
        catch (Exception ex)
        {
            Log.Failed(logger, ex, route.Endpoint);
        }
        finally
        {
            // A completed close handshake ends gracefully (queued bytes are flushed, then FIN); anything else is aborted.
            if (socket is null || socket.State != WebSocketState.Closed)
                context.Abort();
            socket?.Dispose();
        }
    }

    // Reads until the head is a matching upgrade (consumed, returned with its route) or cannot be one (nothing consumed
    // or examined, null: the caller hands the connection to Kestrel). Aborts the connection when the head does not
    // arrive within Kestrel's RequestHeadersTimeout or the peer resets it.
    private async Task<(UpgradeHead? Head, Route? Route, bool Aborted)> ReadHeadAsync(ConnectionContext context, FrozenDictionary<string, Route> routes)
    {
        var input = context.Transport.Input;
        using var timeout = CancellationTokenSource.CreateLinkedTokenSource(context.ConnectionClosed);
        timeout.CancelAfter(_headTimeout);
        try
        {
            var result = await input.ReadAsync(timeout.Token);
            for (var round = 1; ; round++)
            {
                var buffer = result.Buffer;
                var status = UpgradeHead.TryParse(buffer, routes.Keys, out var head, out var end);
                if (status == UpgradeHeadStatus.Matched && !IsTunnelHost(head!.Host) &&
                    acceptor.TryAdmit(head.Origin, head.Host, (context.RemoteEndPoint as IPEndPoint)?.Address))
                {
                    input.AdvanceTo(end); // the head is consumed; what follows is the WebSocket's
                    return (head, routes[head.Path], false);
                }
                // Nothing examined either (examined may not move backwards later): the next read waits for more
                // bytes by asking for more than are buffered.
                input.AdvanceTo(buffer.Start);
                if (status != UpgradeHeadStatus.Incomplete || result.IsCompleted || result.IsCanceled || round >= MaxReadsPerHead)
                    return (null, null, false);
                result = await input.ReadAtLeastAsync((int)buffer.Length + 1, timeout.Token);
            }
        }
        catch (Exception ex) when (ex is OperationCanceledException or IOException)
        {
            context.Abort(); // no complete head in time, or the peer reset the connection
            return (null, null, true);
        }
    }

    private static async ValueTask<bool> WriteSwitchingProtocolsAsync(PipeWriter output, string accept, CancellationToken cancellationToken)
    {
        var length = SwitchingProtocols.Length + accept.Length + 4;
        var span = output.GetSpan(length);
        SwitchingProtocols.CopyTo(span);
        var written = SwitchingProtocols.Length + Encoding.ASCII.GetBytes(accept, span[SwitchingProtocols.Length..]);
        "\r\n\r\n"u8.CopyTo(span[written..]);
        output.Advance(written + 4);
        var flush = await output.FlushAsync(cancellationToken);
        return !flush.IsCompleted && !flush.IsCanceled;
    }

    // A superset of what the tunnel router claims (any name under the tunnel domain), so tunnel routing always wins.
    private bool IsTunnelHost(string host)
    {
        if (host.StartsWith('['))
            return false; // an IPv6 literal
        var colon = host.IndexOf(':');
        return Tunnels.TunnelForwarder.IsUnderDomain(colon < 0 ? host : host.AsSpan(0, colon), _tunnelDomain);
    }

    private static partial class Log
    {
        [LoggerMessage(1211, LogLevel.Error, "WebSocket connection on {Endpoint} failed.")]
        public static partial void Failed(ILogger logger, Exception exception, string endpoint);
    }
}
