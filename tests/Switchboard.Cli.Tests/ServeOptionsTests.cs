using System.Net;
using System.Net.Security;
using System.Security.Cryptography;
using System.Security.Cryptography.X509Certificates;
using System.Text.RegularExpressions;

namespace Switchboard.Cli.Tests;

/// <summary><c>switchboard serve</c> options: environment-variable equivalents, and https:// with a PEM certificate.</summary>
public sealed partial class ServeOptionsTests : CliWorkingDirectory
{
    [GeneratedRegex(@"Listening\s+(https://\S+)")]
    private static partial Regex HttpsLine();

    [Fact]
    public async Task Environment_variables_set_the_address_the_data_dir_and_the_tunnel_domain()
    {
        var dataDir = Path.Combine(WorkDir, "from-env");
        var env = new Dictionary<string, string>
        {
            ["SWITCHBOARD_URLS"] = "http://127.0.0.1:0",
            ["SWITCHBOARD_DATA_DIR"] = dataDir,
            ["SWITCHBOARD_TUNNEL_DOMAIN"] = "tunnels.example",
        };
        await using var serve = CliProcess.Start(WorkDir, env, "serve");
        var url = await serve.WaitForListeningUrlAsync();
        Assert.StartsWith("http://127.0.0.1:", url);
        Assert.DoesNotContain(":8080", url);
        Assert.True(File.Exists(Path.Combine(dataDir, "switchboard.db")));
        Assert.True(File.Exists(Path.Combine(dataDir, "api-key")));
        Assert.False(Directory.Exists(Path.Combine(WorkDir, "data"))); // the default ./data was not used

        // The tunnel domain from the environment: a request for NAME.tunnels.example is routed as a tunnel (404 page
        // naming the tunnel), one for another host is not.
        using var http = new HttpClient();
        using var tunnel = new HttpRequestMessage(HttpMethod.Get, url + "/");
        tunnel.Headers.Host = "nobody.tunnels.example";
        using var response = await http.SendAsync(tunnel);
        Assert.Equal(HttpStatusCode.NotFound, response.StatusCode);
        Assert.Contains("nobody", await response.Content.ReadAsStringAsync());
        Assert.Equal(0, await serve.StopAsync());
    }

    [Fact]
    public async Task Https_address_with_a_pem_certificate_serves_http2_and_mismatches_are_refused()
    {
        using var key = ECDsa.Create(ECCurve.NamedCurves.nistP256);
        var request = new CertificateRequest("CN=localhost", key, HashAlgorithmName.SHA256);
        var san = new SubjectAlternativeNameBuilder();
        san.AddIpAddress(IPAddress.Loopback);
        request.CertificateExtensions.Add(san.Build());
        using var certificate = request.CreateSelfSigned(DateTimeOffset.UtcNow.AddMinutes(-5), DateTimeOffset.UtcNow.AddHours(1));
        var certFile = Path.Combine(WorkDir, "cert.pem");
        var keyFile = Path.Combine(WorkDir, "key.pem");
        await File.WriteAllTextAsync(certFile, certificate.ExportCertificatePem());
        await File.WriteAllTextAsync(keyFile, key.ExportPkcs8PrivateKeyPem());

        await using (var serve = CliProcess.Start(WorkDir, null, "serve", "--urls", "https://127.0.0.1:0", "--tls-cert", certFile, "--tls-key", keyFile))
        {
            var url = HttpsLine().Match(await serve.WaitForOutputAsync("Mint a token", TimeSpan.FromSeconds(30))).Groups[1].Value;
            Assert.StartsWith("https://127.0.0.1:", url);
            Assert.Contains("wss://127.0.0.1:", serve.Stdout);
            using var http = new HttpClient(new SocketsHttpHandler
            {
                SslOptions = new SslClientAuthenticationOptions
                {
                    RemoteCertificateValidationCallback = (_, cert, _, _) => cert is not null && cert.GetCertHashString() == certificate.GetCertHashString(),
                },
            });
            using var healthz = new HttpRequestMessage(HttpMethod.Get, url + "/healthz") { Version = HttpVersion.Version20, VersionPolicy = HttpVersionPolicy.RequestVersionExact };
            using var response = await http.SendAsync(healthz);
            Assert.Equal(HttpStatusCode.OK, response.StatusCode);
            Assert.Equal(HttpVersion.Version20, response.Version);
            Assert.Equal(0, await serve.StopAsync());
        }

        var noCert = await CliProcess.RunAsync(WorkDir, null, "serve", "--urls", "https://127.0.0.1:0");
        Assert.Equal(2, noCert.ExitCode);
        Assert.Contains("an https:// address in --urls needs --tls-cert", noCert.Stderr);
        var noHttps = await CliProcess.RunAsync(WorkDir, null, "serve", "--urls", "http://127.0.0.1:0", "--tls-cert", certFile, "--tls-key", keyFile);
        Assert.Equal(2, noHttps.ExitCode);
        Assert.Contains("no --urls address is https://", noHttps.Stderr);
        var noKey = await CliProcess.RunAsync(WorkDir, null, "serve", "--urls", "https://127.0.0.1:0", "--tls-cert", certFile);
        Assert.Equal(2, noKey.ExitCode);
        Assert.Contains("cannot load the TLS certificate", noKey.Stderr);
    }
}
