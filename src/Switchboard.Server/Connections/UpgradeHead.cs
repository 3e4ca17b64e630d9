using System.Buffers;
using System.Text;

namespace Switchboard.Server.Connections;

/// <summary>Outcome of reading the start of a connection as a WebSocket upgrade.</summary>
internal enum UpgradeHeadStatus
{
    /// <summary>Could still become a matching upgrade: read more.</summary>
    Incomplete,

    /// <summary>Anything else (another path or method, TLS, HTTP/2, an unusual or malformed head): the HTTP pipeline handles it.</summary>
    NotMatched,

    /// <summary>A complete, well-formed WebSocket upgrade (version 13) to one of the given paths.</summary>
    Matched,
}

/// <summary>
/// The request head of a WebSocket upgrade, parsed strictly: a <c>GET</c> request line with <c>HTTP/1.1</c>, printable
/// ASCII header lines, one Host, no body, <c>Upgrade: websocket</c>, <c>Connection: upgrade</c>, version 13 and a
/// 16-byte key. Whatever is unusual is <see cref="UpgradeHeadStatus.NotMatched"/>, so Kestrel's own parser decides
/// (and answers errors) exactly as for every other request.
/// </summary>
internal sealed class UpgradeHead
{
    /// <summary>Heads longer than this are left to Kestrel (its default header limit is 32 KB and answers 431).</summary>
    public const int MaxLength = 16 * 1024;

    private static ReadOnlySpan<byte> Get => "GET "u8;
    private static ReadOnlySpan<byte> Version => " HTTP/1.1"u8;
    private static ReadOnlySpan<byte> EndOfHead => "\r\n\r\n"u8;

    public required string Path { get; init; }
    public required string Query { get; init; }
    public required string Host { get; init; }
    public string? Origin { get; init; }
    public string? Authorization { get; init; }
    /// <summary>Every <c>Cookie</c> header line, as the HTTP pipeline would see them.</summary>
    public Microsoft.Extensions.Primitives.StringValues Cookie { get; init; }
    public required string Key { get; init; }

    /// <summary>Parses the start of <paramref name="buffer"/>; on a match, <paramref name="end"/> is where the head ends (the WebSocket's first byte).</summary>
    public static UpgradeHeadStatus TryParse(in ReadOnlySequence<byte> buffer, IReadOnlyCollection<string> paths, out UpgradeHead? head, out SequencePosition end)
    {
        head = null;
        end = buffer.Start;
        var length = (int)Math.Min(buffer.Length, MaxLength);
        byte[]? rented = null;
        var span = buffer.FirstSpan.Length >= length ? buffer.FirstSpan[..length] : Copy(buffer, length, out rented);
        try
        {
            var status = Parse(span, paths, out head, out var headLength);
            if (status == UpgradeHeadStatus.Incomplete && buffer.Length >= MaxLength)
                status = UpgradeHeadStatus.NotMatched;
            if (status == UpgradeHeadStatus.Matched)
                end = buffer.GetPosition(headLength);
            return status;
        }
        finally
        {
            if (rented is not null)
                ArrayPool<byte>.Shared.Return(rented);
        }
    }

    private static ReadOnlySpan<byte> Copy(in ReadOnlySequence<byte> buffer, int length, out byte[] rented)
    {
        rented = ArrayPool<byte>.Shared.Rent(length);
        buffer.Slice(0, length).CopyTo(rented);
        return rented.AsSpan(0, length);
    }

    internal static UpgradeHeadStatus Parse(ReadOnlySpan<byte> data, IReadOnlyCollection<string> paths, out UpgradeHead? head, out int headLength)
    {
        head = null;
        headLength = 0;

        // Request line: decide as early as possible, so other requests pass on their first bytes.
        if (data.Length < Get.Length)
            return Get.StartsWith(data) ? UpgradeHeadStatus.Incomplete : UpgradeHeadStatus.NotMatched;
        if (!data.StartsWith(Get))
            return UpgradeHeadStatus.NotMatched;
        var target = data[Get.Length..];
        var pathEnd = target.IndexOfAny((byte)' ', (byte)'?', (byte)'\r');
        var pathBytes = pathEnd < 0 ? target : target[..pathEnd];
        if (!AnyPathStartsWith(paths, pathBytes, exact: pathEnd >= 0))
            return UpgradeHeadStatus.NotMatched;
        // Only CRLF line ends: a bare LF or CR is left to Kestrel, which decides by its own settings (and a head that
        // uses them would otherwise wait here for a CRLF CRLF that never comes).
        for (var i = data.IndexOfAny((byte)'\r', (byte)'\n'); i >= 0 && i < data.Length; i++)
        {
            var b = data[i];
            if ((b == '\n' && (i == 0 || data[i - 1] != '\r')) || (b == '\r' && i + 1 < data.Length && data[i + 1] != '\n'))
                return UpgradeHeadStatus.NotMatched;
        }
        var headEnd = data.IndexOf(EndOfHead);
        if (headEnd < 0)
            return UpgradeHeadStatus.Incomplete;
        headLength = headEnd + EndOfHead.Length;

        var lines = data[..(headEnd + 2)]; // every line with its CRLF
        var lineEnd = lines.IndexOf("\r\n"u8);
        var requestLine = lines[..lineEnd];
        if (!requestLine.EndsWith(Version))
            return UpgradeHeadStatus.NotMatched;
        var targetBytes = requestLine[Get.Length..^Version.Length];
        if (targetBytes.IndexOfAnyExceptInRange((byte)0x21, (byte)0x7e) >= 0)
            return UpgradeHeadStatus.NotMatched;
        var question = targetBytes.IndexOf((byte)'?');
        var path = Encoding.ASCII.GetString(question < 0 ? targetBytes : targetBytes[..question]);
        var query = question < 0 ? "" : Encoding.ASCII.GetString(targetBytes[question..]);

        string? host = null, origin = null, authorization = null, key = null, version = null, upgrade = null, connection = null;
        var cookie = Microsoft.Extensions.Primitives.StringValues.Empty;
        lines = lines[(lineEnd + 2)..];
        while (!lines.IsEmpty)
        {
            lineEnd = lines.IndexOf("\r\n"u8);
            var line = lines[..lineEnd];
            lines = lines[(lineEnd + 2)..];
            var colon = line.IndexOf((byte)':');
            if (colon <= 0 || !IsToken(line[..colon]))
                return UpgradeHeadStatus.NotMatched; // also obsolete line folding (a line starting with whitespace)
            var valueBytes = line[(colon + 1)..].Trim(" \t"u8);
            if (ContainsControl(valueBytes))
                return UpgradeHeadStatus.NotMatched;
            var name = line[..colon];
            var value = Encoding.ASCII.GetString(valueBytes);
            bool ok;
            if (Is(name, "host")) ok = Once(ref host, value);
            else if (Is(name, "origin")) ok = Once(ref origin, value);
            else if (Is(name, "authorization")) ok = Once(ref authorization, value);
            else if (Is(name, "sec-websocket-key")) ok = Once(ref key, value);
            else if (Is(name, "sec-websocket-version")) ok = Once(ref version, value);
            else if (Is(name, "cookie"))
            {
                cookie = Microsoft.Extensions.Primitives.StringValues.Concat(cookie, value);
                ok = true;
            }
            else if (Is(name, "upgrade")) ok = Join(ref upgrade, value, ",");
            else if (Is(name, "connection")) ok = Join(ref connection, value, ",");
            else if (Is(name, "content-length")) ok = value == "0";
            else ok = !Is(name, "transfer-encoding");
            if (!ok)
                return UpgradeHeadStatus.NotMatched;
        }
        if (host is null || !IsValidHost(host) || key is null || version != "13" || !HasToken(upgrade, "websocket") || !HasToken(connection, "upgrade") || !IsValidKey(key))
            return UpgradeHeadStatus.NotMatched;
        head = new UpgradeHead
        {
            Path = path,
            Query = query,
            Host = host,
            Origin = origin,
            Authorization = authorization,
            Cookie = cookie,
            Key = key,
        };
        return UpgradeHeadStatus.Matched;
    }

    /// <summary>The <c>Sec-WebSocket-Accept</c> value for a key (RFC 6455 section 4.2.2).</summary>
    public static string AcceptValue(string key)
    {
        Span<byte> hash = stackalloc byte[20];
        System.Security.Cryptography.SHA1.HashData(Encoding.ASCII.GetBytes(key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"), hash);
        return Convert.ToBase64String(hash);
    }

    private static bool AnyPathStartsWith(IReadOnlyCollection<string> paths, ReadOnlySpan<byte> bytes, bool exact)
    {
        foreach (var p in paths)
        {
            if (exact ? bytes.Length == p.Length && Ascii.Equals(bytes, p) : bytes.Length <= p.Length && Ascii.Equals(bytes, p.AsSpan(0, bytes.Length)))
                return true;
        }
        return false;
    }

    private static bool ContainsControl(ReadOnlySpan<byte> value)
    {
        foreach (var b in value)
        {
            if (b is (< 0x20 and not (byte)'\t') or >= 0x7f)
                return true;
        }
        return false;
    }

    private static bool IsToken(ReadOnlySpan<byte> name)
    {
        foreach (var b in name)
        {
            if (!(char.IsAsciiLetterOrDigit((char)b) || "!#$%&'*+-.^_`|~"u8.Contains(b)))
                return false;
        }
        return true;
    }

    private static bool Is(ReadOnlySpan<byte> name, string expected) => Ascii.EqualsIgnoreCase(name, expected);

    private static bool Once(ref string? field, string value)
    {
        if (field is not null)
            return false;
        field = value;
        return true;
    }

    private static bool Join(ref string? field, string value, string separator)
    {
        field = field is null ? value : field + separator + value;
        return true;
    }

    private static bool HasToken(string? list, string token)
    {
        if (list is null)
            return false;
        foreach (var part in list.Split(','))
        {
            if (part.Trim().Equals(token, StringComparison.OrdinalIgnoreCase))
                return true;
        }
        return false;
    }

    // host [":" port]: a reg-name or IPv4 address, or an IPv6 literal in brackets; the port all digits (the rules Kestrel
    // applies before it answers 400). An empty Host is allowed, as by Kestrel for an origin-form target.
    private static bool IsValidHost(string host)
    {
        var name = host.AsSpan();
        if (name.StartsWith("["))
        {
            var close = name.IndexOf(']');
            if (close < 0 || name[1..close].ContainsAnyExcept("0123456789abcdefABCDEF:.%"))
                return false;
            name = name[(close + 1)..];
            return name.IsEmpty || (name[0] == ':' && IsPort(name[1..]));
        }
        var colon = name.IndexOf(':');
        if (colon >= 0)
        {
            if (!IsPort(name[(colon + 1)..]))
                return false;
            name = name[..colon];
        }
        foreach (var c in name)
        {
            if (!(char.IsAsciiLetterOrDigit(c) || "-._~!$&'()*+,;=%".Contains(c)))
                return false;
        }
        return true;
    }

    private static bool IsPort(ReadOnlySpan<char> port) => port.Length is > 0 and <= 5 && !port.ContainsAnyExceptInRange('0', '9');

    private static bool IsValidKey(string key)
    {
        Span<byte> decoded = stackalloc byte[24];
        return Convert.TryFromBase64String(key, decoded, out var written) && written == 16;
    }
}
