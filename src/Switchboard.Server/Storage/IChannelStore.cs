namespace Switchboard.Server.Storage;

/// <summary>Where a channel stands: the offset of its newest message (0 when none) and its history epoch.</summary>
public readonly record struct ChannelPosition(long Offset, string Epoch);

/// <summary>One stored channel message. <see cref="Data"/> is the UTF-8 JSON value the publisher sent.</summary>
public sealed record StoredMessage(string Channel, long Offset, ReadOnlyMemory<byte> Data, DateTimeOffset Timestamp);

/// <summary>
/// Messages after a position. <see cref="Complete"/> is true when <see cref="Messages"/> holds every message after the
/// requested offset up to <see cref="Position"/> (nothing was trimmed in between and the limit was not hit).
/// </summary>
public sealed record ChannelHistory(ChannelPosition Position, IReadOnlyList<StoredMessage> Messages, bool Complete);

/// <summary>
/// Channel offsets and history. Offsets are per channel, start at 1 and grow by exactly 1 per append; the epoch is
/// chosen when a channel is first seen and changes only when its history is lost, so a client can tell that offsets
/// it holds no longer mean anything.
/// </summary>
public interface IChannelStore
{
    /// <summary>The channel's current position, creating the channel (offset 0, new epoch) when unknown.</summary>
    ValueTask<ChannelPosition> GetPositionAsync(string channel, CancellationToken cancellationToken);

    /// <summary>Appends one message, giving it the next offset, and trims history beyond <paramref name="retain"/> messages.</summary>
    ValueTask<AppendResult> AppendAsync(string channel, ReadOnlyMemory<byte> data, int retain, CancellationToken cancellationToken);

    /// <summary>Messages with offset greater than <paramref name="afterOffset"/>, oldest first, at most <paramref name="limit"/>.</summary>
    ValueTask<ChannelHistory> ReadAsync(string channel, long afterOffset, int limit, CancellationToken cancellationToken);

    /// <summary>Deletes messages older than <paramref name="olderThan"/> from every channel. Returns how many were removed.</summary>
    ValueTask<int> TrimOlderThanAsync(DateTimeOffset olderThan, CancellationToken cancellationToken);
}

/// <summary>The stored message and the epoch of its channel.</summary>
public sealed record AppendResult(StoredMessage Message, string Epoch);
