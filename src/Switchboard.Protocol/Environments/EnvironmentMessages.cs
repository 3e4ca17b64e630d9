using System.Text.Json.Serialization;

namespace Switchboard.Protocol.Environments;

/// <summary>Body of <c>POST /api/v1/environments</c>.</summary>
public sealed record CreateEnvironmentRequest(
    string? Name,
    string? Driver,
    string? Command,
    IReadOnlyList<string>? Args,
    string? Cwd,
    IReadOnlyDictionary<string, string>? Env,
    string? Image,
    bool? Start);

/// <summary>An environment as the REST API returns it. <see cref="Node"/> is the id of the node that runs it.</summary>
public sealed record EnvironmentInfo(
    string Id,
    string Name,
    string Driver,
    string? Command,
    IReadOnlyList<string> Args,
    string? Cwd,
    IReadOnlyDictionary<string, string> Env,
    string? Image,
    string Status,
    int? ExitCode,
    int? Pid,
    long LastSeq,
    long DroppedLines,
    DateTimeOffset CreatedAt,
    DateTimeOffset? StartedAt,
    DateTimeOffset? FinishedAt,
    string? Error,
    string? Node = null);

/// <summary>Body of <c>GET /api/v1/environments</c>.</summary>
public sealed record EnvironmentList(IReadOnlyList<EnvironmentInfo> Environments);

/// <summary>Names of the status values.</summary>
public static class EnvironmentStatus
{
    public const string Creating = "creating";
    public const string Running = "running";
    public const string Stopped = "stopped";
    public const string Exited = "exited";
    public const string Failed = "failed";

    /// <summary>Several nodes: the node that runs the environment is gone (its process ended with it) or cannot be reached.</summary>
    public const string Unavailable = "unavailable";
}

/// <summary>
/// One output line. <see cref="Seq"/> is per environment and strictly increasing across restarts of the workload,
/// so <c>?since=SEQ</c> resumes exactly after the last line a client saw.
/// </summary>
public sealed record LogLine(
    [property: JsonPropertyName("type")] string Type,
    [property: JsonPropertyName("seq")] long Seq,
    [property: JsonPropertyName("timestamp")] DateTimeOffset Timestamp,
    [property: JsonPropertyName("stream")] string Stream,
    [property: JsonPropertyName("message")] string Message);

/// <summary>
/// Several lines in one frame: the history sent on connect (<c>live=false</c>), or live lines flushed together
/// (every 100 ms or at 100 lines).
/// </summary>
public sealed record LogBatch(
    [property: JsonPropertyName("type")] string Type,
    [property: JsonPropertyName("live")] bool Live,
    [property: JsonPropertyName("count")] int Count,
    [property: JsonPropertyName("lastSeq")] long LastSeq,
    [property: JsonPropertyName("logs")] IReadOnlyList<LogLine> Logs);

/// <summary>
/// Lines this client will not receive: while paused beyond the buffer (<c>reason=paused</c>), or lines no longer
/// retained for a <c>since</c> resume (<c>reason=retention</c>). <c>fromSeq..toSeq</c> is the range, <c>count</c> how many lines.
/// </summary>
public sealed record LogSkipped(
    [property: JsonPropertyName("type")] string Type,
    [property: JsonPropertyName("reason")] string Reason,
    [property: JsonPropertyName("count")] long Count,
    [property: JsonPropertyName("fromSeq")] long FromSeq,
    [property: JsonPropertyName("toSeq")] long ToSeq);

/// <summary>Acknowledges a control message (pause, resume, filter).</summary>
public sealed record LogControlAck(
    [property: JsonPropertyName("type")] string Type,
    [property: JsonPropertyName("action")] string Action,
    [property: JsonPropertyName("stream")] string Stream,
    [property: JsonPropertyName("paused")] bool Paused);

/// <summary>Client control message on the logs socket: <c>pause</c>, <c>resume</c>, <c>filter</c> (with <c>stream</c>).</summary>
public sealed record LogControl(
    [property: JsonPropertyName("action")] string? Action,
    [property: JsonPropertyName("stream")] string? Stream);

/// <summary>Every terminal message in both directions: <c>ready</c>, <c>input</c>, <c>output</c>, <c>resize</c>, <c>exit</c>, <c>error</c>.</summary>
public sealed record TerminalMessage(
    [property: JsonPropertyName("type")] string? Type,
    [property: JsonPropertyName("data")] string? Data = null,
    [property: JsonPropertyName("cols")] int? Cols = null,
    [property: JsonPropertyName("rows")] int? Rows = null,
    [property: JsonPropertyName("code")] int? Code = null);

/// <summary>Status of an environment, sent on connect and on every change.</summary>
public sealed record StatusMessage(
    [property: JsonPropertyName("type")] string Type,
    [property: JsonPropertyName("status")] string Status,
    [property: JsonPropertyName("exitCode")] int? ExitCode,
    [property: JsonPropertyName("error")] string? Error,
    [property: JsonPropertyName("timestamp")] DateTimeOffset Timestamp);

/// <summary>Network counters in bytes.</summary>
public sealed record NetworkCounters(
    [property: JsonPropertyName("rx")] long Rx,
    [property: JsonPropertyName("tx")] long Tx);

/// <summary>Resource usage sample, sent every metrics interval (5 s by default).</summary>
public sealed record MetricsMessage(
    [property: JsonPropertyName("type")] string Type,
    [property: JsonPropertyName("cpu")] double Cpu,
    [property: JsonPropertyName("memory")] long Memory,
    [property: JsonPropertyName("memoryLimit")] long MemoryLimit,
    [property: JsonPropertyName("network")] NetworkCounters Network,
    [property: JsonPropertyName("timestamp")] DateTimeOffset Timestamp);
