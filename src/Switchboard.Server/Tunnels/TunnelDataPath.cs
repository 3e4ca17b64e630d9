using System.Diagnostics.Metrics;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Http.Features;
using Microsoft.AspNetCore.Server.Kestrel.Transport.Sockets;
using Microsoft.Extensions.Options;
using Switchboard.Protocol.Tunnels;
using Switchboard.Server.Diagnostics;
using Switchboard.Server.Http;

namespace Switchboard.Server.Tunnels;

/// <summary>
/// The data path: <c>POST /tunnel/data/{tunnel}/{stream}</c> from an agent carries one response body as its request body
/// and the response head in the <see cref="TunnelProtocol.DataHeadHeader"/> header. The body is copied from the request
/// straight into the public response, without WebSocket framing, masking, per-stream windows or the stream buffer; TCP
/// is the flow control. Everything is checked before the body is read, so a refused request (the agent sends
/// <c>Expect: 100-continue</c>) costs one round trip and the agent sends the body over the WebSocket instead.
/// </summary>
public sealed class TunnelDataPath
{
    private readonly TunnelHub _hub;
    private readonly TunnelRelay _relay;
    private readonly Counter<long> _bodies;

    private readonly long _parkBytes;

    public TunnelDataPath(TunnelHub hub, TunnelRelay relay, IOptions<SocketTransportOptions> transport, IMeterFactory meterFactory)
    {
        _hub = hub;
        _relay = relay;
        _parkBytes = transport.Value.MaxReadBufferSize ?? 0;
        _bodies = meterFactory.Create(SwitchboardMetrics.MeterName).CreateCounter<long>("switchboard.tunnels.data_path", "{body}",
            "Response bodies offered on the tunnel data path, by result: delivered, cut (the public client or the agent went away), or refused with the reason.");
    }

    public async Task HandleAsync(HttpContext context, string name, long stream)
    {
        name = name.ToLowerInvariant();
        var session = _hub.Find(name);
        if (session is null)
        {
            // A load balancer sent the request to a node without the agent. A proxy before this node may already have
            // told the agent to send the body (nginx answers Expect: 100-continue itself), so a refusal could cost
            // the stream: relay the request to the node that holds the agent, as for a public request. Never a
            // request that was relayed already (no loops); one that is refused here falls back to the WebSocket.
            var proof = _relay.Verify(context.Request, out _);
            if (proof == RelayProof.Invalid)
            {
                await RefuseAsync(context, StatusCodes.Status403Forbidden, "invalid_relay", $"the {TunnelRelay.Header} header is only accepted from the gateway's own nodes");
                return;
            }
            // No response timeout: the holding node answers when the public client has read the whole body.
            if (proof == RelayProof.Absent && _relay.Enabled && await _relay.TryRelayAsync(context, name, Timeout.InfiniteTimeSpan))
            {
                _bodies.Add(1, new KeyValuePair<string, object?>("result", "relayed"));
                return;
            }
            await RefuseAsync(context, StatusCodes.Status421MisdirectedRequest, "tunnel_not_here", $"tunnel '{name}' has no agent on this node");
            return;
        }
        if (!session.MatchesDataKey(context.Request.Headers[TunnelProtocol.DataKeyHeader]))
        {
            await RefuseAsync(context, StatusCodes.Status403Forbidden, "invalid_data_key", "the data key does not match the tunnel's connection");
            return;
        }
        if (stream is < 1 or > uint.MaxValue || session.FindStream((uint)stream) is not { } target)
        {
            await RefuseAsync(context, StatusCodes.Status404NotFound, "stream_not_found", $"stream {stream} is not in flight");
            return;
        }
        if (context.Request.ContentLength is not { } length)
        {
            await RefuseAsync(context, StatusCodes.Status411LengthRequired, "length_required", "a data-path body needs a Content-Length");
            return;
        }
        if (!TryReadHead(context.Request.Headers[TunnelProtocol.DataHeadHeader], (uint)stream, out var head))
        {
            await RefuseAsync(context, StatusCodes.Status400BadRequest, "malformed_head", $"the {TunnelProtocol.DataHeadHeader} header is not a response head of this stream");
            return;
        }
        if (context.Features.Get<IHttpMaxRequestBodySizeFeature>() is { IsReadOnly: false } limit)
            limit.MaxRequestBodySize = length; // exactly what the head announced; the forwarder reads no more
        var body = new ExternalBody(context.Request.BodyReader, length)
        {
            Socket = TunnelZeroCopy.PlainSocket(context),
            ParkBytes = _parkBytes,
        };
        if (!target.TryAttach(head, body))
        {
            await RefuseAsync(context, StatusCodes.Status409Conflict, "stream_answered", $"stream {stream} already has a response or was aborted");
            return;
        }
        // The forwarder of the public request reads the body from here on; this request must stay open until it is done.
        // Done always completes: the copy ends with the body, with either connection, or with the public request.
        var delivered = await body.Done;
        _bodies.Add(1, new KeyValuePair<string, object?>("result", delivered ? "delivered" : "cut"));
        if (!delivered)
        {
            // The rest of the body has nowhere to go: cut the upload so the agent stops reading from its local server.
            context.Abort();
            return;
        }
        if (body.Spliced)
        {
            // The tail of the body left the socket behind Kestrel's back; this connection cannot carry another request.
            context.Response.Headers.Connection = "close";
        }
        context.Response.StatusCode = StatusCodes.Status204NoContent;
    }

    private Task RefuseAsync(HttpContext context, int status, string error, string message)
    {
        _bodies.Add(1, new KeyValuePair<string, object?>("result", error));
        return ApiResults.WriteProblemAsync(context, status, error, message);
    }

    private static bool TryReadHead(string? encoded, uint stream, out TunnelResponseHead head)
    {
        head = null!;
        if (string.IsNullOrEmpty(encoded) || encoded.Length > TunnelProtocol.MaxDataHeadBytes * 4 / 3 + 4)
            return false;
        try
        {
            var frame = Convert.FromBase64String(encoded);
            if (frame.Length < TunnelProtocol.HeaderSize || TunnelProtocol.TypeOf(frame) != TunnelFrameType.ResponseHead || TunnelProtocol.StreamOf(frame) != stream)
                return false;
            head = TunnelResponseHead.Decode(TunnelProtocol.PayloadOf(frame));
            return head.Status is >= 200 and <= 999;
        }
        catch (FormatException)
        {
            return false;
        }
    }
}
