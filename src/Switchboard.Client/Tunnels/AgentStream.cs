using System.Buffers;
using System.Buffers.Binary;
using System.Diagnostics;
using System.Net;
using System.Net.Http.Headers;
using System.Net.Sockets;
using System.Net.WebSockets;
using System.Text;
using Switchboard.Protocol.Tunnels;

namespace Switchboard.Client.Tunnels;

/// <summary>
/// The agent's half of one stream: forwards the request to the local server and the response back, under the
/// stream window granted by the gateway. The request body arrives in a bounded <see cref="InboundBuffer"/>.
/// </summary>
internal sealed class AgentStream(AgentConnection connection, uint id, TunnelRequestHead head, int window)
{
    /// <summary>First response-body buffer of a stream whose length is unknown or large: one pool bucket of 16 KiB.</summary>
    private const int FirstBufferBytes = 16 * 1024 - TunnelProtocol.HeaderSize;

    private readonly CancellationTokenSource _cancel = CancellationTokenSource.CreateLinkedTokenSource(connection.ClosedToken);
    private readonly int _updateThreshold = InboundBuffer.UpdateThreshold(window);
    private int _windowPending;

    public uint Id { get; } = id;
    public InboundBuffer Inbound { get; } = new(window);
    public FlowWindow SendWindow { get; } = new(window);

    public void Fail(Exception error)
    {
        Inbound.Complete(error);
        SendWindow.Close(error);
        try
        {
            _cancel.Cancel();
        }
        catch (ObjectDisposedException)
        {
        }
    }

    public async Task RunAsync()
    {
        await Task.Yield();
        var started = Stopwatch.GetTimestamp();
        var status = 0;
        long sent = 0;
        string? error = null;
        try
        {
            if (head.WebSocket)
                (status, sent) = await WebSocketAsync(_cancel.Token);
            else
                (status, sent) = await HttpAsync(_cancel.Token);
        }
        catch (Exception ex) when (ex is OperationCanceledException or TunnelStreamAbortedException)
        {
            error = "aborted";
        }
        catch (Exception ex)
        {
            error = ex.Message;
            await connection.TrySendAsync(TunnelProtocol.Abort(Id, "agent error: " + ex.Message), CancellationToken.None);
        }
        finally
        {
            connection.Remove(this);
            _cancel.Dispose();
        }
        connection.Completed(new TunnelRequestCompleted(head.Method, head.Target, status, Stopwatch.GetElapsedTime(started), Inbound.Received, sent, error));
    }

    private Uri LocalUri(string scheme)
    {
        var local = connection.Options.LocalTarget;
        var builder = new StringBuilder();
        builder.Append(scheme).Append("://").Append(local.Authority);
        builder.Append(local.AbsolutePath.TrimEnd('/'));
        builder.Append(head.Target.StartsWith('/') ? head.Target : "/" + head.Target);
        return new Uri(builder.ToString());
    }

    private async Task<(int, long)> HttpAsync(CancellationToken cancellationToken)
    {
        using var request = new HttpRequestMessage(new HttpMethod(head.Method), LocalUri(connection.Options.LocalTarget.Scheme))
        {
            Version = HttpVersion.Version11,
            VersionPolicy = HttpVersionPolicy.RequestVersionOrLower,
        };
        if (head.HasBody)
            request.Content = new InboundContent(this, connection);
        foreach (var (name, value) in head.Headers)
        {
            if (name.Equals("Host", StringComparison.OrdinalIgnoreCase))
            {
                if (connection.Options.HostHeader == HostHeaderMode.Preserve)
                    request.Headers.Host = value;
                continue;
            }
            if (!request.Headers.TryAddWithoutValidation(name, value))
                request.Content?.Headers.TryAddWithoutValidation(name, value);
        }

        HttpResponseMessage response;
        try
        {
            response = await connection.Http.SendAsync(request, cancellationToken);
        }
        catch (HttpRequestException ex)
        {
            // The local server is down or refused: answer like a proxy would, the public client sees why.
            var body = Encoding.UTF8.GetBytes($"Switchboard agent: the local server {connection.Options.LocalTarget} did not answer: {ex.Message}\n");
            await connection.SendAsync(new TunnelResponseHead(502, [new("Content-Type", "text/plain; charset=utf-8"),
                new("Content-Length", body.Length.ToString(System.Globalization.CultureInfo.InvariantCulture))]).Encode(Id), cancellationToken);
            await connection.SendAsync(TunnelProtocol.Frame(TunnelFrameType.ResponseBody, Id, body), cancellationToken);
            await connection.SendAsync(TunnelProtocol.Trailers(Id, []), cancellationToken);
            return (502, body.Length);
        }
        using (response)
        {
            var headers = new List<KeyValuePair<string, string>>();
            AddHeaders(headers, response.Headers.NonValidated);
            AddHeaders(headers, response.Content.Headers.NonValidated);
            var status = (int)response.StatusCode;
            await using var body = await response.Content.ReadAsStreamAsync(cancellationToken);
            if (DataPathFor(status, response.Content.Headers.ContentLength) is { } dataUri)
            {
                // A response that is chunked as well (against the RFC, but it happens) is decoded by the handler: its
                // socket holds chunk framing, so its body is copied, never spliced.
                var delivered = await SendOnDataPathAsync(dataUri, new TunnelResponseHead(status, headers), body, response.Content.Headers.ContentLength!.Value,
                    splice: response.Headers.TransferEncodingChunked != true, cancellationToken);
                if (delivered)
                {
                    await SendTrailersAsync(response, cancellationToken);
                    return (status, response.Content.Headers.ContentLength.Value);
                }
            }
            await connection.SendAsync(new TunnelResponseHead(status, headers).Encode(Id), cancellationToken);

            var sent = 0L;
            // Sized to the body: a small response rents a small buffer (many concurrent streams stay cheap), a bulk one
            // grows to a full frame as soon as a read fills the buffer, so it is forwarded in few large frames.
            var size = response.Content.Headers.ContentLength is { } declared && declared < FirstBufferBytes ? (int)declared + 1 : FirstBufferBytes;
            var buffer = ArrayPool<byte>.Shared.Rent(TunnelProtocol.HeaderSize + size);
            try
            {
                while (true)
                {
                    var room = Math.Min(buffer.Length - TunnelProtocol.HeaderSize, TunnelProtocol.MaxResponseDataPayload);
                    var credit = await SendWindow.TakeAsync(room, cancellationToken);
                    var read = await body.ReadAsync(buffer.AsMemory(TunnelProtocol.HeaderSize, credit), cancellationToken);
                    if (read < credit)
                        SendWindow.Grant(credit - read);
                    if (read == 0)
                        break;
                    buffer[0] = (byte)TunnelFrameType.ResponseBody;
                    BinaryPrimitives.WriteUInt32BigEndian(buffer.AsSpan(1), Id);
                    await connection.SendAsync(buffer.AsMemory(0, TunnelProtocol.HeaderSize + read), cancellationToken);
                    sent += read;
                    if (read == room && room < TunnelProtocol.MaxResponseDataPayload)
                    {
                        ArrayPool<byte>.Shared.Return(buffer);
                        buffer = ArrayPool<byte>.Shared.Rent(TunnelProtocol.HeaderSize + TunnelProtocol.MaxResponseDataPayload);
                    }
                }
            }
            finally
            {
                ArrayPool<byte>.Shared.Return(buffer);
            }
            await SendTrailersAsync(response, cancellationToken);
            return (status, sent);
        }
    }

    private async Task SendTrailersAsync(HttpResponseMessage response, CancellationToken cancellationToken)
    {
        var trailers = new List<KeyValuePair<string, string>>();
        AddHeaders(trailers, response.TrailingHeaders.NonValidated);
        await connection.SendAsync(TunnelProtocol.Trailers(Id, trailers), cancellationToken);
    }

    /// <summary>
    /// The data path for this response, or null: only bodies with a known length of at least the gateway's minimum, of
    /// a response that has a body (not HEAD, 204 or 304), and not in buffered mode (the gateway collects those).
    /// </summary>
    private Uri? DataPathFor(int status, long? length)
    {
        if (length is not { } declared || status is < 200 or 204 or 304 || head.Method.Equals("HEAD", StringComparison.OrdinalIgnoreCase) ||
            connection.Options.Buffered || head.Headers.Any(h => h.Key.Equals(TunnelProtocol.BufferHeader, StringComparison.OrdinalIgnoreCase)))
            return null;
        return connection.DataPathFor(Id, declared);
    }

    /// <summary>
    /// Sends the response head and body as one request to the gateway's data path (docs/tunnels.md, "Data path"). False
    /// when the gateway refused before any of the body was read (<c>Expect: 100-continue</c>): the caller then sends the
    /// head and body over the WebSocket as usual. Throws when the body broke off after it started (the stream is lost).
    /// </summary>
    private async Task<bool> SendOnDataPathAsync(Uri uri, TunnelResponseHead responseHead, Stream body, long length, bool splice, CancellationToken cancellationToken)
    {
        var encoded = Convert.ToBase64String(responseHead.Encode(Id));
        if (encoded.Length > TunnelProtocol.MaxDataHeadBytes)
            return false;
        if (connection.ZeroCopy)
        {
            // A request of its own on a socket of its own, so the body's tail can be spliced (docs/tunnels.md, "Zero copy").
            var raw = new DataPathRequest(uri, connection.DataKey, encoded, length) { Splice = splice };
            var status = 0;
            try
            {
                status = await raw.SendAsync(body, TunnelAgent.ConnectTimeout, TunnelAgent.ContinueTimeout, cancellationToken);
            }
            catch (Exception ex) when (ex is IOException or SocketException && !cancellationToken.IsCancellationRequested && !raw.Started)
            {
                // the gateway could not be reached this way: the WebSocket still works
            }
            finally
            {
                // A body cut mid-way (the public client or the gateway went away) throws on from here: the stream is
                // over, the path is fine.
                connection.CountSpliced(raw.Spliced);
            }
            return DataPathEnded(status, raw.Started, raw.Sent, length);
        }
        var content = new DataPathContent(body, length);
        using var request = new HttpRequestMessage(HttpMethod.Post, uri)
        {
            Version = HttpVersion.Version11,
            VersionPolicy = HttpVersionPolicy.RequestVersionOrLower,
            Content = content,
        };
        request.Headers.ExpectContinue = true;
        request.Headers.TryAddWithoutValidation(TunnelProtocol.DataKeyHeader, connection.DataKey);
        request.Headers.TryAddWithoutValidation(TunnelProtocol.DataHeadHeader, encoded);
        int answered = 0;
        try
        {
            using var answer = await connection.Http.SendAsync(request, cancellationToken);
            answered = (int)answer.StatusCode;
        }
        catch (Exception ex) when (ex is HttpRequestException or IOException && !cancellationToken.IsCancellationRequested && !content.Started)
        {
            // the gateway could not be reached this way (a proxy that drops it): the WebSocket still works; a body cut
            // mid-way (the public client or the gateway went away) throws on: the stream is over, the path is fine
        }
        return DataPathEnded(answered, content.Started, content.Sent, length);
    }

    /// <summary>
    /// The outcome of a data-path request that ended with <paramref name="status"/> (0: no answer): true when the body was
    /// delivered, false when it was refused before it started, and a throw when part of it is gone.
    /// </summary>
    private bool DataPathEnded(int status, bool started, long sent, long length)
    {
        if (status == (int)HttpStatusCode.NoContent && sent == length)
        {
            connection.DataPathOutcome(sent: true, status);
            return true;
        }
        if (started)
        {
            // Part of the body is gone and cannot be sent again: the stream is lost. Not an abort the gateway asked
            // for, so RunAsync tells the gateway (abort frame), which answers the public client with 502 at once.
            // Whatever sits between here and the gateway let the body start and then refused it: it would do that again,
            // so this connection stops using the data path at once.
            connection.DataPathOutcome(sent: false, status, lostStream: true);
            throw new IOException($"the gateway answered {status} to a data-path body after it started");
        }
        connection.DataPathOutcome(sent: false, status);
        return false;
    }

    private static void AddHeaders(List<KeyValuePair<string, string>> list, HttpHeadersNonValidated headers)
    {
        var listed = HopByHop.Listed(headers);
        foreach (var (name, values) in headers)
        {
            if (HopByHop.IsHopByHop(name, listed))
                continue;
            foreach (var value in values)
                list.Add(new(name, value));
        }
    }

    /// <summary>Returns credit to the gateway for request bytes handed to the local server.</summary>
    internal void Consumed(int charged)
    {
        Inbound.Consumed(charged);
        var pending = Interlocked.Add(ref _windowPending, charged);
        if (pending >= _updateThreshold)
        {
            Interlocked.Add(ref _windowPending, -pending);
            _ = connection.TrySendAsync(TunnelProtocol.WindowUpdate(Id, pending), CancellationToken.None);
        }
    }

    private async Task<(int, long)> WebSocketAsync(CancellationToken cancellationToken)
    {
        using var local = new ClientWebSocket();
        local.Options.CollectHttpResponseDetails = true;
        local.Options.KeepAliveInterval = TimeSpan.Zero;
        foreach (var (name, value) in head.Headers)
        {
            if (name.Equals("Sec-WebSocket-Protocol", StringComparison.OrdinalIgnoreCase))
            {
                foreach (var p in value.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries))
                    local.Options.AddSubProtocol(p);
                continue;
            }
            if (name.Equals("Host", StringComparison.OrdinalIgnoreCase) || name.StartsWith("Sec-WebSocket-", StringComparison.OrdinalIgnoreCase) ||
                name.Equals("Content-Length", StringComparison.OrdinalIgnoreCase) || HopByHop.IsHopByHop(name))
                continue;
            try
            {
                local.Options.SetRequestHeader(name, value);
            }
            catch (ArgumentException)
            {
            }
        }
        var scheme = connection.Options.LocalTarget.Scheme == "https" ? "wss" : "ws";
        try
        {
            await local.ConnectAsync(LocalUri(scheme), connection.Http, cancellationToken);
        }
        catch (WebSocketException ex)
        {
            var status = local.HttpStatusCode is 0 or HttpStatusCode.SwitchingProtocols ? 502 : (int)local.HttpStatusCode;
            var body = Encoding.UTF8.GetBytes($"Switchboard agent: websocket to the local server failed: {ex.Message}\n");
            await connection.SendAsync(new TunnelResponseHead(status, [new("Content-Type", "text/plain; charset=utf-8")]).Encode(Id), cancellationToken);
            await connection.SendAsync(TunnelProtocol.Frame(TunnelFrameType.ResponseBody, Id, body), cancellationToken);
            await connection.SendAsync(TunnelProtocol.Trailers(Id, []), cancellationToken);
            return (status, body.Length);
        }
        var responseHeaders = new List<KeyValuePair<string, string>>();
        if (local.SubProtocol is { } sub)
            responseHeaders.Add(new("Sec-WebSocket-Protocol", sub));
        await connection.SendAsync(new TunnelResponseHead(101, responseHeaders).Encode(Id), cancellationToken);

        using var both = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
        var sentTotal = 0L;
        var up = Task.Run(async () =>
        {
            var buffer = ArrayPool<byte>.Shared.Rent(TunnelProtocol.MaxDataPayload);
            try
            {
                while (true)
                {
                    var credit = await SendWindow.TakeAsync(TunnelProtocol.MaxDataPayload, both.Token);
                    var usable = Math.Max(1, credit - InboundBuffer.RecordOverhead);
                    var result = await local.ReceiveAsync(buffer.AsMemory(0, usable), both.Token);
                    if (result.MessageType == WebSocketMessageType.Close)
                    {
                        SendWindow.Grant(credit);
                        await connection.SendAsync(TunnelProtocol.WsClose(Id, (int?)local.CloseStatus ?? 1000, local.CloseStatusDescription ?? ""), both.Token);
                        return;
                    }
                    var charged = result.Count + InboundBuffer.RecordOverhead;
                    if (charged < credit)
                        SendWindow.Grant(credit - charged);
                    await connection.SendAsync(TunnelProtocol.WsMessage(Id, result.MessageType == WebSocketMessageType.Binary, result.EndOfMessage, buffer.AsSpan(0, result.Count)), both.Token);
                    sentTotal += result.Count;
                }
            }
            finally
            {
                ArrayPool<byte>.Shared.Return(buffer);
            }
        }, CancellationToken.None);
        var down = Task.Run(async () =>
        {
            var reader = Inbound.Reader;
            while (true)
            {
                var result = await reader.ReadAsync(both.Token);
                var buffer = result.Buffer;
                while (InboundBuffer.TryReadRecord(ref buffer, out var flags, out var data))
                {
                    var charged = (int)data.Length + InboundBuffer.RecordOverhead;
                    if ((flags & InboundBuffer.CloseFlag) != 0)
                    {
                        var bytes = data.ToArray();
                        var code = bytes.Length >= 2 ? BinaryPrimitives.ReadUInt16BigEndian(bytes) : 1000;
                        var reason = bytes.Length > 2 ? new TunnelReader(bytes.AsSpan(2)).String() : "";
                        if (local.State is WebSocketState.Open or WebSocketState.CloseReceived)
                            await local.CloseOutputAsync(code is 1005 or 1006 ? WebSocketCloseStatus.NormalClosure : (WebSocketCloseStatus)code, reason, both.Token);
                        reader.AdvanceTo(buffer.Start);
                        return;
                    }
                    var type = (flags & 1) != 0 ? WebSocketMessageType.Binary : WebSocketMessageType.Text;
                    await local.SendAsync(data.IsSingleSegment ? data.First : data.ToArray(), type, (flags & 2) != 0, both.Token);
                    Consumed(charged);
                }
                reader.AdvanceTo(buffer.Start, result.Buffer.End);
                if (result.IsCompleted)
                    return;
            }
        }, CancellationToken.None);
        try
        {
            await Task.WhenAny(up, down);
            await Task.WhenAny(Task.WhenAll(up, down), Task.Delay(TimeSpan.FromSeconds(5), CancellationToken.None));
        }
        finally
        {
            await both.CancelAsync();
            local.Abort();
            try
            {
                await Task.WhenAll(up, down);
            }
            catch (Exception ex) when (ex is OperationCanceledException or WebSocketException or IOException or TunnelStreamAbortedException)
            {
            }
        }
        return (101, sentTotal);
    }
}

/// <summary>Request content read from the stream's inbound buffer; each chunk handed to the local server returns window credit.</summary>
internal sealed class InboundContent(AgentStream stream, AgentConnection connection) : HttpContent
{
    protected override async Task SerializeToStreamAsync(Stream target, System.Net.TransportContext? context, CancellationToken cancellationToken)
    {
        var reader = stream.Inbound.Reader;
        try
        {
            while (true)
            {
                var result = await reader.ReadAsync(cancellationToken);
                foreach (var segment in result.Buffer)
                    await target.WriteAsync(segment, cancellationToken);
                var length = (int)result.Buffer.Length;
                reader.AdvanceTo(result.Buffer.End);
                if (length > 0)
                    stream.Consumed(length);
                if (result.IsCompleted)
                    break;
            }
        }
        finally
        {
            await reader.CompleteAsync();
        }
        _ = connection;
    }

    protected override Task SerializeToStreamAsync(Stream stream, System.Net.TransportContext? context) =>
        SerializeToStreamAsync(stream, context, CancellationToken.None);

    protected override bool TryComputeLength(out long length)
    {
        length = 0;
        return false;
    }
}

/// <summary>A response body of known length copied from the local server to the data-path request, in 256 KiB reads.</summary>
internal sealed class DataPathContent(Stream source, long length) : HttpContent
{
    private const int BufferBytes = 256 * 1024;

    /// <summary>The body started to go out: from here a failure loses the stream (no fallback).</summary>
    public bool Started { get; private set; }

    public long Sent { get; private set; }

    protected override async Task SerializeToStreamAsync(Stream target, System.Net.TransportContext? context, CancellationToken cancellationToken)
    {
        Started = true;
        var buffer = ArrayPool<byte>.Shared.Rent(BufferBytes);
        try
        {
            while (Sent < length)
            {
                var read = await source.ReadAsync(buffer.AsMemory(0, (int)Math.Min(BufferBytes, length - Sent)), cancellationToken);
                if (read == 0)
                    throw new IOException($"the local server's body ended after {Sent} of {length} bytes");
                await target.WriteAsync(buffer.AsMemory(0, read), cancellationToken);
                Sent += read;
            }
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(buffer);
        }
    }

    protected override Task SerializeToStreamAsync(Stream stream, System.Net.TransportContext? context) =>
        SerializeToStreamAsync(stream, context, CancellationToken.None);

    protected override bool TryComputeLength(out long length1)
    {
        length1 = length;
        return true;
    }
}
