using System.Buffers;
using System.Diagnostics.Metrics;
using System.Globalization;
using System.Net;
using System.Net.Http.Headers;
using System.Net.WebSockets;
using System.Security.Cryptography;
using System.Text;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Http.Features;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Options;
using Microsoft.Extensions.Primitives;
using Switchboard.Protocol.Tunnels;
using Switchboard.Server.Diagnostics;
using Switchboard.Server.Nodes;

namespace Switchboard.Server.Tunnels;

/// <summary>Who a relayed request really came from, as vouched for by the node that received it.</summary>
public sealed record RelayOrigin(string FromNode, IPAddress? ClientIp, string Scheme);

/// <summary>What the relay header of a request says.</summary>
public enum RelayProof
{
    /// <summary>No relay header: an ordinary public request.</summary>
    Absent,

    /// <summary>A request relayed by another node of this deployment: serve it locally, never relay it again.</summary>
    Valid,

    /// <summary>A relay header that does not verify (forged, or another deployment's key, or expired): refuse.</summary>
    Invalid,
}

/// <summary>
/// Cross-node tunnel routing. A request for a tunnel whose agent is connected to another node is relayed to that
/// node's advertised address over plain HTTP (bodies streamed both ways, WebSocket upgrades included). The hop carries
/// <see cref="Header"/>: the sending node, the public client's address and scheme, a timestamp and an HMAC-SHA256 of
/// them keyed with the API key every node shares, so the owning node trusts the client address, serves the request
/// itself and never relays it again, and nobody without the API key can forge it.
/// </summary>
public sealed partial class TunnelRelay : IDisposable
{
    /// <summary>The header of a relayed request: <c>v1 FROM CLIENT-IP SCHEME UNIX-SECONDS SIGNATURE</c> (fields URL-escaped).</summary>
    public const string Header = "X-Switchboard-Relay";

    /// <summary>How far a relay timestamp may be from this node's clock. 2 minutes tolerates clock drift between machines while bounding replays.</summary>
    public static readonly TimeSpan MaxSkew = TimeSpan.FromMinutes(2);

    private const int CopyBufferBytes = 64 * 1024;
    private static readonly UriCreationOptions ExactUri = new() { DangerousDisablePathAndQueryCanonicalization = true };

    private readonly ITunnelRegistry _registry;
    private readonly INodeRegistry _nodes;
    private readonly TunnelOptions _options;
    private readonly TimeProvider _time;
    private readonly ILogger<TunnelRelay> _logger;
    private readonly byte[] _key;
    private readonly SocketsHttpHandler _handler;
    private readonly HttpMessageInvoker _invoker;
    private readonly Counter<long> _forwarded;

    public TunnelRelay(ITunnelRegistry registry, INodeRegistry nodes, IOptions<SwitchboardOptions> options, IOptions<TunnelOptions> tunnelOptions,
        IMeterFactory meterFactory, TimeProvider time, ILogger<TunnelRelay> logger)
    {
        _registry = registry;
        _nodes = nodes;
        _options = tunnelOptions.Value;
        _time = time;
        _logger = logger;
        var apiKey = options.Value.Auth.ApiKey;
        // Domain separation: the relay key is derived from the API key, never the API key itself on the wire.
        _key = apiKey.Length == 0 ? [] : HMACSHA256.HashData(Encoding.UTF8.GetBytes(apiKey), "switchboard tunnel relay v1"u8);
        _handler = new SocketsHttpHandler
        {
            AllowAutoRedirect = false,
            AutomaticDecompression = DecompressionMethods.None,
            UseCookies = false,
            UseProxy = false,
            ConnectTimeout = TimeSpan.FromSeconds(5),
            PooledConnectionIdleTimeout = TimeSpan.FromSeconds(60),
            PooledConnectionLifetime = TimeSpan.FromMinutes(5),
            MaxResponseHeadersLength = 64,
        };
        _invoker = new HttpMessageInvoker(_handler, disposeHandler: false);
        _forwarded = meterFactory.Create(SwitchboardMetrics.MeterName).CreateCounter<long>("switchboard.tunnels.forwarded", "{request}",
            "Tunnel requests relayed to the node holding the agent, by kind (http or websocket) and result (ok or failed).");
    }

    /// <summary>True when requests may be relayed: a multi-node store and an API key shared by the nodes.</summary>
    public bool Enabled => _nodes is not SingleNodeRegistry && _key.Length > 0;

    /// <summary>Reads and verifies the relay header of a request.</summary>
    public RelayProof Verify(HttpRequest request, out RelayOrigin? origin)
    {
        origin = null;
        if (!request.Headers.TryGetValue(Header, out var values))
            return RelayProof.Absent;
        if (values.Count != 1 || _key.Length == 0)
            return RelayProof.Invalid;
        var parts = (values[0] ?? "").Split(' ');
        if (parts.Length != 6 || parts[0] != "v1" || !long.TryParse(parts[4], NumberStyles.None, CultureInfo.InvariantCulture, out var seconds))
            return RelayProof.Invalid;
        var from = Uri.UnescapeDataString(parts[1]);
        var ip = Uri.UnescapeDataString(parts[2]);
        var scheme = Uri.UnescapeDataString(parts[3]);
        var now = _time.GetUtcNow().ToUnixTimeSeconds();
        if (Math.Abs(now - seconds) > MaxSkew.TotalSeconds)
            return RelayProof.Invalid;
        var expected = Sign(from, ip, scheme, seconds);
        byte[] presented;
        try
        {
            presented = Base64UrlDecode(parts[5]);
        }
        catch (FormatException)
        {
            return RelayProof.Invalid;
        }
        if (!CryptographicOperations.FixedTimeEquals(expected, presented) || scheme is not ("http" or "https"))
            return RelayProof.Invalid;
        origin = new RelayOrigin(from, IPAddress.TryParse(ip, out var address) ? address : null, scheme);
        return RelayProof.Valid;
    }

    /// <summary>The relay header value this node attaches to a request it relays.</summary>
    public string CreateHeader(IPAddress? clientIp, string scheme)
    {
        var ip = clientIp is null ? "unknown" : (clientIp.IsIPv4MappedToIPv6 ? clientIp.MapToIPv4() : clientIp).ToString();
        var seconds = _time.GetUtcNow().ToUnixTimeSeconds();
        var from = _nodes.NodeId;
        var signature = Convert.ToBase64String(Sign(from, ip, scheme, seconds)).Replace('+', '-').Replace('/', '_').TrimEnd('=');
        return string.Join(' ', "v1", Uri.EscapeDataString(from), Uri.EscapeDataString(ip), Uri.EscapeDataString(scheme),
            seconds.ToString(CultureInfo.InvariantCulture), signature);
    }

    private byte[] Sign(string from, string ip, string scheme, long seconds) =>
        HMACSHA256.HashData(_key, Encoding.UTF8.GetBytes($"{from}\n{ip}\n{scheme}\n{seconds.ToString(CultureInfo.InvariantCulture)}"));

    private static byte[] Base64UrlDecode(string text)
    {
        var s = text.Replace('-', '+').Replace('_', '/');
        return Convert.FromBase64String(s.PadRight(s.Length + (4 - s.Length % 4) % 4, '='));
    }

    /// <summary>
    /// Relays the request when another node holds tunnel <paramref name="name"/>. Returns false (nothing written) when no
    /// node holds it, so the caller answers 404; answers 502 itself when the holding node is gone or unreachable.
    /// </summary>
    public async Task<bool> TryRelayAsync(HttpContext context, string name)
    {
        TunnelRegistration? registration;
        NodeInfo? node = null;
        try
        {
            registration = await _registry.GetAsync(name, context.RequestAborted);
            if (registration is null || registration.NodeId == _nodes.NodeId)
                return false;
            node = await _nodes.GetAsync(registration.NodeId, context.RequestAborted);
        }
        catch (Exception ex) when (ex is not OperationCanceledException and not OutOfMemoryException)
        {
            Log.LookupFailed(_logger, ex, name);
            await TunnelForwarder.WriteErrorAsync(context, 502, "tunnel_lookup_failed", "Bad gateway.", $"Tunnel '{name}': the tunnel registry could not be read.");
            return true;
        }
        if (node?.Address is null || !Uri.TryCreate(node.Address, UriKind.Absolute, out var baseUri))
        {
            await TunnelForwarder.WriteErrorAsync(context, 502, "tunnel_node_unreachable", "Bad gateway.",
                $"Tunnel '{name}' is held by node '{registration.NodeId}', which is not running; the agent will reconnect to a live node.");
            return true;
        }
        var websocket = context.WebSockets.IsWebSocketRequest;
        var ok = websocket ? await RelayWebSocketAsync(context, name, node, baseUri) : await RelayHttpAsync(context, name, node, baseUri);
        _forwarded.Add(1, new KeyValuePair<string, object?>("kind", websocket ? "websocket" : "http"), new KeyValuePair<string, object?>("result", ok ? "ok" : "failed"));
        return true;
    }

    /// <summary>The request's own path and query on the owner's address (kept byte for byte: no canonicalization).</summary>
    private static Uri Target(Uri baseUri, HttpRequest request, bool websocket)
    {
        var scheme = websocket ? (baseUri.Scheme == "https" ? "wss" : "ws") : baseUri.Scheme;
        var path = request.PathBase.Add(request.Path).ToUriComponent();
        if (path.Length == 0)
            path = "/";
        return new Uri($"{scheme}://{baseUri.Authority}{path}{request.QueryString.ToUriComponent()}", ExactUri);
    }

    private static bool SkipRequestHeader(string key) =>
        HopByHop.IsHopByHop(key) || key.Equals("Host", StringComparison.OrdinalIgnoreCase) || key.Equals("Expect", StringComparison.OrdinalIgnoreCase) ||
        key.Equals(Header, StringComparison.OrdinalIgnoreCase);

    private async Task<bool> RelayHttpAsync(HttpContext context, string name, NodeInfo node, Uri baseUri)
    {
        var request = context.Request;
        using var message = new HttpRequestMessage(new HttpMethod(request.Method), Target(baseUri, request, websocket: false))
        {
            Version = HttpVersion.Version11,
            VersionPolicy = HttpVersionPolicy.RequestVersionOrLower,
        };
        var hasBody = context.Features.Get<IHttpRequestBodyDetectionFeature>()?.CanHaveBody ?? request.ContentLength > 0;
        if (hasBody)
            message.Content = new StreamContent(request.Body, CopyBufferBytes);
        foreach (var (key, values) in request.Headers)
        {
            if (SkipRequestHeader(key))
                continue;
            if (key.StartsWith("Content-", StringComparison.OrdinalIgnoreCase))
                message.Content?.Headers.TryAddWithoutValidation(key, (IEnumerable<string>)values!);
            else
                message.Headers.TryAddWithoutValidation(key, (IEnumerable<string>)values!);
        }
        message.Headers.Host = request.Host.Value;
        message.Headers.TryAddWithoutValidation(Header, CreateHeader(context.Connection.RemoteIpAddress, request.Scheme));

        using var cancel = CancellationTokenSource.CreateLinkedTokenSource(context.RequestAborted);
        // The owner answers within its own first-byte timeout (504 from there); this only catches a node that hangs.
        cancel.CancelAfter(_options.FirstByteTimeout + TimeSpan.FromSeconds(10));
        HttpResponseMessage response;
        try
        {
            response = await _invoker.SendAsync(message, cancel.Token);
        }
        catch (Exception ex) when (ex is HttpRequestException or OperationCanceledException or IOException)
        {
            if (context.RequestAborted.IsCancellationRequested)
                return false;
            Log.RelayFailed(_logger, ex, name, node.Id);
            if (ex is OperationCanceledException)
                await TunnelForwarder.WriteErrorAsync(context, 504, "tunnel_timeout", "Gateway timeout.", $"Tunnel '{name}': node '{node.Id}' did not answer in time.");
            else
                await TunnelForwarder.WriteErrorAsync(context, 502, "tunnel_node_unreachable", "Bad gateway.", $"Tunnel '{name}': node '{node.Id}' could not be reached.");
            return false;
        }
        cancel.CancelAfter(Timeout.InfiniteTimeSpan);
        using (response)
        {
            var http = context.Response;
            http.StatusCode = (int)response.StatusCode;
            CopyResponseHeaders(response.Headers.NonValidated, http);
            CopyResponseHeaders(response.Content.Headers.NonValidated, http);
            context.Features.Get<IHttpResponseBodyFeature>()?.DisableBuffering();
            var buffer = ArrayPool<byte>.Shared.Rent(CopyBufferBytes);
            try
            {
                await using var body = await response.Content.ReadAsStreamAsync(cancel.Token);
                int read;
                // Each read is written and flushed at once: server-sent events arrive as they are produced.
                while ((read = await body.ReadAsync(buffer, cancel.Token)) > 0)
                {
                    await http.Body.WriteAsync(buffer.AsMemory(0, read), cancel.Token);
                    await http.Body.FlushAsync(cancel.Token);
                }
                if (response.TrailingHeaders.NonValidated.Count > 0 && http.SupportsTrailers())
                {
                    foreach (var (key, values) in response.TrailingHeaders.NonValidated)
                        http.AppendTrailer(key, new StringValues([.. values]));
                }
                return true;
            }
            catch (Exception ex) when (ex is HttpRequestException or OperationCanceledException or IOException)
            {
                if (!context.RequestAborted.IsCancellationRequested)
                    Log.RelayFailed(_logger, ex, name, node.Id);
                // The response has started: the only honest signal left is to abort it.
                context.Abort();
                return false;
            }
            finally
            {
                ArrayPool<byte>.Shared.Return(buffer);
            }
        }
    }

    private static void CopyResponseHeaders(HttpHeadersNonValidated headers, HttpResponse http)
    {
        foreach (var (key, values) in headers)
        {
            if (HopByHop.IsHopByHop(key))
                continue;
            // Set, not append: the owner's Date/Server replace this node's defaults; repeated values (Set-Cookie) stay apart.
            http.Headers[key] = new StringValues([.. values]);
        }
    }

    private async Task<bool> RelayWebSocketAsync(HttpContext context, string name, NodeInfo node, Uri baseUri)
    {
        var request = context.Request;
        using var upstream = new ClientWebSocket();
        upstream.Options.CollectHttpResponseDetails = true;
        upstream.Options.KeepAliveInterval = TimeSpan.FromSeconds(30);
        foreach (var protocol in context.WebSockets.WebSocketRequestedProtocols)
            upstream.Options.AddSubProtocol(protocol);
        foreach (var (key, values) in request.Headers)
        {
            if (SkipRequestHeader(key) || key.StartsWith("Sec-WebSocket-", StringComparison.OrdinalIgnoreCase) || key.StartsWith(':'))
                continue;
            upstream.Options.SetRequestHeader(key, key.Equals("Cookie", StringComparison.OrdinalIgnoreCase) ? string.Join("; ", values.ToArray()) : values.ToString());
        }
        upstream.Options.SetRequestHeader("Host", request.Host.Value);
        upstream.Options.SetRequestHeader(Header, CreateHeader(context.Connection.RemoteIpAddress, request.Scheme));
        using (var connect = CancellationTokenSource.CreateLinkedTokenSource(context.RequestAborted))
        {
            connect.CancelAfter(_options.FirstByteTimeout + TimeSpan.FromSeconds(10));
            try
            {
                await upstream.ConnectAsync(Target(baseUri, request, websocket: true), _invoker, connect.Token);
            }
            catch (Exception ex) when (ex is WebSocketException or HttpRequestException or OperationCanceledException or IOException)
            {
                if (context.RequestAborted.IsCancellationRequested)
                    return false;
                var status = (int)upstream.HttpStatusCode;
                if (status is >= 400 and < 600)
                {
                    // The owner (or the app behind the agent) refused the upgrade: pass its status and headers on.
                    if (upstream.HttpResponseHeaders is { } headers)
                    {
                        foreach (var (key, values) in headers)
                        {
                            if (!HopByHop.IsHopByHop(key) && !key.Equals("Content-Length", StringComparison.OrdinalIgnoreCase))
                                context.Response.Headers[key] = new StringValues([.. values]);
                        }
                    }
                    context.Response.StatusCode = status;
                    return true;
                }
                Log.RelayFailed(_logger, ex, name, node.Id);
                await TunnelForwarder.WriteErrorAsync(context, ex is OperationCanceledException ? 504 : 502, "tunnel_node_unreachable", "WebSocket upgrade failed.",
                    $"Tunnel '{name}': node '{node.Id}' could not be reached.");
                return false;
            }
        }
        using var downstream = await context.WebSockets.AcceptWebSocketAsync(new WebSocketAcceptContext
        {
            SubProtocol = upstream.SubProtocol,
            KeepAliveInterval = TimeSpan.FromSeconds(30),
        });
        using var cancel = CancellationTokenSource.CreateLinkedTokenSource(context.RequestAborted);
        var up = PumpAsync(downstream, upstream, cancel.Token);
        var down = PumpAsync(upstream, downstream, cancel.Token);
        var first = await Task.WhenAny(up, down);
        // One side closed: give the other a moment to answer the close handshake, then tear both down.
        await Task.WhenAny(Task.WhenAll(up, down), Task.Delay(TimeSpan.FromSeconds(5), _time, CancellationToken.None));
        await cancel.CancelAsync();
        downstream.Abort();
        upstream.Abort();
        return await first;
    }

    /// <summary>Copies messages from one socket to the other (frame by frame, type and end-of-message kept) until a close, which is passed on with its code.</summary>
    private static async Task<bool> PumpAsync(WebSocket from, WebSocket to, CancellationToken cancellationToken)
    {
        var buffer = ArrayPool<byte>.Shared.Rent(CopyBufferBytes);
        try
        {
            while (true)
            {
                var result = await from.ReceiveAsync(buffer.AsMemory(), cancellationToken);
                if (result.MessageType == WebSocketMessageType.Close)
                {
                    if (to.State is WebSocketState.Open or WebSocketState.CloseReceived)
                    {
                        var status = from.CloseStatus;
                        if (status is null or WebSocketCloseStatus.Empty || (int)status.Value is 1006 or 1015)
                            await to.CloseOutputAsync(WebSocketCloseStatus.Empty, null, cancellationToken);
                        else
                            await to.CloseOutputAsync(status.Value, from.CloseStatusDescription, cancellationToken);
                    }
                    return true;
                }
                await to.SendAsync(buffer.AsMemory(0, result.Count), result.MessageType, result.EndOfMessage, cancellationToken);
            }
        }
        catch (Exception ex) when (ex is WebSocketException or OperationCanceledException or IOException)
        {
            return false;
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(buffer);
        }
    }

    public void Dispose()
    {
        _invoker.Dispose();
        _handler.Dispose();
    }

    private static partial class Log
    {
        [LoggerMessage(3201, LogLevel.Warning, "Relaying a request for tunnel '{Name}' to node '{NodeId}' failed.")]
        public static partial void RelayFailed(ILogger logger, Exception exception, string name, string nodeId);

        [LoggerMessage(3202, LogLevel.Warning, "Could not look up which node holds tunnel '{Name}'.")]
        public static partial void LookupFailed(ILogger logger, Exception exception, string name);
    }
}
