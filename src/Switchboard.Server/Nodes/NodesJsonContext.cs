using System.Text.Json.Serialization;

namespace Switchboard.Server.Nodes;

/// <summary>Body of <c>GET /api/v1/nodes</c>.</summary>
public sealed record NodeListResponse(
    [property: JsonPropertyName("self")] string Self,
    [property: JsonPropertyName("nodes")] IReadOnlyList<NodeItem> Nodes);

public sealed record NodeItem(
    [property: JsonPropertyName("id")] string Id,
    [property: JsonPropertyName("address")] string? Address,
    [property: JsonPropertyName("startedAt")] DateTimeOffset StartedAt,
    [property: JsonPropertyName("lastHeartbeat")] DateTimeOffset LastHeartbeat);

[JsonSourceGenerationOptions(PropertyNamingPolicy = JsonKnownNamingPolicy.CamelCase)]
[JsonSerializable(typeof(NodeListResponse))]
public sealed partial class NodesJsonContext : JsonSerializerContext;
