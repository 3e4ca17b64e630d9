using System.Text.Json;
using System.Text.Json.Serialization;

namespace Switchboard.Server.Tunnels;

/// <summary>A live tunnel as listed by <c>GET /api/v1/tunnels</c>.</summary>
public sealed record TunnelInfo(string Name, string Owner, string NodeId, string ConnectionId, DateTimeOffset ConnectedAt, string? RemoteAddress,
    string LocalTarget, bool Buffered, bool BasicAuth, IReadOnlyList<string> AllowCidrs, int ActiveStreams, long TotalRequests, long BytesIn, long BytesOut);

public sealed record TunnelList(IReadOnlyList<TunnelInfo> Tunnels);

public sealed record HeaderEntry(string Name, string Value);

/// <summary>One recorded request as returned by <c>GET /api/v1/tunnels/{name}/requests</c>.</summary>
public sealed record TunnelRequestInfo(long Id, DateTimeOffset StartedAt, string Method, string Path, int Status, double DurationMs, long RequestBytes,
    long ResponseBytes, IReadOnlyList<HeaderEntry> RequestHeaders, IReadOnlyList<HeaderEntry> ResponseHeaders, string? Error, bool Replayable);

public sealed record TunnelRequestList(string Tunnel, IReadOnlyList<TunnelRequestInfo> Requests);

/// <summary>Result of a replay: the local server's answer (body as UTF-8 text, bounded).</summary>
public sealed record ReplayResult(long ReplayOf, int Status, IReadOnlyList<HeaderEntry> Headers, string Body, int BodyBytes, bool Truncated);

[JsonSourceGenerationOptions(JsonSerializerDefaults.Web, DefaultIgnoreCondition = JsonIgnoreCondition.WhenWritingNull)]
[JsonSerializable(typeof(TunnelList))]
[JsonSerializable(typeof(TunnelRequestList))]
[JsonSerializable(typeof(ReplayResult))]
internal sealed partial class TunnelsJsonContext : JsonSerializerContext;
