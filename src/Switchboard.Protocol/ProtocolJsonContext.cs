using System.Text.Json.Serialization;

namespace Switchboard.Protocol;

/// <summary>Source-generated JSON metadata for every wire type. Features add their types here.</summary>
[JsonSourceGenerationOptions(
    PropertyNamingPolicy = JsonKnownNamingPolicy.CamelCase,
    DefaultIgnoreCondition = JsonIgnoreCondition.Never,
    UseStringEnumConverter = true)]
[JsonSerializable(typeof(StreamPosition))]
[JsonSerializable(typeof(ChannelClientMessage))]
[JsonSerializable(typeof(ChannelServerMessage))]
[JsonSerializable(typeof(WelcomeMessage))]
[JsonSerializable(typeof(SubscribedMessage))]
[JsonSerializable(typeof(UnsubscribedMessage))]
[JsonSerializable(typeof(PublishedMessage))]
[JsonSerializable(typeof(ErrorMessage))]
[JsonSerializable(typeof(PublishRequest))]
[JsonSerializable(typeof(PublishResult))]
[JsonSerializable(typeof(HistoryItem))]
[JsonSerializable(typeof(HistoryResponse))]
[JsonSerializable(typeof(ProblemBody))]
[JsonSerializable(typeof(System.Text.Json.JsonElement))]
[JsonSerializable(typeof(string))]
public sealed partial class ProtocolJsonContext : JsonSerializerContext;

/// <summary>Error body of every HTTP API error: a stable code and a sentence for people.</summary>
public sealed record ProblemBody(
    [property: JsonPropertyName("error")] string Error,
    [property: JsonPropertyName("message")] string Message);
