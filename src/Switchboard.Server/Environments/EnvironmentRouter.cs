using System.Diagnostics.Metrics;
using System.Net;
using System.Net.Http.Headers;
using System.Text.Json;
using Microsoft.AspNetCore.Http;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Options;
using Switchboard.Protocol;
using Switchboard.Protocol.Environments;
using Switchboard.Server.Auth;
using Switchboard.Server.Connections;
using Switchboard.Server.Diagnostics;
using Switchboard.Server.Http;
using Switchboard.Server.Nodes;
using Switchboard.Server.Tunnels;

namespace Switchboard.Server.Environments;

/// <summary>
/// Routes environment requests to the node that runs the environment. An environment's process, log ring and
/// terminals live on its owner node (<see cref="EnvironmentRecord.NodeId"/>); a REST call or a logs/terminal/status
/// WebSocket for it that lands on another node is relayed there with <see cref="NodeRelay"/> (HTTP, WebSocket upgrade,
/// HMAC relay header). Credentials are checked by the owner, exactly as if the client had connected to it, so its
/// answers (401/403/404, close codes 4401/4403/4404/4429/4410) reach the client unchanged. When the owner is gone from
/// the node registry, or cannot be reached, this node checks the credentials itself and answers 503 / closes with
/// <see cref="CloseCodes.NodeUnavailable"/>.
/// </summary>
internal sealed partial class EnvironmentRouter(
    EnvironmentManager manager,
    NodeRelay relay,
    INodeRegistry nodes,
    RequestAuth auth,
    IOptions<EnvironmentOptions> options,
    IMeterFactory meterFactory,
    ILogger<EnvironmentRouter> logger)
{
    /// <summary>How long a node's part of a list may take before its environments are listed as unavailable.</summary>
    private static readonly TimeSpan ListTimeout = TimeSpan.FromSeconds(5);

    private readonly Counter<long> _forwarded = meterFactory.Create(SwitchboardMetrics.MeterName).CreateCounter<long>("switchboard.environments.forwarded", "{request}",
        "Environment requests relayed to the node that runs the environment, by kind (http, websocket or list) and result (ok or failed).");

    /// <summary>Relays of REST calls wait this long for the owner's answer: a stop may take the grace period, a container start longer.</summary>
    private TimeSpan ResponseTimeout => TimeSpan.FromSeconds(60) + options.Value.StopGracePeriod;

    /// <summary>
    /// Handles a REST call for an environment another node runs: relays it there, or answers 503 when that node is gone
    /// (a DELETE then removes the definition here). Returns null when this node serves the call itself: the environment
    /// is its own or unknown (404 as usual), the call was relayed to it already, or there is only one node.
    /// </summary>
    public async Task<IResult?> TryRouteAsync(string id, HttpContext context, bool delete)
    {
        var proof = relay.Verify(context.Request, out var origin);
        if (proof == RelayProof.Invalid)
            return ApiResults.Problem(403, "invalid_relay", $"the {NodeRelay.Header} header is only accepted from the gateway's own nodes");
        if (origin is not null || !relay.Enabled || await manager.FindAsync(id) is not null)
            return null;
        (EnvironmentRecord Record, NodeInfo? Node)? remote;
        try
        {
            remote = await LocateRemoteAsync(id, context.RequestAborted);
        }
        catch (Exception ex) when (ex is not OperationCanceledException and not OutOfMemoryException)
        {
            Log.LookupFailed(logger, ex, id);
            return ApiResults.Problem(503, "store_unavailable", "the environment store could not be read");
        }
        if (remote is not { Record: var record, Node: var node })
            return null;
        if (node is not null && NodeRelay.BaseUri(node) is { } baseUri)
        {
            var ok = await relay.RelayHttpAsync(context, node, baseUri, ResponseTimeout, $"environment '{id}'", (c, status, _) =>
                ApiResults.WriteProblemAsync(c, 503, "node_unavailable", Unreachable(record, status)));
            Count("http", ok);
            return Results.Empty;
        }
        var validation = await auth.AuthenticateAsync(context.Request);
        if (validation.Grants is not { } grants)
            return ApiResults.Unauthorized(validation.Error ?? "unauthorized");
        if (!CanAccess(grants, record))
            return ApiResults.Forbidden("the credentials do not grant this environment");
        if (delete)
            return await manager.DeleteUnavailableAsync(record, CancellationToken.None) ? Results.NoContent() : ApiResults.NotFound($"no environment '{id}'");
        return ApiResults.Problem(503, "node_unavailable", Gone(record));
    }

    // The stored record and the live owner (null when gone) of an environment another node runs; null when this node
    // serves it or no node does.
    private async Task<(EnvironmentRecord Record, NodeInfo? Node)?> LocateRemoteAsync(string id, CancellationToken cancellationToken)
    {
        var record = await manager.LocateAsync(id, cancellationToken);
        if (record?.NodeId is null || record.NodeId == manager.NodeId)
            return null;
        return (record, await nodes.GetAsync(record.NodeId, cancellationToken));
    }

    /// <summary>
    /// Handles a WebSocket for an environment another node runs: relays the upgrade there, or accepts it, checks the
    /// token and closes with 4503 when that node is gone or unreachable. False when this node serves it itself.
    /// </summary>
    public async Task<bool> TryRouteWebSocketAsync(string id, HttpContext context, WsAcceptor acceptor, string kind)
    {
        var proof = relay.Verify(context.Request, out var origin);
        if (proof == RelayProof.Invalid)
        {
            await ApiResults.WriteProblemAsync(context, 403, "invalid_relay", $"the {NodeRelay.Header} header is only accepted from the gateway's own nodes");
            return true;
        }
        if (origin is not null)
        {
            // Relayed by the node the client connected to: the client's own address counts (per-address rate limit, logs).
            if (origin.ClientIp is not null)
                context.Connection.RemoteIpAddress = origin.ClientIp;
            return false;
        }
        if (!relay.Enabled || !context.WebSockets.IsWebSocketRequest || await manager.FindAsync(id) is not null)
            return false;
        (EnvironmentRecord Record, NodeInfo? Node)? remote;
        try
        {
            remote = await LocateRemoteAsync(id, context.RequestAborted);
        }
        catch (Exception ex) when (ex is not OperationCanceledException and not OutOfMemoryException)
        {
            Log.LookupFailed(logger, ex, id);
            await RejectAsync(context, acceptor, null, CloseCodes.InternalError, "the environment store could not be read");
            return true;
        }
        if (remote is not { Record: var record, Node: var node })
            return false;
        if (node is not null && NodeRelay.BaseUri(node) is { } baseUri)
        {
            var ok = await relay.RelayWebSocketAsync(context, node, baseUri, TimeSpan.FromSeconds(10), $"environment '{id}' {kind}", (c, status, _) =>
                RejectAsync(c, acceptor, record, CloseCodes.NodeUnavailable, Unreachable(record, status)));
            Count("websocket", ok);
            return true;
        }
        await RejectAsync(context, acceptor, record, CloseCodes.NodeUnavailable, Gone(record));
        return true;
    }

    /// <summary>Accepts the socket here only to say why it cannot be served: the token is checked first (4401, 4403), then <paramref name="code"/>.</summary>
    private static async Task RejectAsync(HttpContext context, WsAcceptor acceptor, EnvironmentRecord? record, int code, string reason)
    {
        var connection = await acceptor.AcceptAsync(context, "env-relay");
        if (connection is null)
            return;
        if (record is not null && !CanAccess(connection.Grants, record))
            await acceptor.CloseRegisteredAsync(connection, CloseCodes.Forbidden, "the token does not grant this environment");
        else
            await acceptor.CloseRegisteredAsync(connection, code, Truncate(reason));
    }

    /// <summary>A close reason must fit in 123 bytes.</summary>
    private static string Truncate(string reason) => reason.Length <= 120 ? reason : reason[..117] + "...";

    /// <summary>
    /// The environments of the other nodes that <paramref name="grants"/> may see: each live node that runs some is asked
    /// for its own list (in parallel, relayed with the client's credentials); those of nodes that are gone or do not
    /// answer are listed from their stored definition with status <c>unavailable</c>. Empty with one node or for a relayed list.
    /// </summary>
    public async Task<IReadOnlyList<EnvironmentInfo>> ListOthersAsync(HttpContext context, Grants grants)
    {
        if (!relay.Enabled || relay.Verify(context.Request, out _) != RelayProof.Absent)
            return [];
        var cancellationToken = context.RequestAborted;
        var records = await manager.ListRecordsAsync(cancellationToken);
        var others = records.Where(r => r.NodeId is not null && r.NodeId != manager.NodeId).GroupBy(r => r.NodeId!).ToList();
        if (others.Count == 0)
            return [];
        var live = (await nodes.ListAsync(cancellationToken)).ToDictionary(n => n.Id, StringComparer.Ordinal);
        var parts = await Task.WhenAll(others.Select(async group =>
        {
            if (live.TryGetValue(group.Key, out var node) && NodeRelay.BaseUri(node) is { } baseUri)
            {
                var listed = await ListNodeAsync(context, node, baseUri, cancellationToken);
                Count("list", listed is not null);
                if (listed is not null)
                    return listed;
                return group.Where(r => CanAccess(grants, r)).Select(r => Unavailable(r, $"node '{r.NodeId}' could not be reached")).ToList();
            }
            return group.Where(r => CanAccess(grants, r)).Select(r => Unavailable(r, Gone(r))).ToList();
        }));
        return [.. parts.SelectMany(p => p)];
    }

    /// <summary>Asks one node for its own environments, with the client's credentials; null when it does not answer 200 in time.</summary>
    private async Task<IReadOnlyList<EnvironmentInfo>?> ListNodeAsync(HttpContext context, NodeInfo node, Uri baseUri, CancellationToken cancellationToken)
    {
        using var timeout = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
        timeout.CancelAfter(ListTimeout);
        using var message = new HttpRequestMessage(HttpMethod.Get, new Uri(baseUri, "/api/v1/environments" + context.Request.QueryString.ToUriComponent()))
        {
            Version = HttpVersion.Version11,
        };
        // The same credentials wherever the client put them: query string (kept above), Authorization header or cookie.
        if (context.Request.Headers.Authorization.Count > 0)
            message.Headers.TryAddWithoutValidation("Authorization", (IEnumerable<string>)context.Request.Headers.Authorization!);
        if (context.Request.Headers.Cookie.Count > 0)
            message.Headers.TryAddWithoutValidation("Cookie", string.Join("; ", context.Request.Headers.Cookie.ToArray()));
        message.Headers.Accept.Add(new MediaTypeWithQualityHeaderValue("application/json"));
        try
        {
            using var response = await relay.SendAsync(message, context, timeout.Token);
            if (response.StatusCode != HttpStatusCode.OK)
            {
                Log.ListFailed(logger, null, node.Id, (int)response.StatusCode);
                return null;
            }
            await using var body = await response.Content.ReadAsStreamAsync(timeout.Token);
            var list = await JsonSerializer.DeserializeAsync(body, EnvironmentsJsonContext.Default.EnvironmentList, timeout.Token);
            // Only the node's own environments: it lists exactly those when the list is relayed.
            return list?.Environments.Where(e => e.Node == node.Id).ToList() ?? [];
        }
        catch (Exception ex) when (ex is HttpRequestException or IOException or JsonException or OperationCanceledException && !cancellationToken.IsCancellationRequested)
        {
            Log.ListFailed(logger, ex, node.Id, 0);
            return null;
        }
    }

    internal static bool CanAccess(Grants grants, EnvironmentRecord record) =>
        grants.IsServer || grants.CanUseEnvironment(record.Id) || grants.CanUseEnvironment(record.Name);

    private static EnvironmentInfo Unavailable(EnvironmentRecord r, string error) =>
        new(r.Id, r.Name, r.Driver, r.Command, r.Args, r.Cwd, r.Env, r.Image, EnvironmentStatus.Unavailable, null, null, 0, 0, r.CreatedAt, null, null, error, r.NodeId);

    private static string Gone(EnvironmentRecord r) =>
        $"environment '{r.Name}' ran on node '{r.NodeId}', which is not running; its process ended with that node";

    private static string Unreachable(EnvironmentRecord r, int status) =>
        status == 504 ? $"node '{r.NodeId}' running environment '{r.Name}' did not answer in time" : $"node '{r.NodeId}' running environment '{r.Name}' could not be reached";

    private void Count(string kind, bool ok) =>
        _forwarded.Add(1, new KeyValuePair<string, object?>("kind", kind), new KeyValuePair<string, object?>("result", ok ? "ok" : "failed"));

    private static partial class Log
    {
        [LoggerMessage(4111, LogLevel.Warning, "Could not look up which node runs environment '{Id}'.")]
        public static partial void LookupFailed(ILogger logger, Exception exception, string id);

        [LoggerMessage(4112, LogLevel.Warning, "Node '{NodeId}' did not list its environments (status {Status}); they are listed as unavailable.")]
        public static partial void ListFailed(ILogger logger, Exception? exception, string nodeId, int status);
    }
}
