using System.ComponentModel.DataAnnotations;

namespace Switchboard.Server.Tunnels;

/// <summary>Tunnel limits, bound from configuration section <c>Switchboard:Tunnels</c>. Each default says why.</summary>
public sealed class TunnelOptions
{
    public const string Section = "Switchboard:Tunnels";

    /// <summary>Largest request body forwarded (413 beyond). 1 GB allows big uploads; bodies stream, so memory does not grow with it.</summary>
    [Range(0, long.MaxValue)]
    public long MaxRequestBodyBytes { get; set; } = 1024L * 1024 * 1024;

    /// <summary>How long the gateway waits for the response head after sending the request (504 beyond). 30 s matches common proxies.</summary>
    public TimeSpan FirstByteTimeout { get; set; } = TimeSpan.FromSeconds(30);

    /// <summary>Requests in flight per tunnel (503 with Retry-After beyond). 500 lets a busy page load while bounding buffers to 500 x window.</summary>
    [Range(1, 100_000)]
    public int MaxConcurrentStreams { get; set; } = 500;

    /// <summary>
    /// Per-stream flow-control window in both directions. 1 MiB keeps four 256 KiB frames in flight, so a bulk transfer
    /// never waits for a window update on loopback or a LAN; buffered data per stream never exceeds it.
    /// </summary>
    [Range(16 * 1024, 16 * 1024 * 1024)]
    public int StreamWindowBytes { get; set; } = Switchboard.Protocol.Tunnels.TunnelProtocol.DefaultStreamWindow;

    /// <summary>Gateway-to-agent bytes in flight on one connection. 4 MB stays well under the connection's 16 MB outbound queue limit.</summary>
    [Range(64 * 1024, 64 * 1024 * 1024)]
    public int ConnectionWindowBytes { get; set; } = 4 * 1024 * 1024;

    /// <summary>Largest response collected in buffered mode (then sent with Content-Length). 16 MB; larger responses get 502.</summary>
    [Range(1024, int.MaxValue)]
    public int MaxBufferedResponseBytes { get; set; } = 16 * 1024 * 1024;

    /// <summary>
    /// Response bodies of at least this many bytes with a known length go on the data path: the agent sends the body as
    /// one plain HTTP request to the gateway instead of WebSocket frames, which roughly halves the CPU a bulk download
    /// costs the gateway and the agent (docs/tunnels.md, "Data path"). 1 MiB: below that the extra request costs more
    /// than the framing it saves. 0 turns the data path off; agents then send every body over the WebSocket.
    /// </summary>
    [Range(0, long.MaxValue)]
    public long DataPathMinBytes { get; set; } = 1024 * 1024;

    /// <summary>
    /// Data-path bodies the kernel may move at once from the agent's connection to the public one (<c>splice(2)</c>,
    /// Linux, plain HTTP/1.1 on both sides), without the bytes entering the gateway's memory (docs/tunnels.md,
    /// "Zero copy"). Each running transfer holds a thread; further bodies are copied as usual. 64 covers many parallel
    /// large downloads for 64 threads at most. 0 turns zero copy off.
    /// </summary>
    [Range(0, 4096)]
    public int ZeroCopyTransfers { get; set; } = 64;

    /// <summary>Requests remembered per tunnel for inspection and replay (a ring buffer). 100, like ngrok's inspector.</summary>
    [Range(0, 100_000)]
    public int RecentRequests { get; set; } = 100;

    /// <summary>Request bodies up to this size are kept for replay. 64 KB covers webhooks, the main replay use.</summary>
    [Range(0, 16 * 1024 * 1024)]
    public int ReplayBodyBytes { get; set; } = 64 * 1024;
}
