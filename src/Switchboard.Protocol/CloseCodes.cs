namespace Switchboard.Protocol;

/// <summary>
/// WebSocket close codes used by every Switchboard endpoint. Each code says whether a client should reconnect;
/// see docs/protocol.md for the table. Codes 4000-4099 mean "reconnect", 4400-4499 mean "do not retry as is".
/// </summary>
public static class CloseCodes
{
    /// <summary>Normal closure requested by the peer. Do not reconnect.</summary>
    public const int Normal = 1000;

    /// <summary>The server is shutting down. Reconnect with backoff (another node or the restarted one).</summary>
    public const int GoingAway = 1001;

    /// <summary>A message could not be parsed or broke the protocol. Fix the client; do not resend the same message.</summary>
    public const int PolicyViolation = 1008;

    /// <summary>A message exceeded the size limit. Do not resend it.</summary>
    public const int MessageTooBig = 1009;

    /// <summary>An unexpected server error. Reconnect with backoff.</summary>
    public const int InternalError = 1011;

    /// <summary>No message or pong within the heartbeat timeout. Reconnect at once.</summary>
    public const int Stale = 4000;

    /// <summary>The client read too slowly and its outbound queue overflowed. Reconnect and recover with <c>since</c>.</summary>
    public const int SlowConsumer = 4008;

    /// <summary>The room, tunnel or environment went away (deleted, replaced). Do not reconnect to the same resource.</summary>
    public const int ResourceClosed = 4410;

    /// <summary>The client was removed by a room host. Do not reconnect automatically.</summary>
    public const int Kicked = 4411;

    /// <summary>Missing, malformed, badly signed, expired or not-yet-valid token. Get a new token before retrying.</summary>
    public const int Unauthorized = 4401;

    /// <summary>The token is valid but grants no access to the resource. Do not retry.</summary>
    public const int Forbidden = 4403;

    /// <summary>The room, channel, tunnel or environment does not exist. Do not retry.</summary>
    public const int NotFound = 4404;

    /// <summary>A limit was exceeded (connections per user or per resource, subscriptions). Retry after a delay.</summary>
    public const int TooManyRequests = 4429;

    /// <summary>
    /// Several nodes: the node that runs the environment is gone (expired from the node registry; its process ended
    /// with it) or cannot be reached. Do not retry as is: delete or recreate the environment, or wait for that node.
    /// </summary>
    public const int NodeUnavailable = 4503;

    /// <summary>True when a client should reconnect after this close code.</summary>
    public static bool ShouldReconnect(int code) => code switch
    {
        GoingAway or InternalError or Stale or SlowConsumer or TooManyRequests => true,
        1006 => true, // abnormal closure (no close frame): network failure
        _ => false,
    };

    /// <summary>True when a reconnect should wait with exponential backoff rather than retry at once.</summary>
    public static bool ShouldBackOff(int code) => code is GoingAway or InternalError or TooManyRequests or 1006;
}
