using System.Text.Json;
using System.Text.Json.Serialization;

namespace Switchboard.Protocol;

/// <summary>Position in a channel's history: the last offset seen and the history epoch it belongs to.</summary>
public sealed record StreamPosition(
    [property: JsonPropertyName("offset")] long Offset,
    [property: JsonPropertyName("epoch")] string Epoch);

/// <summary>
/// A message a client sends on <c>/api/v1/ws</c>. One shape for every type; fields not used by a type are absent.
/// Types: <c>subscribe</c>, <c>unsubscribe</c>, <c>publish</c>, <c>pong</c>, <c>ping</c>.
/// </summary>
public sealed record ChannelClientMessage
{
    [JsonPropertyName("type")] public string? Type { get; init; }
    [JsonPropertyName("channel")] public string? Channel { get; init; }
    [JsonPropertyName("since")] public StreamPosition? Since { get; init; }
    [JsonPropertyName("data")] public JsonElement? Data { get; init; }
    /// <summary>Optional client-chosen id echoed in the reply (<c>subscribed</c>, <c>published</c>, <c>error</c>).</summary>
    [JsonPropertyName("id")] public string? Id { get; init; }
}

/// <summary>Sent once when a connection is accepted.</summary>
public sealed record WelcomeMessage(
    [property: JsonPropertyName("connectionId")] string ConnectionId,
    [property: JsonPropertyName("heartbeatSeconds")] double HeartbeatSeconds)
{
    [JsonPropertyName("type")] public string Type => "welcome";
}

public sealed record SubscribedMessage(
    [property: JsonPropertyName("channel")] string Channel,
    [property: JsonPropertyName("offset")] long Offset,
    [property: JsonPropertyName("epoch")] string Epoch,
    [property: JsonPropertyName("recovered"), JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingNull)] bool? Recovered,
    [property: JsonPropertyName("id"), JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingNull)] string? Id)
{
    [JsonPropertyName("type")] public string Type => "subscribed";
}

public sealed record UnsubscribedMessage(
    [property: JsonPropertyName("channel")] string Channel,
    [property: JsonPropertyName("id"), JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingNull)] string? Id)
{
    [JsonPropertyName("type")] public string Type => "unsubscribed";
}

public sealed record PublishedMessage(
    [property: JsonPropertyName("channel")] string Channel,
    [property: JsonPropertyName("offset")] long Offset,
    [property: JsonPropertyName("epoch")] string Epoch,
    [property: JsonPropertyName("id"), JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingNull)] string? Id)
{
    [JsonPropertyName("type")] public string Type => "published";
}

/// <summary>A recoverable error in reply to one client message; the connection stays open.</summary>
public sealed record ErrorMessage(
    [property: JsonPropertyName("code")] string Code,
    [property: JsonPropertyName("message")] string Message,
    [property: JsonPropertyName("channel"), JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingNull)] string? Channel = null,
    [property: JsonPropertyName("id"), JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingNull)] string? Id = null)
{
    [JsonPropertyName("type")] public string Type => "error";
}

/// <summary>Body of <c>POST /api/v1/channels/{channel}/messages</c>.</summary>
public sealed record PublishRequest
{
    [JsonPropertyName("data")] public JsonElement Data { get; init; }
    [JsonPropertyName("excludeConnection")] public string? ExcludeConnection { get; init; }
}

/// <summary>Reply of a publish: the offset given to the message and the channel's epoch.</summary>
public sealed record PublishResult(
    [property: JsonPropertyName("offset")] long Offset,
    [property: JsonPropertyName("epoch")] string Epoch);

/// <summary>One message as returned by the history endpoint.</summary>
public sealed record HistoryItem(
    [property: JsonPropertyName("offset")] long Offset,
    [property: JsonPropertyName("data")] JsonElement Data,
    [property: JsonPropertyName("timestamp")] DateTimeOffset Timestamp);

/// <summary>Reply of <c>GET /api/v1/channels/{channel}/messages</c>.</summary>
public sealed record HistoryResponse(
    [property: JsonPropertyName("channel")] string Channel,
    [property: JsonPropertyName("offset")] long Offset,
    [property: JsonPropertyName("epoch")] string Epoch,
    [property: JsonPropertyName("recovered")] bool Recovered,
    [property: JsonPropertyName("messages")] IReadOnlyList<HistoryItem> Messages);

/// <summary>A channel message as a client receives it (used by the .NET client to parse).</summary>
public sealed record ChannelServerMessage
{
    [JsonPropertyName("type")] public string? Type { get; init; }
    [JsonPropertyName("channel")] public string? Channel { get; init; }
    [JsonPropertyName("offset")] public long Offset { get; init; }
    [JsonPropertyName("epoch")] public string? Epoch { get; init; }
    [JsonPropertyName("recovered")] public bool? Recovered { get; init; }
    [JsonPropertyName("data")] public JsonElement? Data { get; init; }
    [JsonPropertyName("connectionId")] public string? ConnectionId { get; init; }
    [JsonPropertyName("code")] public string? Code { get; init; }
    [JsonPropertyName("message")] public string? Message { get; init; }
    [JsonPropertyName("id")] public string? Id { get; init; }
}
