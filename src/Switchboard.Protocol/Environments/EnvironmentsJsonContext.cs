using System.Text.Json.Serialization;

namespace Switchboard.Protocol.Environments;

/// <summary>Source-generated JSON metadata for the environments API and its three WebSocket protocols.</summary>
[JsonSourceGenerationOptions(
    PropertyNamingPolicy = JsonKnownNamingPolicy.CamelCase,
    DefaultIgnoreCondition = JsonIgnoreCondition.WhenWritingNull)]
[JsonSerializable(typeof(CreateEnvironmentRequest))]
[JsonSerializable(typeof(EnvironmentInfo))]
[JsonSerializable(typeof(EnvironmentList))]
[JsonSerializable(typeof(LogLine))]
[JsonSerializable(typeof(LogBatch))]
[JsonSerializable(typeof(LogSkipped))]
[JsonSerializable(typeof(LogControl))]
[JsonSerializable(typeof(LogControlAck))]
[JsonSerializable(typeof(TerminalMessage))]
[JsonSerializable(typeof(StatusMessage))]
[JsonSerializable(typeof(MetricsMessage))]
[JsonSerializable(typeof(IReadOnlyDictionary<string, string>))]
[JsonSerializable(typeof(IReadOnlyList<string>))]
public sealed partial class EnvironmentsJsonContext : JsonSerializerContext;
