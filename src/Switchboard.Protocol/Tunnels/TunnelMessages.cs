namespace Switchboard.Protocol.Tunnels;

/// <summary>How the agent sets the <c>Host</c> header of forwarded requests.</summary>
public enum HostHeaderMode : byte
{
    /// <summary>Host becomes the local target (<c>127.0.0.1:3000</c>); what most dev servers expect.</summary>
    Rewrite = 0,

    /// <summary>Host stays the public one (<c>name.example.com</c>); for virtual-hosted local servers.</summary>
    Preserve = 1,
}

/// <summary>
/// First frame of an agent. <paramref name="Token"/> is an agent token (<c>sbat_…</c>) or a JWT with a <c>tunnels</c> grant.
/// <paramref name="BasicAuth"/> (<c>user:pass</c>) and <paramref name="AllowCidrs"/> are enforced by the gateway.
/// </summary>
public sealed record TunnelHello(
    int Version,
    string Token,
    string? Subdomain,
    bool Buffered,
    HostHeaderMode HostHeader,
    string? BasicAuth,
    IReadOnlyList<string> AllowCidrs,
    string LocalTarget)
{
    public byte[] Encode() => TunnelProtocol.Build(TunnelFrameType.Hello, 0, w =>
    {
        w.UInt16(Version);
        w.String(Token);
        w.String(Subdomain);
        w.Byte((byte)((Buffered ? 1 : 0) | ((byte)HostHeader << 1)));
        w.String(BasicAuth);
        w.VarUInt((uint)AllowCidrs.Count);
        foreach (var c in AllowCidrs)
            w.String(c);
        w.String(LocalTarget);
    });

    public static TunnelHello Decode(ReadOnlySpan<byte> payload)
    {
        var r = new TunnelReader(payload);
        var version = r.UInt16();
        if (version != TunnelProtocol.Version)
            return new TunnelHello(version, "", null, false, HostHeaderMode.Rewrite, null, [], "");
        var token = r.String();
        var sub = r.String();
        var flags = r.Byte();
        var basic = r.String();
        var n = r.VarUInt();
        if (n > 100)
            throw new FormatException("too many CIDRs");
        var cidrs = new List<string>();
        for (var i = 0; i < n; i++)
            cidrs.Add(r.String());
        var target = r.String();
        return new TunnelHello(version, token, sub.Length == 0 ? null : sub, (flags & 1) != 0, (HostHeaderMode)((flags >> 1) & 1),
            basic.Length == 0 ? null : basic, cidrs, target);
    }
}

/// <summary>
/// Gateway's answer to <see cref="TunnelHello"/>: the assigned name and the URLs that reach it. <paramref name="DataPath"/>
/// (empty: none) is where the agent may send a large response body as one plain HTTP request instead of WebSocket frames
/// (docs/tunnels.md, "Data path"), authorized by <paramref name="DataKey"/>, for bodies of at least
/// <paramref name="DataMinBytes"/> with a known length. The three fields are appended to the version-1 ack; an agent that
/// does not know them ignores them, and an ack without them (an older gateway) offers no data path.
/// </summary>
public sealed record TunnelHelloAck(int Version, string Name, string PublicUrl, string PathUrl, int StreamWindow, long MaxRequestBodyBytes,
    string DataPath = "", string DataKey = "", long DataMinBytes = 0)
{
    /// <summary>True when the gateway offers the data path.</summary>
    public bool OffersDataPath => DataPath.Length > 0 && DataKey.Length > 0 && DataMinBytes > 0;

    public byte[] Encode() => TunnelProtocol.Build(TunnelFrameType.HelloAck, 0, w =>
    {
        w.UInt16(Version);
        w.String(Name);
        w.String(PublicUrl);
        w.String(PathUrl);
        w.UInt32((uint)StreamWindow);
        w.Int64(MaxRequestBodyBytes);
        w.String(DataPath);
        w.String(DataKey);
        w.Int64(DataMinBytes);
    });

    public static TunnelHelloAck Decode(ReadOnlySpan<byte> payload)
    {
        var r = new TunnelReader(payload);
        var ack = new TunnelHelloAck(r.UInt16(), r.String(), r.String(), r.String(), (int)r.UInt32(), r.Int64());
        return r.IsEmpty ? ack : ack with { DataPath = r.String(), DataKey = r.String(), DataMinBytes = r.Int64() };
    }
}

/// <summary>
/// A forwarded request: method, origin-form target (path and query, prefix already stripped), the headers with
/// hop-by-hop ones removed and X-Forwarded-* added. <paramref name="WebSocket"/> asks the agent for a WebSocket upgrade.
/// </summary>
public sealed record TunnelRequestHead(string Method, string Target, IReadOnlyList<KeyValuePair<string, string>> Headers, bool HasBody, bool WebSocket)
{
    public byte[] Encode(uint stream) => TunnelProtocol.Build(TunnelFrameType.RequestHead, stream, w =>
    {
        w.Byte((byte)((HasBody ? 1 : 0) | (WebSocket ? 2 : 0)));
        w.String(Method);
        w.String(Target);
        w.Headers(Headers);
    });

    public static TunnelRequestHead Decode(ReadOnlySpan<byte> payload)
    {
        var r = new TunnelReader(payload);
        var flags = r.Byte();
        return new TunnelRequestHead(r.String(), r.String(), r.Headers(), (flags & 1) != 0, (flags & 2) != 0);
    }
}

/// <summary>A response head: status and headers (content headers included, repeated names kept).</summary>
public sealed record TunnelResponseHead(int Status, IReadOnlyList<KeyValuePair<string, string>> Headers)
{
    public byte[] Encode(uint stream) => TunnelProtocol.Build(TunnelFrameType.ResponseHead, stream, w =>
    {
        w.UInt16(Status);
        w.Headers(Headers);
    });

    public static TunnelResponseHead Decode(ReadOnlySpan<byte> payload)
    {
        var r = new TunnelReader(payload);
        return new TunnelResponseHead(r.UInt16(), r.Headers());
    }
}

/// <summary>
/// Headers that describe one hop and are never forwarded (RFC 9110 7.6.1): the fixed ones, every <c>Proxy-*</c> header,
/// and the ones a message's own <c>Connection</c> header names (<see cref="Listed"/>).
/// </summary>
public static class HopByHop
{
    private static readonly HashSet<string> Names = new(StringComparer.OrdinalIgnoreCase)
    {
        "Connection", "Keep-Alive", "TE", "Trailer", "Transfer-Encoding", "Upgrade",
    };

    public static bool IsHopByHop(string name) => Names.Contains(name) || name.StartsWith("Proxy-", StringComparison.OrdinalIgnoreCase);

    /// <summary>Hop-by-hop, or named by the message's <c>Connection</c> header (<paramref name="listed"/>, from <see cref="Listed"/>).</summary>
    public static bool IsHopByHop(string name, HashSet<string>? listed) => IsHopByHop(name) || listed?.Contains(name) == true;

    /// <summary>
    /// The header names a <c>Connection</c> header lists (comma-separated, every value of a repeated header), or null
    /// when it lists none: those headers are for this hop only and are removed with it.
    /// </summary>
    public static HashSet<string>? Listed(IEnumerable<string?>? connectionValues)
    {
        if (connectionValues is null)
            return null;
        HashSet<string>? names = null;
        foreach (var value in connectionValues)
        {
            if (string.IsNullOrEmpty(value))
                continue;
            foreach (var token in value.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries))
            {
                // "close" is an option, not a header name ("keep-alive" names the Keep-Alive header, hop-by-hop anyway).
                if (!token.Equals("close", StringComparison.OrdinalIgnoreCase))
                    (names ??= new HashSet<string>(StringComparer.OrdinalIgnoreCase)).Add(token);
            }
        }
        return names;
    }

    /// <summary>The header names the <c>Connection</c> header of a received message lists (<see cref="Listed(IEnumerable{string?}?)"/>).</summary>
    public static HashSet<string>? Listed(System.Net.Http.Headers.HttpHeadersNonValidated headers) =>
        headers.TryGetValues("Connection", out var connection) ? Listed(connection) : null;
}
