using System.Net;
using System.Net.Security;
using System.Net.Sockets;
using System.Security.Cryptography;
using System.Security.Cryptography.X509Certificates;
using System.Text;
using Switchboard.Client.Tunnels;
using Switchboard.Server.Tests.Infrastructure;

namespace Switchboard.Server.Tests.Tunnels;

/// <summary>
/// The gateway serving https:// (ConfigureSwitchboardTls): HTTP/2 public clients get the local server's response
/// trailers through the tunnel (Kestrel sends trailers over HTTP/2 only), HTTP/1.1 clients the same response without.
/// </summary>
public sealed class TunnelTlsTests
{
    [Fact]
    public async Task Https_http2_client_gets_the_local_servers_trailers_through_the_tunnel()
    {
        using var certificate = SelfSigned();
        await using var gateway = await TestGateway.StartAsync(tls: certificate);
        await using var local = await ChunkedTrailerServer.StartAsync();
        await using var agent = new TunnelAgent(new TunnelAgentOptions
        {
            Server = gateway.BaseUri,
            LocalTarget = local.Uri,
            Token = gateway.Token("agent", tunnels: ["*"]),
            Subdomain = "trailers",
        });
        await agent.StartAsync(CancellationToken.None);

        using var client = new HttpClient(new SocketsHttpHandler
        {
            SslOptions = new SslClientAuthenticationOptions
            {
                // Trust exactly the test certificate.
                RemoteCertificateValidationCallback = (_, cert, _, _) => cert is not null && cert.GetCertHashString() == certificate.GetCertHashString(),
            },
        }) { BaseAddress = gateway.HttpsUri };

        using var h2 = new HttpRequestMessage(HttpMethod.Get, "t/trailers/data") { Version = HttpVersion.Version20, VersionPolicy = HttpVersionPolicy.RequestVersionExact };
        using var response = await client.SendAsync(h2);
        Assert.Equal(HttpVersion.Version20, response.Version);
        Assert.Equal(HttpStatusCode.OK, response.StatusCode);
        Assert.Equal("hello, trailers", await response.Content.ReadAsStringAsync());
        Assert.Equal(["abc123"], response.TrailingHeaders.GetValues("X-Checksum"));
        Assert.Equal(["2"], response.TrailingHeaders.GetValues("X-Chunks"));

        // HTTP/1.1 over the same TLS endpoint: same body and status, no trailers (Kestrel cannot send them there).
        using var h1 = new HttpRequestMessage(HttpMethod.Get, "t/trailers/data") { Version = HttpVersion.Version11, VersionPolicy = HttpVersionPolicy.RequestVersionExact };
        using var response1 = await client.SendAsync(h1);
        Assert.Equal(HttpVersion.Version11, response1.Version);
        Assert.Equal("hello, trailers", await response1.Content.ReadAsStringAsync());
        Assert.False(response1.TrailingHeaders.Contains("X-Checksum"));
    }

    private static X509Certificate2 SelfSigned()
    {
        using var key = ECDsa.Create(ECCurve.NamedCurves.nistP256);
        var request = new CertificateRequest("CN=localhost", key, HashAlgorithmName.SHA256);
        var san = new SubjectAlternativeNameBuilder();
        san.AddIpAddress(IPAddress.Loopback);
        san.AddDnsName("localhost");
        request.CertificateExtensions.Add(san.Build());
        using var created = request.CreateSelfSigned(DateTimeOffset.UtcNow.AddMinutes(-5), DateTimeOffset.UtcNow.AddHours(1));
        // Round-trip through PKCS#12 so that SslStream gets a key it can use for a server on every platform.
        return X509CertificateLoader.LoadPkcs12(created.Export(X509ContentType.Pkcs12), null);
    }

    /// <summary>
    /// A local HTTP/1.1 server that answers every request with a chunked body followed by trailer fields (written by
    /// hand: Kestrel itself sends no HTTP/1.1 trailers).
    /// </summary>
    private sealed class ChunkedTrailerServer : IAsyncDisposable
    {
        private readonly TcpListener _listener;
        private readonly CancellationTokenSource _stop = new();
        private readonly Task _accept;

        private ChunkedTrailerServer(TcpListener listener)
        {
            _listener = listener;
            _accept = AcceptAsync();
        }

        public Uri Uri => new($"http://127.0.0.1:{((IPEndPoint)_listener.LocalEndpoint).Port}");

        public static Task<ChunkedTrailerServer> StartAsync()
        {
            var listener = new TcpListener(IPAddress.Loopback, 0);
            listener.Start();
            return Task.FromResult(new ChunkedTrailerServer(listener));
        }

        private async Task AcceptAsync()
        {
            try
            {
                while (true)
                {
                    var client = await _listener.AcceptTcpClientAsync(_stop.Token);
                    _ = ServeAsync(client);
                }
            }
            catch (OperationCanceledException)
            {
            }
        }

        private async Task ServeAsync(TcpClient client)
        {
            using (client)
            {
                try
                {
                    var stream = client.GetStream();
                    var buffer = new byte[8192];
                    var head = new StringBuilder();
                    while (true)
                    {
                        // One request per pass: read to the blank line (GET requests carry no body), answer, repeat.
                        while (!head.ToString().Contains("\r\n\r\n", StringComparison.Ordinal))
                        {
                            var n = await stream.ReadAsync(buffer, _stop.Token);
                            if (n == 0)
                                return;
                            head.Append(Encoding.ASCII.GetString(buffer, 0, n));
                        }
                        var text = head.ToString();
                        head.Clear().Append(text[(text.IndexOf("\r\n\r\n", StringComparison.Ordinal) + 4)..]);
                        var response = "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\nTrailer: X-Checksum, X-Chunks\r\n\r\n"
                            + "7\r\nhello, \r\n8\r\ntrailers\r\n0\r\nX-Checksum: abc123\r\nX-Chunks: 2\r\n\r\n";
                        await stream.WriteAsync(Encoding.ASCII.GetBytes(response), _stop.Token);
                    }
                }
                catch (Exception ex) when (ex is IOException or OperationCanceledException or SocketException)
                {
                }
            }
        }

        public async ValueTask DisposeAsync()
        {
            await _stop.CancelAsync();
            _listener.Stop();
            await _accept;
            _stop.Dispose();
        }
    }
}
