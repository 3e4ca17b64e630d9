namespace Switchboard.Storage.Postgres;

/// <summary>Tunables of the PostgreSQL bus. Bound from configuration section <c>Switchboard:PostgresBus</c>.</summary>
public sealed class PostgresBusOptions
{
    public const string Section = "Switchboard:PostgresBus";

    /// <summary>The LISTEN/NOTIFY channel every node of a deployment shares. Change it to run two deployments on one database.</summary>
    public string Channel { get; set; } = "switchboard_bus";

    /// <summary>
    /// Largest encoded notification sent inline (characters). PostgreSQL refuses NOTIFY payloads of 8000 bytes or more;
    /// 7000 leaves room for the header. Larger messages are stored in <c>bus_payloads</c> and notified by id.
    /// </summary>
    public int InlineLimit { get; set; } = 7000;

    /// <summary>Messages waiting to be sent before <c>PublishAsync</c> waits (back-pressure instead of unbounded memory). 10 000 is seconds of peak traffic.</summary>
    public int SendQueueCapacity { get; set; } = 10_000;

    /// <summary>Notifications received but not yet handled before the listener stops reading (PostgreSQL then queues them server-side).</summary>
    public int ReceiveQueueCapacity { get; set; } = 10_000;

    /// <summary>Notifications sent in one transaction (one round trip). 256 keeps a batch well under a millisecond of work.</summary>
    public int MaxBatch { get; set; } = 256;

    /// <summary>How long large payloads stay in <c>bus_payloads</c>. Every live node has read them within milliseconds; 5 min covers a slow one.</summary>
    public TimeSpan PayloadRetention { get; set; } = TimeSpan.FromMinutes(5);

    /// <summary>First delay before reconnecting a dropped listening connection; doubles up to <see cref="ReconnectMaxDelay"/>.</summary>
    public TimeSpan ReconnectMinDelay { get; set; } = TimeSpan.FromMilliseconds(100);

    /// <summary>Longest delay between reconnect attempts. 5 s bounds how long a node stays deaf after the database returns.</summary>
    public TimeSpan ReconnectMaxDelay { get; set; } = TimeSpan.FromSeconds(5);

    /// <summary>An idle listening connection is probed (<c>SELECT 1</c>) this often, so a silently dead one is noticed.</summary>
    public TimeSpan ListenProbeInterval { get; set; } = TimeSpan.FromSeconds(15);

    /// <summary>Attempts to send one batch before its messages are dropped (subscribers then recover from the store).</summary>
    public int SendAttempts { get; set; } = 3;
}
