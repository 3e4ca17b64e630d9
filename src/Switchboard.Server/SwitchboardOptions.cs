using System.ComponentModel.DataAnnotations;
using Microsoft.Extensions.Options;

namespace Switchboard.Server;

/// <summary>
/// Every tunable of the gateway. Each default says why it is what it is; <see cref="SwitchboardOptionsValidator"/>
/// rejects nonsense once, at start-up. Bound from configuration section <c>Switchboard</c>.
/// </summary>
public sealed class SwitchboardOptions
{
    public const string Section = "Switchboard";

    /// <summary>A stable id for this node (used by the bus to skip its own messages). Default: random per process.</summary>
    public string NodeId { get; set; } = Convert.ToHexStringLower(System.Security.Cryptography.RandomNumberGenerator.GetBytes(6));

    /// <summary>Domain under which tunnels get subdomains (<c>NAME.TunnelDomain</c>). Default <c>localhost</c>, which browsers resolve without DNS.</summary>
    public string TunnelDomain { get; set; } = "localhost";

    public AuthOptions Auth { get; set; } = new();
    [ValidateObjectMembers]
    public LimitsOptions Limits { get; set; } = new();
    public HeartbeatOptions Heartbeat { get; set; } = new();
    [ValidateObjectMembers]
    public ChannelOptions Channels { get; set; } = new();
    [ValidateObjectMembers]
    public RoomOptions Rooms { get; set; } = new();

    /// <summary>
    /// Origins allowed to open WebSockets and SSE streams from a browser. Empty (the default) allows only the
    /// gateway's own origin (Origin host equals Host). <c>*</c> allows every origin. Requests without an
    /// <c>Origin</c> header (non-browser clients) are not affected.
    /// </summary>
    public List<string> AllowedOrigins { get; set; } = [];

    /// <summary>
    /// Accept WebSocket upgrades to <c>/api/v1/ws</c> and <c>/v1/websocket</c> on the connection itself, without
    /// Kestrel's HTTP request objects, which an idle WebSocket otherwise keeps for its whole life (about 40 % less
    /// memory per idle connection; see docs/benchmarks.md). TLS connections, other requests, and upgrades that get an
    /// HTTP error take the normal pipeline either way. Default true; false sends every upgrade through the pipeline.
    /// </summary>
    public bool DirectWebSocketUpgrade { get; set; } = true;

    /// <summary>
    /// On connections accepted directly (<see cref="DirectWebSocketUpgrade"/>), write the messages queued for a
    /// connection straight into the transport and flush once per batch (up to 64 KiB): a burst of broadcasts to one
    /// subscriber leaves in one send system call instead of one per message. Default true.
    /// </summary>
    public bool BatchedWebSocketWrites { get; set; } = true;

    /// <summary>
    /// Size of the blocks Kestrel's socket transport receives into and sends from. One receive call fills at most one
    /// block, so this bounds how much a bulk stream (a tunnel agent's download, a large upload) moves per system call.
    /// Default 32 KiB (Kestrel's own pool: 4 KiB): with the tunnel data path the gateway spends about 30 % less CPU per
    /// GiB downloaded than with 16 KiB, fan-out no slower (docs/benchmarks.md). Idle connections hold no block either way; returned blocks are kept for reuse, up to
    /// 16 MiB per transport I/O queue (Kestrel creates one pool per queue), and released after a 10 s period unused.
    /// </summary>
    [Range(4 * 1024, MaxTransportBlockBytes)]
    public int TransportBlockBytes { get; set; } = 32 * 1024;

    internal const int MaxTransportBlockBytes = 1024 * 1024;
    internal const long TransportPoolRetainedBytes = 16L * 1024 * 1024;

    /// <summary>Serve <c>/metrics</c> without the API key (for scrapers on a private network). Default false: every endpoint is authorized.</summary>
    public bool PublicMetrics { get; set; }

    /// <summary>
    /// How long graceful shutdown waits for queued messages to flush and close handshakes to finish after
    /// every socket got 1001. 5 s drains any healthy client; a stuck one is aborted after it.
    /// </summary>
    public TimeSpan ShutdownDrainTimeout { get; set; } = TimeSpan.FromSeconds(5);
}

public sealed class AuthOptions
{
    /// <summary>HS256 key for JWTs, at least 32 bytes (UTF-8). Set via SWITCHBOARD_JWT_SECRET or generated in the data dir.</summary>
    public string JwtSecret { get; set; } = "";

    /// <summary>Server-to-server key for the HTTP APIs. Set via SWITCHBOARD_API_KEY or generated in the data dir.</summary>
    public string ApiKey { get; set; } = "";

    /// <summary>Required <c>aud</c> of every JWT, so tokens minted for another service are refused.</summary>
    public string Audience { get; set; } = "switchboard";

    /// <summary>Required <c>iss</c> of every JWT.</summary>
    public string Issuer { get; set; } = "switchboard";

    /// <summary>Clock skew tolerated on exp/nbf. 30 s covers normal NTP drift without extending tokens materially.</summary>
    public TimeSpan ClockSkew { get; set; } = TimeSpan.FromSeconds(30);

    /// <summary>Name of the cookie a browser may carry the token in.</summary>
    public string CookieName { get; set; } = "switchboard_token";

    /// <summary>Secret for <c>POST /api/v1/webhooks/github</c> (X-Hub-Signature-256). Empty disables the endpoint (404).</summary>
    public string GitHubWebhookSecret { get; set; } = "";

    /// <summary>Channel GitHub webhook events are published to. <c>{repo}</c> is replaced by the repository full name.</summary>
    public string GitHubWebhookChannel { get; set; } = "github:{repo}";
}

public sealed class LimitsOptions
{
    /// <summary>Largest inbound WebSocket message (bytes). 1 MB: far above any control message, small enough that 50 connections cannot pin much memory.</summary>
    [Range(1024, 64 * 1024 * 1024)]
    public int MaxMessageBytes { get; set; } = 1024 * 1024;

    /// <summary>Concurrent WebSocket connections per subject (JWT <c>sub</c>). 50 is many tabs and devices, not a botnet.</summary>
    [Range(1, 1_000_000)]
    public int MaxConnectionsPerUser { get; set; } = 50;

    /// <summary>New connections per client IP per second (token bucket refill); above it the upgrade gets HTTP 429.</summary>
    [Range(1, 1_000_000)]
    public int ConnectionsPerIpPerSecond { get; set; } = 50;

    /// <summary>Burst of new connections per client IP: a page that opens several sockets at once, or a reconnect storm after a deploy.</summary>
    [Range(1, 1_000_000)]
    public int ConnectionBurstPerIp { get; set; } = 200;

    /// <summary>
    /// Outbound frames queued per connection before it is closed as a slow consumer (4008). 4096 absorbs a
    /// burst of a few seconds at high rates while capping memory per connection.
    /// </summary>
    [Range(16, 1_000_000)]
    public int MaxQueuedMessages { get; set; } = 4096;

    /// <summary>Outbound bytes queued per connection before it is closed as a slow consumer (4008). 16 MB.</summary>
    [Range(64 * 1024, int.MaxValue)]
    public long MaxQueuedBytes { get; set; } = 16L * 1024 * 1024;

    /// <summary>Channel subscriptions per connection. 100 covers any page; more is a leak in the client.</summary>
    [Range(1, 100_000)]
    public int MaxSubscriptionsPerConnection { get; set; } = 100;

    /// <summary>Largest HTTP request body the APIs accept (publish, webhooks). Same as the WebSocket message limit.</summary>
    [Range(1024, 64 * 1024 * 1024)]
    public int MaxHttpBodyBytes { get; set; } = 1024 * 1024;
}

public sealed class HeartbeatOptions
{
    /// <summary>Server sends <c>{"type":"ping"}</c> this often. 30 s keeps NAT and proxy idle timers (often 60 s) open.</summary>
    public TimeSpan Interval { get; set; } = TimeSpan.FromSeconds(30);

    /// <summary>A connection that sent nothing (no pong, no message) for this long is closed with 4000 (stale, reconnect).</summary>
    public TimeSpan Timeout { get; set; } = TimeSpan.FromSeconds(60);
}

public sealed class ChannelOptions
{
    /// <summary>Messages kept per channel for recovery. 1000 covers minutes of a busy list; recovery beyond it says recovered:false.</summary>
    [Range(0, 10_000_000)]
    public int HistorySize { get; set; } = 1000;

    /// <summary>How long messages are kept for recovery. 24 h covers a laptop closed overnight.</summary>
    public TimeSpan HistoryTtl { get; set; } = TimeSpan.FromHours(24);

    /// <summary>Longest channel name. Names are also used as store keys.</summary>
    [Range(1, 1024)]
    public int MaxChannelNameLength { get; set; } = 200;
}

public sealed class RoomOptions
{
    /// <summary>Default maximum members per room when the creator does not say.</summary>
    [Range(1, 100_000)]
    public int DefaultMaxClients { get; set; } = 16;

    /// <summary>Upper bound any room may ask for.</summary>
    [Range(1, 1_000_000)]
    public int MaxClientsLimit { get; set; } = 1000;

    /// <summary>Rooms that may exist at once on this gateway.</summary>
    [Range(1, 10_000_000)]
    public int MaxRooms { get; set; } = 10_000;

    /// <summary>How long a member that disconnected may <c>reconnect</c> with its client id and secret. 30 s covers a network switch or a page reload.</summary>
    public TimeSpan ReconnectGracePeriod { get; set; } = TimeSpan.FromSeconds(30);
}
