using Switchboard.Protocol;

namespace Switchboard.Client.Connections;

/// <summary>
/// When and how soon to reconnect: exponential backoff with full jitter, reset after a successful connection;
/// close codes that cannot succeed on retry (4401, 4403, 4404, 1008, 1009, 1000) stop reconnecting.
/// </summary>
public sealed record ReconnectPolicy
{
    public TimeSpan InitialDelay { get; init; } = TimeSpan.FromMilliseconds(250);
    public TimeSpan MaxDelay { get; init; } = TimeSpan.FromSeconds(30);
    public double Multiplier { get; init; } = 2;

    /// <summary>0 means retry forever.</summary>
    public int MaxAttempts { get; init; }

    public static ReconnectPolicy Default { get; } = new();

    /// <summary>The delay before attempt <paramref name="attempt"/> (1-based) after a close with <paramref name="closeCode"/>, or null to stop.</summary>
    public TimeSpan? NextDelay(int attempt, int closeCode)
    {
        if (!CloseCodes.ShouldReconnect(closeCode) || (MaxAttempts > 0 && attempt > MaxAttempts))
            return null;
        if (!CloseCodes.ShouldBackOff(closeCode) && attempt == 1)
            return TimeSpan.Zero; // stale or slow: reconnect at once and recover
        var ceiling = Math.Min(MaxDelay.TotalMilliseconds, InitialDelay.TotalMilliseconds * Math.Pow(Multiplier, attempt - 1));
        return TimeSpan.FromMilliseconds(Random.Shared.NextDouble() * ceiling);
    }
}
