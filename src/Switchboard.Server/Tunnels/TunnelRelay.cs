using System.Diagnostics.Metrics;
using System.Net;
using Microsoft.AspNetCore.Http;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Options;
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
/// node with <see cref="NodeRelay"/> (plain HTTP, bodies streamed both ways, WebSocket upgrades included, authenticated
/// with the HMAC relay header), so the owning node serves it itself and never relays it again.
/// </summary>
public sealed partial class TunnelRelay(ITunnelRegistry registry, INodeRegistry nodes, NodeRelay relay, IOptions<TunnelOptions> tunnelOptions,
    IMeterFactory meterFactory, ILogger<TunnelRelay> logger)
{
    /// <summary>The header of a relayed request (see <see cref="NodeRelay.Header"/>).</summary>
    public const string Header = NodeRelay.Header;

    /// <summary>How far a relay timestamp may be from this node's clock.</summary>
    public static readonly TimeSpan MaxSkew = NodeRelay.MaxSkew;

    private readonly TunnelOptions _options = tunnelOptions.Value;
    private readonly Counter<long> _forwarded = meterFactory.Create(SwitchboardMetrics.MeterName).CreateCounter<long>("switchboard.tunnels.forwarded", "{request}",
        "Tunnel requests relayed to the node holding the agent, by kind (http or websocket) and result (ok or failed).");

    /// <summary>True when requests may be relayed: a multi-node store and an API key shared by the nodes.</summary>
    public bool Enabled => relay.Enabled;

    /// <summary>Reads and verifies the relay header of a request.</summary>
    public RelayProof Verify(HttpRequest request, out RelayOrigin? origin) => relay.Verify(request, out origin);

    /// <summary>The relay header value this node attaches to a request it relays.</summary>
    public string CreateHeader(IPAddress? clientIp, string scheme) => relay.CreateHeader(clientIp, scheme);

    /// <summary>
    /// Relays the request when another node holds tunnel <paramref name="name"/>. Returns false (nothing written) when no
    /// node holds it, so the caller answers 404; answers 502 itself when the holding node is gone or unreachable.
    /// </summary>
    /// <param name="responseTimeout">
    /// How long to wait for the holding node's response head; default: its first-byte timeout plus 10 s. A data-path
    /// request passes <see cref="Timeout.InfiniteTimeSpan"/>: its answer comes only after the whole body was delivered,
    /// which takes as long as the public client takes to read it.
    /// </param>
    public async Task<bool> TryRelayAsync(HttpContext context, string name, TimeSpan? responseTimeout = null)
    {
        TunnelRegistration? registration;
        NodeInfo? node = null;
        try
        {
            registration = await registry.GetAsync(name, context.RequestAborted);
            if (registration is null || registration.NodeId == nodes.NodeId)
                return false;
            node = await nodes.GetAsync(registration.NodeId, context.RequestAborted);
        }
        catch (Exception ex) when (ex is not OperationCanceledException and not OutOfMemoryException)
        {
            Log.LookupFailed(logger, ex, name);
            await TunnelForwarder.WriteErrorAsync(context, 502, "tunnel_lookup_failed", "Bad gateway.", $"Tunnel '{name}': the tunnel registry could not be read.");
            return true;
        }
        if (node is null || NodeRelay.BaseUri(node) is not { } baseUri)
        {
            await TunnelForwarder.WriteErrorAsync(context, 502, "tunnel_node_unreachable", "Bad gateway.",
                $"Tunnel '{name}' is held by node '{registration.NodeId}', which is not running; the agent will reconnect to a live node.");
            return true;
        }
        var websocket = context.WebSockets.IsWebSocketRequest;
        // The owner answers within its own first-byte timeout (504 from there); this only catches a node that hangs.
        var timeout = responseTimeout ?? _options.FirstByteTimeout + TimeSpan.FromSeconds(10);
        RelayFailureWriter onFailure = (c, status, ws) => status == 504 && !ws
            ? TunnelForwarder.WriteErrorAsync(c, 504, "tunnel_timeout", "Gateway timeout.", $"Tunnel '{name}': node '{node.Id}' did not answer in time.")
            : TunnelForwarder.WriteErrorAsync(c, status, "tunnel_node_unreachable", ws ? "WebSocket upgrade failed." : "Bad gateway.",
                $"Tunnel '{name}': node '{node.Id}' could not be reached.");
        var what = $"tunnel '{name}'";
        var ok = websocket
            ? await relay.RelayWebSocketAsync(context, node, baseUri, timeout, what, onFailure)
            : await relay.RelayHttpAsync(context, node, baseUri, timeout, what, onFailure);
        _forwarded.Add(1, new KeyValuePair<string, object?>("kind", websocket ? "websocket" : "http"), new KeyValuePair<string, object?>("result", ok ? "ok" : "failed"));
        return true;
    }

    private static partial class Log
    {
        [LoggerMessage(3202, LogLevel.Warning, "Could not look up which node holds tunnel '{Name}'.")]
        public static partial void LookupFailed(ILogger logger, Exception exception, string name);
    }
}
