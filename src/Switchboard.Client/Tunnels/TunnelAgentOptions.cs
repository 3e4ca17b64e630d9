using Switchboard.Protocol.Tunnels;

namespace Switchboard.Client.Tunnels;

/// <summary>What a tunnel agent connects to and how it forwards.</summary>
public sealed class TunnelAgentOptions
{
    /// <summary>Gateway base URL (<c>http://gateway:8080</c>); the agent connects to <c>/tunnel/connect</c> on it.</summary>
    public required Uri Server { get; set; }

    /// <summary>The local server requests are forwarded to (<c>http://127.0.0.1:3000</c>).</summary>
    public required Uri LocalTarget { get; set; }

    /// <summary>Agent token (<c>sbat_…</c>) or JWT with a <c>tunnels</c> grant.</summary>
    public string Token { get; set; } = "";

    /// <summary>Requested name; null for a random one (kept across reconnects once assigned).</summary>
    public string? Subdomain { get; set; }

    public HostHeaderMode HostHeader { get; set; } = HostHeaderMode.Rewrite;

    /// <summary><c>user:pass</c> the gateway demands from public clients.</summary>
    public string? BasicAuth { get; set; }

    /// <summary>Client address ranges the gateway admits (empty: everyone).</summary>
    public List<string> AllowCidrs { get; set; } = [];

    /// <summary>Collect whole responses at the gateway and send them with Content-Length (default: stream).</summary>
    public bool Buffered { get; set; }

    /// <summary>
    /// On Linux, send large response bodies with <c>splice(2)</c>: the body's bytes go from the local server's socket to
    /// the gateway's without a copy through the agent (docs/tunnels.md, "Zero copy"). Applies when both the local target
    /// and the gateway are plain <c>http</c>; otherwise, or when false, bodies are copied.
    /// </summary>
    public bool ZeroCopy { get; set; } = true;

    /// <summary>The agent pings this often; 15 s keeps NAT mappings alive and detects a dead gateway quickly.</summary>
    public TimeSpan PingInterval { get; set; } = TimeSpan.FromSeconds(15);

    /// <summary>Nothing received for this long means the connection is dead: reconnect.</summary>
    public TimeSpan IdleTimeout { get; set; } = TimeSpan.FromSeconds(45);

    /// <summary>First reconnect delay; doubles (with jitter) up to <see cref="MaxBackoff"/>.</summary>
    public TimeSpan MinBackoff { get; set; } = TimeSpan.FromMilliseconds(250);

    public TimeSpan MaxBackoff { get; set; } = TimeSpan.FromSeconds(30);
}

/// <summary>One forwarded request, reported when it completes (the CLI prints a line per request).</summary>
public sealed record TunnelRequestCompleted(string Method, string Path, int Status, TimeSpan Duration, long RequestBytes, long ResponseBytes, string? Error);

/// <summary>The gateway refused the agent (bad token, name taken, protocol). Retrying as is cannot succeed.</summary>
public sealed class TunnelRefusedException(int code, string message) : Exception(message)
{
    public int Code { get; } = code;
}
