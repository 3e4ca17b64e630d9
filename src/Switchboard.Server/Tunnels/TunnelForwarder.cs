using System.Buffers;
using System.Buffers.Binary;
using System.Diagnostics;
using System.IO.Pipelines;
using System.Net;
using System.Net.WebSockets;
using System.Text;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Http.Features;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Options;
using Switchboard.Protocol.Tunnels;

namespace Switchboard.Server.Tunnels;

/// <summary>
/// Forwards one public request through a tunnel: opens a stream (response slot first), sends the head, streams the
/// body under the stream and connection windows, and copies the response back as it arrives (or buffered).
/// </summary>
public sealed partial class TunnelForwarder(TunnelHub hub, TunnelRelay relay, TunnelZeroCopy zeroCopy, IOptions<TunnelOptions> options, ILogger<TunnelForwarder> logger)
{
    private readonly TunnelOptions _options = options.Value;

    /// <summary>Finds the tunnel a request is for: <c>NAME.{domain}</c> host, or the <c>/t/NAME/</c> path prefix.</summary>
    /// <summary>True when <paramref name="host"/> (without port) is a name under <paramref name="domain"/>: <c>x.domain</c>, <c>a.b.domain</c>.</summary>
    internal static bool IsUnderDomain(ReadOnlySpan<char> host, string domain) =>
        host.Length > domain.Length + 1 && host.EndsWith(domain, StringComparison.OrdinalIgnoreCase) && host[^(domain.Length + 1)] == '.';

    public bool TryRoute(HttpContext context, out string name, out string target, out string? prefix)
    {
        var request = context.Request;
        var host = request.Host.Host;
        var domain = hub.Domain;
        var query = request.QueryString.Value ?? "";
        if (IsUnderDomain(host, domain))
        {
            var label = host[..^(domain.Length + 1)];
            if (!label.Contains('.'))
            {
                name = label.ToLowerInvariant();
                target = request.PathBase.Value + request.Path.Value + query;
                if (target.Length == 0 || target[0] != '/')
                    target = "/" + target;
                prefix = null;
                return true;
            }
        }
        var path = request.Path.Value ?? "";
        if (path.StartsWith("/t/", StringComparison.Ordinal))
        {
            var end = path.IndexOf('/', 3);
            name = (end < 0 ? path[3..] : path[3..end]).ToLowerInvariant();
            target = (end < 0 ? "/" : path[end..]) + query;
            prefix = "/t/" + name;
            return name.Length > 0;
        }
        name = target = "";
        prefix = null;
        return false;
    }

    public async Task ForwardAsync(HttpContext context, string name, string target, string? prefix)
    {
        // A request relayed by another node carries the public client's address and scheme, vouched for by the shared key.
        var proof = relay.Verify(context.Request, out var origin);
        if (proof == RelayProof.Invalid)
        {
            await WriteErrorAsync(context, 403, "invalid_relay", "Forbidden.", $"The {TunnelRelay.Header} header is only accepted from the gateway's own nodes.");
            return;
        }
        var clientIp = origin is null ? context.Connection.RemoteIpAddress : origin.ClientIp;
        var session = hub.Find(name);
        if (session is null)
        {
            // Another node may hold the agent: relay there (never a request that was relayed already, so no loops).
            if (origin is null && relay.Enabled && await relay.TryRelayAsync(context, name))
                return;
            await WriteErrorAsync(context, 404, "tunnel_not_found", $"Tunnel '{name}' is not connected.",
                $"No agent is connected for tunnel '{name}'. Start one with: switchboard tunnel http PORT --subdomain {name}");
            return;
        }
        if (!session.IsAllowed(clientIp))
        {
            await WriteErrorAsync(context, 403, "forbidden_address", $"Tunnel '{name}': address not allowed.",
                $"Your address {clientIp} is not in the allow-list of tunnel '{name}'.");
            return;
        }
        if (!session.IsAuthorized(context.Request.Headers.Authorization.ToString() is { Length: > 0 } a ? a : null))
        {
            context.Response.Headers.WWWAuthenticate = $"Basic realm=\"{name}\", charset=\"UTF-8\"";
            await WriteErrorAsync(context, 401, "unauthorized", $"Tunnel '{name}' requires a login.", "This tunnel is protected by basic authentication.");
            return;
        }
        if (prefix is not null && target == "/" && !(context.Request.Path.Value ?? "").EndsWith('/') && !context.WebSockets.IsWebSocketRequest)
        {
            // /t/name -> /t/name/ so that relative links of the local app resolve under the prefix.
            context.Response.StatusCode = 308;
            context.Response.Headers.Location = prefix + "/" + context.Request.QueryString.Value;
            return;
        }
        if (context.Request.ContentLength > _options.MaxRequestBodyBytes)
        {
            await WriteErrorAsync(context, 413, "body_too_large", "Request body too large.", $"This gateway forwards request bodies up to {_options.MaxRequestBodyBytes} bytes.");
            return;
        }
        var stream = session.TryOpen();
        if (stream is null)
        {
            context.Response.Headers.RetryAfter = "1";
            if (session.Connection.IsClosing) // the agent is leaving: same answer as an agent gone mid-request
                await WriteErrorAsync(context, 502, "agent_disconnected", $"Tunnel '{name}' lost its agent.", $"The agent of tunnel '{name}' is disconnecting; if it reconnects, retry.");
            else
                await WriteErrorAsync(context, 503, "tunnel_busy", $"Tunnel '{name}' is busy.", $"Tunnel '{name}' has {_options.MaxConcurrentStreams} requests in flight; retry shortly.");
            return;
        }
        var started = Stopwatch.GetTimestamp();
        var record = new TunnelRequestRecord
        {
            Id = session.RequestLog.NextId(),
            StartedAt = DateTimeOffset.UtcNow,
            Method = context.Request.Method,
            Path = target,
            RequestHeaders = RequestHeaders(context, prefix, session, clientIp, origin?.Scheme ?? context.Request.Scheme),
        };
        try
        {
            if (context.WebSockets.IsWebSocketRequest)
                await ForwardWebSocketAsync(context, session, stream, record);
            else
                await ForwardHttpAsync(context, session, stream, record);
        }
        finally
        {
            stream.External?.Finish(delivered: false); // a body attached too late to be read: its request must not wait
            session.Remove(stream);
            record.DurationMs = Stopwatch.GetElapsedTime(started).TotalMilliseconds;
            session.AddBytes(record.RequestBytes, record.ResponseBytes);
            session.RequestLog.Add(record);
        }
    }

    private async Task ForwardHttpAsync(HttpContext context, TunnelSession session, GatewayStream stream, TunnelRequestRecord record)
    {
        var hasBody = context.Features.Get<IHttpRequestBodyDetectionFeature>()?.CanHaveBody ?? context.Request.ContentLength > 0;
        var head = new TunnelRequestHead(context.Request.Method, record.Path, record.RequestHeaders, hasBody, WebSocket: false);
        // The stream (and its response slot) is registered; only now does the request leave.
        session.Send(head.Encode(stream.Id));
        using var cancel = CancellationTokenSource.CreateLinkedTokenSource(context.RequestAborted);
        var upload = hasBody ? UploadAsync(context.Request.Body, session, stream, record, cancel.Token) : Task.FromResult(UploadResult.Done);
        TunnelResponseHead response;
        try
        {
            response = await stream.Head.Task.WaitAsync(_options.FirstByteTimeout, context.RequestAborted);
        }
        catch (TimeoutException)
        {
            stream.Abort("no response within the first-byte timeout");
            record.Error = "timeout";
            await WriteErrorAsync(context, 504, "tunnel_timeout", "Gateway timeout.", $"The local server behind tunnel '{session.Name}' sent no response within {_options.FirstByteTimeout.TotalSeconds:0.#} s.");
            record.Status = 504;
            return;
        }
        catch (OperationCanceledException)
        {
            stream.Abort("the public client disconnected");
            record.Error = "client disconnected";
            return;
        }
        catch (TunnelStreamAbortedException ex)
        {
            cancel.Cancel();
            var up = await upload.ConfigureAwait(false);
            record.Error = ex.Message;
            if (up == UploadResult.TooLarge)
            {
                record.Status = 413;
                await WriteErrorAsync(context, 413, "body_too_large", "Request body too large.", $"This gateway forwards request bodies up to {_options.MaxRequestBodyBytes} bytes.");
            }
            else
            {
                record.Status = 502;
                await WriteErrorAsync(context, 502, "tunnel_failed", "Bad gateway.", $"Tunnel '{session.Name}': {ex.Message}.");
            }
            return;
        }

        record.Status = response.Status;
        record.ResponseHeaders = response.Headers;
        // A body on the data path has its length already: it is copied as it arrives, buffered mode or not.
        var external = stream.External;
        var buffered = external is null && (session.Hello.Buffered || context.Request.Headers.ContainsKey(TunnelProtocol.BufferHeader));
        var http = context.Response;
        http.StatusCode = response.Status;
        foreach (var (key, value) in response.Headers)
        {
            if (HopByHop.IsHopByHop(key) || ((buffered || external is not null) && key.Equals("Content-Length", StringComparison.OrdinalIgnoreCase)))
                continue;
            http.Headers.Append(key, value);
        }
        var reader = stream.Inbound.Reader;
        try
        {
            if (external is not null)
            {
                http.ContentLength = external.Length;
                if (await zeroCopy.TryCopyAsync(context, stream, external, record))
                    return;
                context.Features.Get<IHttpResponseBodyFeature>()?.DisableBuffering();
                await CopyExternalAsync(context, stream, external, record);
            }
            else if (buffered)
                await CopyBufferedAsync(context, stream, record);
            else
            {
                context.Features.Get<IHttpResponseBodyFeature>()?.DisableBuffering();
                while (true)
                {
                    var result = await reader.ReadAsync(context.RequestAborted);
                    var buffer = result.Buffer;
                    // Copy whatever arrived and flush once: each chunk reaches the client now (SSE), without a write per pipe segment.
                    foreach (var segment in buffer)
                        http.BodyWriter.Write(segment.Span);
                    if (!buffer.IsEmpty)
                    {
                        var flush = await http.BodyWriter.FlushAsync(context.RequestAborted);
                        if (flush.IsCanceled)
                            throw new OperationCanceledException();
                    }
                    var length = (int)buffer.Length;
                    reader.AdvanceTo(buffer.End);
                    record.ResponseBytes += length;
                    if (length > 0)
                        stream.Consumed(length, length);
                    if (result.IsCompleted)
                        break;
                }
            }
            if (stream.Trailers.Count > 0 && http.SupportsTrailers())
            {
                foreach (var (key, value) in stream.Trailers)
                    http.AppendTrailer(key, value);
            }
        }
        catch (TunnelStreamAbortedException ex)
        {
            // The agent went away after the response started: the only honest signal left is to abort the response.
            record.Error = ex.Message;
            if (!http.HasStarted)
            {
                http.Clear();
                record.Status = 502;
                await WriteErrorAsync(context, 502, "tunnel_failed", "Bad gateway.", $"Tunnel '{session.Name}': {ex.Message}.");
            }
            else
                context.Abort();
        }
        catch (Exception ex) when (ex is OperationCanceledException or IOException)
        {
            stream.Abort("the public client disconnected");
            record.Error = "client disconnected";
        }
        finally
        {
            await reader.CompleteAsync();
            cancel.Cancel();
            await upload.ConfigureAwait(false);
        }
    }

    /// <summary>
    /// Copies a data-path body (<see cref="TunnelDataPath"/>) from the agent's request straight into the public response,
    /// then waits for the stream's end frame (trailers) on the WebSocket. Reading the agent's request fails when the agent
    /// goes away; writing fails when the public client does; either way the data-path request learns it from
    /// <see cref="ExternalBody.Finish"/>.
    /// </summary>
    private static async Task CopyExternalAsync(HttpContext context, GatewayStream stream, ExternalBody external, TunnelRequestRecord record)
    {
        var http = context.Response;
        var body = external.Reader;
        var left = external.Length;
        try
        {
            while (left > 0)
            {
                ReadResult result;
                try
                {
                    result = await body.ReadAsync(context.RequestAborted);
                }
                catch (Exception ex) when (!context.RequestAborted.IsCancellationRequested && ex is OperationCanceledException or IOException or BadHttpRequestException)
                {
                    throw new TunnelStreamAbortedException("the agent's data-path upload broke off: " + ex.Message);
                }
                var buffer = result.Buffer;
                if (buffer.Length > left)
                    buffer = buffer.Slice(0, left);
                foreach (var segment in buffer)
                    http.BodyWriter.Write(segment.Span);
                left -= buffer.Length;
                record.ResponseBytes += buffer.Length;
                body.AdvanceTo(buffer.End);
                if (left == 0)
                {
                    // The whole upload is read: the agent is done. This is decided before the last flush, because a
                    // client that has every byte may close its connection before that flush reports completion.
                    external.Finish(delivered: true);
                }
                if (!buffer.IsEmpty)
                {
                    var flush = await http.BodyWriter.FlushAsync(context.RequestAborted);
                    if (flush.IsCanceled)
                        throw new OperationCanceledException();
                }
                if (result.IsCompleted && left > 0)
                    throw new TunnelStreamAbortedException("the agent's data-path upload ended early");
            }
        }
        finally
        {
            external.Finish(delivered: false); // no-op after a delivery
        }
        await AwaitEndAsync(context, stream);
    }

    /// <summary>
    /// After a data-path body: waits for the stream's end frame (with trailers) on the WebSocket. Returns when it arrives
    /// or the public client has left; throws when the agent sent body frames for a body it sent on the data path.
    /// </summary>
    internal static async Task AwaitEndAsync(HttpContext context, GatewayStream stream)
    {
        var reader = stream.Inbound.Reader;
        while (true)
        {
            ReadResult result;
            try
            {
                result = await reader.ReadAsync(context.RequestAborted);
            }
            catch (OperationCanceledException) when (context.RequestAborted.IsCancellationRequested)
            {
                return; // the client has the whole body and left: the end frame (trailers) has nobody to go to
            }
            var length = result.Buffer.Length;
            reader.AdvanceTo(result.Buffer.End);
            if (length > 0)
            {
                stream.Abort("body frames for a body sent on the data path");
                throw new TunnelStreamAbortedException("the agent sent body frames for a body sent on the data path");
            }
            if (result.IsCompleted)
                return;
        }
    }

    private async Task CopyBufferedAsync(HttpContext context, GatewayStream stream, TunnelRequestRecord record)
    {
        var reader = stream.Inbound.Reader;
        using var collected = new MemoryStream();
        while (true)
        {
            var result = await reader.ReadAsync(context.RequestAborted);
            var length = (int)result.Buffer.Length;
            if (collected.Length + length > _options.MaxBufferedResponseBytes)
            {
                stream.Abort("response too large for buffered mode");
                throw new TunnelStreamAbortedException($"the response exceeds the buffered-mode limit of {_options.MaxBufferedResponseBytes} bytes");
            }
            foreach (var segment in result.Buffer)
                collected.Write(segment.Span);
            reader.AdvanceTo(result.Buffer.End);
            if (length > 0)
                stream.Consumed(length, length);
            if (result.IsCompleted)
                break;
        }
        record.ResponseBytes = collected.Length;
        context.Response.Headers.Remove("Transfer-Encoding");
        context.Response.ContentLength = collected.Length;
        await context.Response.Body.WriteAsync(collected.GetBuffer().AsMemory(0, (int)collected.Length), context.RequestAborted);
    }

    private enum UploadResult
    {
        Done,
        TooLarge,
        Failed,
    }

    private async Task<UploadResult> UploadAsync(Stream body, TunnelSession session, GatewayStream stream, TunnelRequestRecord record, CancellationToken cancellationToken)
    {
        var buffer = ArrayPool<byte>.Shared.Rent(TunnelProtocol.HeaderSize + TunnelProtocol.MaxDataPayload);
        var replay = _options.ReplayBodyBytes > 0 ? new MemoryStream() : null;
        try
        {
            long total = 0;
            while (true)
            {
                // Credit first (stream, then connection), then read at most that much: memory stays one frame per upload.
                var credit = await stream.SendWindow.TakeAsync(TunnelProtocol.MaxDataPayload, cancellationToken);
                var connectionCredit = await session.ConnectionWindow.TakeAsync(credit, cancellationToken);
                if (connectionCredit < credit)
                    stream.SendWindow.Grant(credit - connectionCredit);
                var read = await body.ReadAsync(buffer.AsMemory(TunnelProtocol.HeaderSize, connectionCredit), cancellationToken);
                if (read < connectionCredit)
                {
                    stream.SendWindow.Grant(connectionCredit - read);
                    session.ConnectionWindow.Grant(connectionCredit - read);
                }
                if (read == 0)
                    break;
                total += read;
                record.RequestBytes = total;
                if (total > _options.MaxRequestBodyBytes)
                {
                    stream.Abort($"request body exceeds {_options.MaxRequestBodyBytes} bytes");
                    return UploadResult.TooLarge;
                }
                if (replay is not null)
                {
                    if (replay.Length + read <= _options.ReplayBodyBytes)
                        replay.Write(buffer, TunnelProtocol.HeaderSize, read);
                    else
                        replay = null;
                }
                buffer[0] = (byte)TunnelFrameType.RequestBody;
                BinaryPrimitives.WriteUInt32BigEndian(buffer.AsSpan(1), stream.Id);
                if (!session.Send(buffer.AsSpan(0, TunnelProtocol.HeaderSize + read).ToArray()))
                    return UploadResult.Failed;
            }
            session.Send(TunnelProtocol.Frame(TunnelFrameType.RequestEnd, stream.Id, []));
            record.Body = replay?.ToArray();
            return UploadResult.Done;
        }
        catch (Exception ex) when (ex is OperationCanceledException or IOException or TunnelStreamAbortedException or BadHttpRequestException)
        {
            // A body that broke off (malformed chunking, client gone) must not leave the local request waiting for the rest.
            if (!cancellationToken.IsCancellationRequested && ex is not TunnelStreamAbortedException)
                stream.Abort("the request body broke off: " + ex.Message);
            return UploadResult.Failed;
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(buffer);
        }
    }

    private async Task ForwardWebSocketAsync(HttpContext context, TunnelSession session, GatewayStream stream, TunnelRequestRecord record)
    {
        var head = new TunnelRequestHead("GET", record.Path, record.RequestHeaders, HasBody: false, WebSocket: true);
        session.Send(head.Encode(stream.Id));
        TunnelResponseHead response;
        try
        {
            response = await stream.Head.Task.WaitAsync(_options.FirstByteTimeout, context.RequestAborted);
        }
        catch (Exception ex) when (ex is TimeoutException or TunnelStreamAbortedException or OperationCanceledException)
        {
            stream.Abort("websocket upgrade failed");
            record.Status = ex is TimeoutException ? 504 : 502;
            record.Error = ex.Message;
            if (!context.RequestAborted.IsCancellationRequested)
                await WriteErrorAsync(context, record.Status, "tunnel_failed", "WebSocket upgrade failed.", $"Tunnel '{session.Name}': {ex.Message}.");
            return;
        }
        record.Status = response.Status;
        record.ResponseHeaders = response.Headers;
        if (response.Status != 101)
        {
            // The local server refused the upgrade: pass its answer on.
            context.Response.StatusCode = response.Status;
            await CopyBufferedAsync(context, stream, record);
            return;
        }
        var subProtocol = response.Headers.FirstOrDefault(h => h.Key.Equals("Sec-WebSocket-Protocol", StringComparison.OrdinalIgnoreCase)).Value;
        using var socket = await context.WebSockets.AcceptWebSocketAsync(new WebSocketAcceptContext { SubProtocol = subProtocol, KeepAliveInterval = TimeSpan.FromSeconds(30) });
        using var cancel = CancellationTokenSource.CreateLinkedTokenSource(context.RequestAborted);
        var toAgent = PumpPublicToAgentAsync(socket, session, stream, record, cancel.Token);
        var fromAgent = PumpAgentToPublicAsync(socket, stream, record, cancel.Token);
        await Task.WhenAny(toAgent, fromAgent);
        // Give the other direction a moment to finish its close handshake, then tear down.
        await Task.WhenAny(Task.WhenAll(toAgent, fromAgent), Task.Delay(TimeSpan.FromSeconds(5), CancellationToken.None));
        cancel.Cancel();
        socket.Abort();
        await stream.Inbound.Reader.CompleteAsync();
    }

    private static async Task PumpPublicToAgentAsync(WebSocket socket, TunnelSession session, GatewayStream stream, TunnelRequestRecord record, CancellationToken cancellationToken)
    {
        var buffer = ArrayPool<byte>.Shared.Rent(TunnelProtocol.MaxDataPayload);
        try
        {
            while (true)
            {
                var credit = await stream.SendWindow.TakeAsync(TunnelProtocol.MaxDataPayload, cancellationToken);
                var connectionCredit = await session.ConnectionWindow.TakeAsync(credit, cancellationToken);
                if (connectionCredit < credit)
                    stream.SendWindow.Grant(credit - connectionCredit);
                var usable = Math.Max(1, connectionCredit - InboundBuffer.RecordOverhead);
                var result = await socket.ReceiveAsync(buffer.AsMemory(0, usable), cancellationToken);
                if (result.MessageType == WebSocketMessageType.Close)
                {
                    stream.SendWindow.Grant(connectionCredit);
                    session.ConnectionWindow.Grant(connectionCredit);
                    session.Send(TunnelProtocol.WsClose(stream.Id, (int?)socket.CloseStatus ?? 1000, socket.CloseStatusDescription ?? ""));
                    return;
                }
                var charged = result.Count + InboundBuffer.RecordOverhead;
                if (charged < connectionCredit)
                {
                    stream.SendWindow.Grant(connectionCredit - charged);
                    session.ConnectionWindow.Grant(connectionCredit - charged);
                }
                record.RequestBytes += result.Count;
                session.Send(TunnelProtocol.WsMessage(stream.Id, result.MessageType == WebSocketMessageType.Binary, result.EndOfMessage, buffer.AsSpan(0, result.Count)));
            }
        }
        catch (Exception ex) when (ex is OperationCanceledException or WebSocketException or IOException or TunnelStreamAbortedException)
        {
            session.Send(TunnelProtocol.Abort(stream.Id, "public websocket ended"));
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(buffer);
        }
    }

    private static async Task PumpAgentToPublicAsync(WebSocket socket, GatewayStream stream, TunnelRequestRecord record, CancellationToken cancellationToken)
    {
        var reader = stream.Inbound.Reader;
        try
        {
            while (true)
            {
                var result = await reader.ReadAsync(cancellationToken);
                var buffer = result.Buffer;
                while (InboundBuffer.TryReadRecord(ref buffer, out var flags, out var data))
                {
                    var charged = (int)data.Length + InboundBuffer.RecordOverhead;
                    if ((flags & InboundBuffer.CloseFlag) != 0)
                    {
                        var bytes = data.ToArray();
                        var code = bytes.Length >= 2 ? BinaryPrimitives.ReadUInt16BigEndian(bytes) : 1000;
                        var reason = bytes.Length > 2 ? new TunnelReader(bytes.AsSpan(2)).String() : "";
                        if (socket.State is WebSocketState.Open or WebSocketState.CloseReceived)
                            await socket.CloseOutputAsync(code is 1005 or 1006 ? WebSocketCloseStatus.NormalClosure : (WebSocketCloseStatus)code, reason, cancellationToken);
                        return;
                    }
                    var type = (flags & 1) != 0 ? WebSocketMessageType.Binary : WebSocketMessageType.Text;
                    var end = (flags & 2) != 0;
                    if (data.IsSingleSegment)
                        await socket.SendAsync(data.First, type, end, cancellationToken);
                    else
                        await socket.SendAsync(data.ToArray(), type, end, cancellationToken);
                    record.ResponseBytes += data.Length;
                    stream.Consumed(charged, charged);
                }
                reader.AdvanceTo(buffer.Start, result.Buffer.End);
                if (result.IsCompleted)
                    return;
            }
        }
        catch (Exception ex) when (ex is OperationCanceledException or WebSocketException or IOException or TunnelStreamAbortedException)
        {
            record.Error ??= ex.Message;
        }
    }

    /// <summary>Headers for the agent: hop-by-hop removed, repeated values kept apart, X-Forwarded-* added.</summary>
    private static List<KeyValuePair<string, string>> RequestHeaders(HttpContext context, string? prefix, TunnelSession session, IPAddress? clientIp, string scheme)
    {
        var list = new List<KeyValuePair<string, string>>();
        string? forwardedFor = null;
        var listed = HopByHop.Listed(context.Request.Headers.Connection);
        foreach (var (key, values) in context.Request.Headers)
        {
            // Expect: 100-continue was answered here (Kestrel sends 100 when the body is read); passed on, it would make
            // the agent wait for a 100 from a local server that may never send one. Zero copy at the agent relies on
            // this too: without Expect, its HTTP handler sends the whole request before it reads the response, so no
            // send is under way on the local connection while a splice reads it (SplicePipe.TryWaitInKernel).
            if (HopByHop.IsHopByHop(key, listed) || key.Equals("Expect", StringComparison.OrdinalIgnoreCase) ||
                key.StartsWith("Sec-WebSocket-", StringComparison.OrdinalIgnoreCase) && !key.Equals("Sec-WebSocket-Protocol", StringComparison.OrdinalIgnoreCase))
                continue;
            if (key.Equals("Authorization", StringComparison.OrdinalIgnoreCase) && session.RequiresBasicAuth)
                continue; // the gateway's login, not the app's
            if (key.Equals("X-Forwarded-For", StringComparison.OrdinalIgnoreCase))
            {
                forwardedFor = values.ToString();
                continue;
            }
            if (key.Equals("X-Forwarded-Proto", StringComparison.OrdinalIgnoreCase) || key.Equals("X-Forwarded-Host", StringComparison.OrdinalIgnoreCase) ||
                key.Equals("X-Forwarded-Prefix", StringComparison.OrdinalIgnoreCase) || key.Equals(TunnelProtocol.BufferHeader, StringComparison.OrdinalIgnoreCase) ||
                key.Equals(TunnelRelay.Header, StringComparison.OrdinalIgnoreCase))
                continue;
            foreach (var value in values)
                list.Add(new(key, value ?? ""));
        }
        var ip = clientIp is { } a ? (a.IsIPv4MappedToIPv6 ? a.MapToIPv4() : a).ToString() : "unknown";
        list.Add(new("X-Forwarded-For", forwardedFor is null ? ip : forwardedFor + ", " + ip));
        list.Add(new("X-Forwarded-Proto", scheme));
        list.Add(new("X-Forwarded-Host", context.Request.Host.Value ?? ""));
        if (prefix is not null)
            list.Add(new("X-Forwarded-Prefix", prefix));
        return list;
    }

    /// <summary>Error page: JSON for API clients, a short HTML page for browsers.</summary>
    internal static async Task WriteErrorAsync(HttpContext context, int status, string code, string title, string message)
    {
        if (context.Response.HasStarted)
        {
            context.Abort();
            return;
        }
        context.Response.StatusCode = status;
        context.Response.Headers.CacheControl = "no-store";
        var accept = context.Request.Headers.Accept.ToString();
        if (accept.Contains("text/html", StringComparison.OrdinalIgnoreCase))
        {
            context.Response.ContentType = "text/html; charset=utf-8";
            var html = $"<!doctype html><html><head><title>{WebUtility.HtmlEncode(title)}</title></head><body><h1>{status} {WebUtility.HtmlEncode(title)}</h1><p>{WebUtility.HtmlEncode(message)}</p><hr><p>Switchboard tunnel gateway</p></body></html>";
            await context.Response.WriteAsync(html, Encoding.UTF8, context.RequestAborted);
        }
        else
        {
            await Http.ApiResults.WriteProblemAsync(context, status, code, message);
        }
    }

    /// <summary>Replays a recorded request through the tunnel and collects the response (bounded).</summary>
    internal async Task<(int Status, List<KeyValuePair<string, string>> Headers, byte[] Body, bool Truncated)> ReplayAsync(
        TunnelSession session, TunnelRequestRecord original, CancellationToken cancellationToken)
    {
        var stream = session.TryOpen() ?? throw new InvalidOperationException("tunnel busy");
        try
        {
            var body = original.Body ?? [];
            var headers = original.RequestHeaders.Where(h => !h.Key.Equals("Content-Length", StringComparison.OrdinalIgnoreCase)).ToList();
            if (body.Length > 0)
                headers.Add(new("Content-Length", body.Length.ToString(System.Globalization.CultureInfo.InvariantCulture)));
            headers.Add(new("X-Switchboard-Replay", original.Id.ToString(System.Globalization.CultureInfo.InvariantCulture)));
            session.Send(new TunnelRequestHead(original.Method, original.Path, headers, body.Length > 0, false).Encode(stream.Id));
            if (body.Length > 0)
            {
                for (var offset = 0; offset < body.Length; offset += TunnelProtocol.MaxDataPayload)
                {
                    var n = Math.Min(TunnelProtocol.MaxDataPayload, body.Length - offset);
                    session.Send(TunnelProtocol.Frame(TunnelFrameType.RequestBody, stream.Id, body.AsSpan(offset, n)));
                }
                session.Send(TunnelProtocol.Frame(TunnelFrameType.RequestEnd, stream.Id, []));
            }
            var head = await stream.Head.Task.WaitAsync(_options.FirstByteTimeout, cancellationToken);
            var collected = new MemoryStream();
            var truncated = false;
            var reader = stream.Inbound.Reader;
            while (true)
            {
                var result = await reader.ReadAsync(cancellationToken);
                foreach (var segment in result.Buffer)
                {
                    var room = _options.ReplayBodyBytes - (int)collected.Length;
                    if (segment.Length > room)
                        truncated = true;
                    collected.Write(segment.Span[..Math.Min(room, segment.Length)]);
                }
                var length = (int)result.Buffer.Length;
                reader.AdvanceTo(result.Buffer.End);
                stream.Consumed(length, length);
                if (result.IsCompleted || truncated)
                    break;
            }
            if (truncated)
                stream.Abort("replay response truncated");
            await reader.CompleteAsync();
            return (head.Status, [.. head.Headers], collected.ToArray(), truncated);
        }
        finally
        {
            stream.External?.Finish(delivered: false); // a body attached too late to be read: its request must not wait
            session.Remove(stream);
        }
    }

    private static partial class Log
    {
        [LoggerMessage(3101, LogLevel.Debug, "Tunnel '{Name}' stream {StreamId} failed: {Reason}")]
        public static partial void StreamFailed(ILogger logger, string name, uint streamId, string reason);
    }

    internal void LogFailure(string name, uint id, string reason) => Log.StreamFailed(logger, name, id, reason);
}
