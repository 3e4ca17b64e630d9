namespace Switchboard.Server.Environments;

/// <summary>
/// The definition of an environment as stored. <see cref="NodeId"/> is the node that runs it (its owner): only that
/// node starts its workload, writes its lines and serves its connections; the others route to it. Null in rows written
/// before owners were recorded (the first node to load such a row claims it).
/// </summary>
public sealed record EnvironmentRecord(
    string Id,
    string Name,
    string Driver,
    string? Command,
    IReadOnlyList<string> Args,
    string? Cwd,
    IReadOnlyDictionary<string, string> Env,
    string? Image,
    DateTimeOffset CreatedAt,
    string? NodeId = null);

/// <summary>One stored output line. <see cref="Stream"/> is 1 for stdout, 2 for stderr.</summary>
public sealed record LogRecord(long Seq, DateTimeOffset Timestamp, byte Stream, string Message)
{
    /// <summary>
    /// The line's <c>log</c> message as UTF-8 JSON, encoded once when the line was read (empty for lines read back
    /// from the store). Live lines of one read share one buffer, comma-separated, so a batch of consecutive lines is
    /// one copy. Not part of equality.
    /// </summary>
    internal ReadOnlyMemory<byte> Json { get; init; }

    public bool Equals(LogRecord? other) =>
        other is not null && Seq == other.Seq && Timestamp == other.Timestamp && Stream == other.Stream && Message == other.Message;

    public override int GetHashCode() => HashCode.Combine(Seq, Timestamp, Stream, Message);
}

/// <summary>Environment definitions and their output lines.</summary>
public interface IEnvironmentStore
{
    /// <summary>Creates a definition; false when the id or the name is taken.</summary>
    ValueTask<bool> CreateAsync(EnvironmentRecord environment, CancellationToken cancellationToken);

    ValueTask<EnvironmentRecord?> GetAsync(string id, CancellationToken cancellationToken);

    /// <summary>The definition named <paramref name="name"/> (names are unique across every node), or null.</summary>
    ValueTask<EnvironmentRecord?> GetByNameAsync(string name, CancellationToken cancellationToken);

    /// <summary>
    /// Moves an environment to node <paramref name="nodeId"/> if its owner is still <paramref name="expectedNodeId"/>
    /// (null: no owner recorded). Atomic compare-and-set: when several nodes claim the same environment at once, exactly
    /// one succeeds. False when the environment does not exist or its owner is not the expected one.
    /// </summary>
    ValueTask<bool> SetOwnerAsync(string id, string nodeId, string? expectedNodeId, CancellationToken cancellationToken);

    ValueTask<IReadOnlyList<EnvironmentRecord>> ListAsync(CancellationToken cancellationToken);

    /// <summary>Deletes the definition and its lines; false when it did not exist.</summary>
    ValueTask<bool> DeleteAsync(string id, CancellationToken cancellationToken);

    /// <summary>Appends lines (ascending seq), then deletes lines older than the newest <paramref name="retention"/>.</summary>
    ValueTask AppendLogsAsync(string environmentId, IReadOnlyList<LogRecord> lines, long retention, CancellationToken cancellationToken);

    /// <summary>Lines with seq greater than <paramref name="afterSeq"/> and at most <paramref name="upToSeq"/>, ascending, at most <paramref name="limit"/>.</summary>
    ValueTask<IReadOnlyList<LogRecord>> ReadLogsAsync(string environmentId, long afterSeq, long upToSeq, int limit, CancellationToken cancellationToken);

    /// <summary>The last <paramref name="count"/> lines with seq at most <paramref name="upToSeq"/>, ascending.</summary>
    ValueTask<IReadOnlyList<LogRecord>> TailLogsAsync(string environmentId, long upToSeq, int count, CancellationToken cancellationToken);

    /// <summary>The highest stored seq, 0 when there is none.</summary>
    ValueTask<long> LastSeqAsync(string environmentId, CancellationToken cancellationToken);
}
