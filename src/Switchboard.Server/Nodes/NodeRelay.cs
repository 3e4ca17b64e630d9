using System.Buffers;
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
using Switchboard.Server.Tunnels;

namespace Switchboard.Server.Nodes;

/// <summary>
/// Called when a relay fails before anything was sent to the client: <paramref name="status"/> is 502 (the node could
/// not be reached or failed) or 504 (it did not answer in time); <paramref name="webSocket"/> says which kind of relay.
/// </summary>
public delegate Task RelayFailureWriter(HttpContext context, int status, bool webSocket);

/// <summary>
/// Node-to-node relay of a public request to the node that holds the resource it is for (a tunnel's agent, an
/// environment's process). The request goes to that node's advertised address over plain HTTP/1.1 — bodies streamed
/// both ways, WebSocket upgrades relayed frame by frame with their close codes — and carries <see cref="Header"/>: the
/// sending node, the public client's address and scheme, a timestamp and an HMAC-SHA256 of them keyed with a key
/// derived from the API key every node shares. The receiving node trusts the client address, serves the request itself
/// and never relays it again; nobody without the API key can forge the header.
/// </summary>
public sealed partial class NodeRelay : IDisposable
{
    /// <summary>The header of a relayed request: <c>v1 FROM CLIENT-IP SCHEME UNIX-SECONDS SIGNATURE</c> (fields URL-escaped).</summary>
    public const string Header = "X-Switchboard-Relay";

    /// <summary>How far a relay timestamp may be from this node's clock. 2 minutes tolerates clock drift between machines while bounding replays.</summary>
    public static readonly TimeSpan MaxSkew = TimeSpan.FromMinutes(2);

    private const int CopyBufferBytes = 64 * 1024;
    private static readonly UriCreationOptions ExactUri = new() { DangerousDisablePathAndQueryCanonicalization = true };

    private readonly INodeRegistry _nodes;
    private readonly TimeProvider _time;
    private readonly ILogger<NodeRelay> _logger;
    private readonly byte[] _key;
    private readonly SocketsHttpHandler _handler;
    private readonly HttpMessageInvoker _invoker;

    public NodeRelay(INodeRegistry nodes, IOptions<SwitchboardOptions> options, TimeProvider time, ILogger<NodeRelay> logger)
    {
        _nodes = nodes;
        _time = time;
        _logger = logger;
        var apiKey = options.Value.Auth.ApiKey;
        // Domain separation: the relay key is derived from the API key, never the API key itself on the wire. The label
        // predates environment relays and is kept so that nodes of different versions verify each other's headers.
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
    }

    /// <summary>True when requests may be relayed: a multi-node store and an API key shared by the nodes.</summary>
    public bool Enabled => _nodes is not SingleNodeRegistry && _key.Length > 0;

    /// <summary>This node's id.</summary>
    public string NodeId => _nodes.NodeId;

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

    /// <summary>The node's base address, or null when it has none or it is not a URL.</summary>
    public static Uri? BaseUri(NodeInfo node) => node.Address is not null && Uri.TryCreate(node.Address, UriKind.Absolute, out var uri) ? uri : null;

    /// <summary>
    /// Sends a request of this node's own to another node, with the relay header vouching for <paramref name="context"/>'s
    /// client (e.g. to collect its part of a list). The response is the caller's to dispose.
    /// </summary>
    public Task<HttpResponseMessage> SendAsync(HttpRequestMessage message, HttpContext context, CancellationToken cancellationToken)
    {
        message.Headers.Remove(Header);
        message.Headers.TryAddWithoutValidation(Header, CreateHeader(context.Connection.RemoteIpAddress, context.Request.Scheme));
        return _invoker.SendAsync(message, cancellationToken);
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

    private static bool SkipRequestHeader(string key, HashSet<string>? listed) =>
        HopByHop.IsHopByHop(key, listed) || key.Equals("Host", StringComparison.OrdinalIgnoreCase) || key.Equals("Expect", StringComparison.OrdinalIgnoreCase) ||
        key.Equals(Header, StringComparison.OrdinalIgnoreCase);

    /// <summary>
    /// Relays an HTTP request (not an upgrade) to <paramref name="node"/> and streams its response back. Before the
    /// response has started, failures go to <paramref name="onFailure"/>; after, the public connection is aborted.
    /// <paramref name="responseTimeout"/> bounds the wait for the response head. <paramref name="what"/> names the resource in logs.
    /// </summary>
    public async Task<bool> RelayHttpAsync(HttpContext context, NodeInfo node, Uri baseUri, TimeSpan responseTimeout, string what, RelayFailureWriter onFailure)
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
        var listed = HopByHop.Listed(request.Headers.Connection);
        foreach (var (key, values) in request.Headers)
        {
            if (SkipRequestHeader(key, listed))
                continue;
            if (key.StartsWith("Content-", StringComparison.OrdinalIgnoreCase))
                message.Content?.Headers.TryAddWithoutValidation(key, (IEnumerable<string>)values!);
            else
                message.Headers.TryAddWithoutValidation(key, (IEnumerable<string>)values!);
        }
        message.Headers.Host = request.Host.Value;
        message.Headers.TryAddWithoutValidation(Header, CreateHeader(context.Connection.RemoteIpAddress, request.Scheme));

        using var cancel = CancellationTokenSource.CreateLinkedTokenSource(context.RequestAborted);
        cancel.CancelAfter(responseTimeout);
        HttpResponseMessage response;
        try
        {
            response = await _invoker.SendAsync(message, cancel.Token);
        }
        catch (Exception ex) when (ex is HttpRequestException or OperationCanceledException or IOException)
        {
            if (context.RequestAborted.IsCancellationRequested)
                return false;
            Log.RelayFailed(_logger, ex, what, node.Id);
            await onFailure(context, ex is OperationCanceledException ? 504 : 502, webSocket: false);
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
                    Log.RelayFailed(_logger, ex, what, node.Id);
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
        var listed = HopByHop.Listed(headers);
        foreach (var (key, values) in headers)
        {
            if (HopByHop.IsHopByHop(key, listed))
                continue;
            // Set, not append: the owner's Date/Server replace this node's defaults; repeated values (Set-Cookie) stay apart.
            http.Headers[key] = new StringValues([.. values]);
        }
    }

    /// <summary>
    /// Relays a WebSocket upgrade to <paramref name="node"/>: the public socket is accepted only after the node accepted
    /// (with its subprotocol), then messages are copied both ways, close codes included. A refused upgrade comes back with
    /// its status; a node that cannot be reached goes to <paramref name="onFailure"/> before anything is accepted.
    /// </summary>
    public async Task<bool> RelayWebSocketAsync(HttpContext context, NodeInfo node, Uri baseUri, TimeSpan connectTimeout, string what, RelayFailureWriter onFailure)
    {
        var request = context.Request;
        using var upstream = new ClientWebSocket();
        upstream.Options.CollectHttpResponseDetails = true;
        upstream.Options.KeepAliveInterval = TimeSpan.FromSeconds(30);
        foreach (var protocol in context.WebSockets.WebSocketRequestedProtocols)
            upstream.Options.AddSubProtocol(protocol);
        var listed = HopByHop.Listed(request.Headers.Connection);
        foreach (var (key, values) in request.Headers)
        {
            if (SkipRequestHeader(key, listed) || key.StartsWith("Sec-WebSocket-", StringComparison.OrdinalIgnoreCase) || key.StartsWith(':'))
                continue;
            upstream.Options.SetRequestHeader(key, key.Equals("Cookie", StringComparison.OrdinalIgnoreCase) ? string.Join("; ", values.ToArray()) : values.ToString());
        }
        upstream.Options.SetRequestHeader("Host", request.Host.Value);
        upstream.Options.SetRequestHeader(Header, CreateHeader(context.Connection.RemoteIpAddress, request.Scheme));
        using (var connect = CancellationTokenSource.CreateLinkedTokenSource(context.RequestAborted))
        {
            connect.CancelAfter(connectTimeout);
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
                    // The owner (or the app behind it) refused the upgrade: pass its status and headers on.
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
                Log.RelayFailed(_logger, ex, what, node.Id);
                await onFailure(context, ex is OperationCanceledException ? 504 : 502, webSocket: true);
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
        [LoggerMessage(3201, LogLevel.Warning, "Relaying a request for {What} to node '{NodeId}' failed.")]
        public static partial void RelayFailed(ILogger logger, Exception exception, string what, string nodeId);
    }
}
