using System.Text;
using Switchboard.Server.Connections;

namespace Switchboard.Server.Tests.Connections;

/// <summary>The strict request-head parser of the direct upgrade path: what it matches, and that anything unusual goes to Kestrel.</summary>
public sealed class UpgradeHeadTests
{
    private const string Key = "dGhlIHNhbXBsZSBub25jZQ==";
    private static readonly string[] Paths = ["/api/v1/ws", "/v1/websocket"];

    private static string Head(string requestLine = "GET /api/v1/ws?token=abc HTTP/1.1", string extra = "") =>
        $"{requestLine}\r\nHost: gw.example:8080\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {Key}\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n";

    private static UpgradeHeadStatus Parse(string text, out UpgradeHead? head, out int length) =>
        UpgradeHead.Parse(Encoding.Latin1.GetBytes(text), Paths, out head, out length);

    [Fact]
    public void A_well_formed_upgrade_is_matched_with_its_fields()
    {
        var text = Head(extra: "Origin: https://app.example\r\nAuthorization: Bearer t\r\nCookie: a=1\r\nCookie: b=2\r\n");
        Assert.Equal(UpgradeHeadStatus.Matched, Parse(text + "\x81\x80", out var head, out var length));
        Assert.Equal(text.Length, length); // the frame bytes after the head are not part of it
        Assert.Equal("/api/v1/ws", head!.Path);
        Assert.Equal("?token=abc", head.Query);
        Assert.Equal("gw.example:8080", head.Host);
        Assert.Equal("https://app.example", head.Origin);
        Assert.Equal("Bearer t", head.Authorization);
        Assert.Equal("a=1; b=2", string.Join("; ", head.Cookie.ToArray()));
        Assert.Equal(2, head.Cookie.Count);
        Assert.Equal("s3pPLMBiTxaQ9kYGzzhZRbK+xOo=", UpgradeHead.AcceptValue(head.Key)); // the example of RFC 6455
    }

    [Theory]
    [InlineData("Host: [::1]:8080")]
    [InlineData("Host: 127.0.0.1")]
    [InlineData("Host: ")]
    public void Host_literals_and_ports_are_matched(string host) =>
        Assert.Equal(UpgradeHeadStatus.Matched, Parse(Head().Replace("Host: gw.example:8080", host, StringComparison.Ordinal), out _, out _));

    [Theory]
    [InlineData("GET /api/v1/ws HTTP/1.1\nHost: x\n")]
    [InlineData("GET /api/v1/ws HTTP/1.1\r\nHost: x\rY: z\r\n")]
    public void Bare_line_feeds_or_carriage_returns_are_left_to_kestrel_without_waiting(string text) =>
        Assert.Equal(UpgradeHeadStatus.NotMatched, Parse(text, out _, out _));

    [Theory]
    [InlineData("")]
    [InlineData("GE")]
    [InlineData("GET /api/v1")]
    [InlineData("GET /api/v1/ws?token=abc HTTP/1.1\r\nHost: x\r\n")]
    public void A_prefix_of_a_matching_head_asks_for_more(string text) =>
        Assert.Equal(UpgradeHeadStatus.Incomplete, Parse(text, out _, out _));

    [Theory]
    [InlineData("POST /api/v1/ws HTTP/1.1")]
    [InlineData("GET /api/v1/wsx HTTP/1.1")]
    [InlineData("GET /api/v1/WS HTTP/1.1")]
    [InlineData("GET /api/v1/%77s HTTP/1.1")]
    [InlineData("GET /healthz HTTP/1.1")]
    [InlineData("GET /api/v1/ws HTTP/1.0")]
    [InlineData("PRI * HTTP/2.0")]
    public void Other_request_lines_are_left_to_kestrel(string requestLine) =>
        Assert.Equal(UpgradeHeadStatus.NotMatched, Parse(Head(requestLine), out _, out _));

    [Theory]
    [InlineData("Host: second\r\n")]
    [InlineData("Content-Length: 5\r\n")]
    [InlineData("Transfer-Encoding: chunked\r\n")]
    [InlineData(" folded: continuation\r\n")]
    [InlineData("Bad Name: x\r\n")]
    [InlineData("X-Control: a\u0001b\r\n")]
    [InlineData("X-Latin: caf\u00e9\r\n")]
    [InlineData("Sec-WebSocket-Key: AAAAAAAAAAAAAAAAAAAAAA==\r\n")]
    public void Unusual_headers_are_left_to_kestrel(string extra) =>
        Assert.Equal(UpgradeHeadStatus.NotMatched, Parse(Head(extra: extra), out _, out _));

    [Theory]
    [InlineData("Upgrade: websocket", "Upgrade: h2c")]
    [InlineData("Connection: Upgrade", "Connection: keep-alive")]
    [InlineData("Sec-WebSocket-Version: 13", "Sec-WebSocket-Version: 8")]
    [InlineData("Sec-WebSocket-Key: " + Key, "Sec-WebSocket-Key: c2hvcnQ=")]
    [InlineData("Host: gw.example:8080\r\n", "")]
    [InlineData("Host: gw.example:8080", "Host: gw.example/evil")]
    [InlineData("Host: gw.example:8080", "Host: gw example")]
    [InlineData("Host: gw.example:8080", "Host: gw.example:80a")]
    [InlineData("Host: gw.example:8080", "Host: [::1")]
    [InlineData("Host: gw.example:8080", "Host: a:b:c")]
    public void A_head_that_is_not_a_valid_upgrade_is_left_to_kestrel(string replace, string with) =>
        Assert.Equal(UpgradeHeadStatus.NotMatched, Parse(Head().Replace(replace, with, StringComparison.Ordinal), out _, out _));

    [Fact]
    public void Header_names_and_tokens_are_case_insensitive()
    {
        var text = "GET /v1/websocket HTTP/1.1\r\nhost: h\r\nUPGRADE: WebSocket\r\nconnection: keep-alive, upgrade\r\nsec-websocket-key: " + Key +
                   "\r\nSEC-WEBSOCKET-VERSION: 13\r\nContent-Length: 0\r\n\r\n";
        Assert.Equal(UpgradeHeadStatus.Matched, Parse(text, out var head, out _));
        Assert.Equal("", head!.Query);
    }

    [Fact]
    public void A_head_longer_than_the_limit_is_left_to_kestrel()
    {
        var text = Head(extra: "X-Big: " + new string('a', UpgradeHead.MaxLength) + "\r\n");
        var bytes = new System.Buffers.ReadOnlySequence<byte>(Encoding.ASCII.GetBytes(text));
        Assert.Equal(UpgradeHeadStatus.NotMatched, UpgradeHead.TryParse(bytes, Paths, out _, out _));
    }
}
