using System.Diagnostics;
using System.Globalization;
using System.Net;
using System.Net.Sockets;
using System.Security.Cryptography;
using System.Text;
using System.Text.RegularExpressions;
using Switchboard.Server.Tests.Infrastructure;
using Microsoft.AspNetCore.Http;
using Switchboard.Server.Tunnels;

namespace Switchboard.Server.Tests.Tunnels;

/// <summary>
/// Zero copy on the data path (docs/tunnels.md, "Zero copy"): the gateway writes the public response head itself and
/// the kernel moves the body's tail from the agent's socket to the client's. Real gateway, real agent, real sockets;
/// every body is checked byte for byte, because a wrong guess about when Kestrel's reader is parked would reorder bytes.
/// </summary>
public sealed partial class TunnelZeroCopyTests
{
    private const long MiB = 1024 * 1024;

    [Fact]
    public async Task Raw_client_gets_the_local_servers_head_the_exact_body_and_then_the_close()
    {
        await using var h = await TunnelHarness.StartAsync();
        const long size = 24 * MiB;
        using var tcp = new TcpClient();
        await tcp.ConnectAsync(IPAddress.Loopback, h.Gateway.BaseUri.Port);
        var net = tcp.GetStream();
        await net.WriteAsync(Encoding.ASCII.GetBytes($"GET /{h.Path($"/download?size={size}&cookies=true")} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"));

        var (head, rest) = await ReadHeadAsync(net);
        var lines = head.Split("\r\n");
        Assert.Equal("HTTP/1.1 200 OK", lines[0]);
        var headers = lines.Skip(1).Select(l => l.Split(": ", 2)).ToLookup(p => p[0], p => p[1], StringComparer.OrdinalIgnoreCase);
        Assert.Equal([size.ToString(CultureInfo.InvariantCulture)], headers["Content-Length"]);
        Assert.Equal(["a=1; Path=/", "b=2; Path=/; HttpOnly"], headers["Set-Cookie"]);
        Assert.Equal(["application/octet-stream"], headers["Content-Type"]);
        Assert.Equal(["close"], headers["Connection"]);
        Assert.Single(headers["Date"]);
        Assert.True(DateTimeOffset.TryParse(headers["Date"].Single(), CultureInfo.InvariantCulture, DateTimeStyles.AssumeUniversal, out var date));
        Assert.True(Math.Abs((DateTimeOffset.UtcNow - date).TotalMinutes) < 5);
        Assert.Empty(headers["Transfer-Encoding"]);

        using var sha = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
        sha.AppendData(rest);
        long total = rest.Length;
        var buffer = new byte[256 * 1024];
        using var timeout = new CancellationTokenSource(TimeSpan.FromSeconds(20));
        int n;
        while ((n = await net.ReadAsync(buffer, timeout.Token)) > 0)
        {
            sha.AppendData(buffer, 0, n);
            total += n;
        }
        // The gateway closed its side (read returned 0) after exactly the announced body, and did not reset the
        // connection: it waits for the client to close, so nothing received and not yet read can be erased.
        Assert.Equal(size, total);
        await Task.Delay(300);
        Assert.Equal(1, tcp.Client.Send([1]));
        await Task.Delay(100);
        Assert.Equal(1, tcp.Client.Send([2]));
        Assert.Equal(Convert.ToHexStringLower(SHA256.HashData(LocalApp.Pattern(size))), Convert.ToHexStringLower(sha.GetHashAndReset()));
        await TunnelDataPathTests.WaitForAsync(async () => await ZeroCopyMetricAsync(h.Gateway, "completed") == 1, "zero_copy result=\"completed\" 1");
    }

    [Fact]
    public async Task Concurrent_large_downloads_are_each_byte_exact_and_each_moved_by_the_kernel()
    {
        await using var h = await TunnelHarness.StartAsync();
        const int downloads = 8;
        var sizes = Enumerable.Range(0, downloads).Select(i => 3 * MiB + i * 1_234_567L).ToArray();
        // One client per download: each its own connection, so they all run at once.
        await Task.WhenAll(sizes.Select(async size =>
        {
            using var client = new HttpClient(new SocketsHttpHandler { UseProxy = false }) { BaseAddress = h.Gateway.BaseUri };
            using var response = await client.GetAsync(h.Path($"/download?size={size}"), HttpCompletionOption.ResponseHeadersRead);
            Assert.Equal(HttpStatusCode.OK, response.StatusCode);
            Assert.True(response.Headers.ConnectionClose);
            var body = await response.Content.ReadAsByteArrayAsync();
            Assert.Equal(size, body.Length);
            Assert.True(LocalApp.Pattern(size).AsSpan().SequenceEqual(body), $"the {size}-byte body differs");
        }));
        await TunnelDataPathTests.WaitForAsync(async () => await ZeroCopyMetricAsync(h.Gateway, "completed") == downloads, $"zero_copy result=\"completed\" {downloads}");
        Assert.Equal(downloads, h.Agent!.DataPathBodies);
        Assert.Equal(0, h.Agent.DataPathRefusals);
    }

    [Fact]
    public async Task Zero_copy_transfers_zero_copies_through_kestrel_and_keeps_the_connection_open()
    {
        await using var h = await TunnelHarness.StartAsync(t => t.ZeroCopyTransfers = 0);
        using var client = new HttpClient(new SocketsHttpHandler { UseProxy = false }) { BaseAddress = h.Gateway.BaseUri };
        for (var i = 0; i < 2; i++)
        {
            using var response = await client.GetAsync(h.Path($"/download?size={5 * MiB}"));
            Assert.Equal(HttpStatusCode.OK, response.StatusCode);
            Assert.NotEqual(true, response.Headers.ConnectionClose);
            Assert.Equal(LocalApp.Pattern(5 * MiB), await response.Content.ReadAsByteArrayAsync());
        }
        await TunnelDataPathTests.WaitForAsync(() => Task.FromResult(h.Agent!.DataPathBodies == 2), "the agent to count 2 bodies on the data path");
        var metrics = await h.Gateway.Api.GetStringAsync("metrics");
        Assert.Contains("switchboard_tunnels_data_path_total{result=\"delivered\"} 2", metrics, StringComparison.Ordinal);
        Assert.DoesNotContain("switchboard_tunnels_zero_copy_total", metrics, StringComparison.Ordinal);
    }

    [Fact]
    public async Task With_every_transfer_slot_taken_a_body_is_copied_through_kestrel_instead()
    {
        await using var h = await TunnelHarness.StartAsync(t => t.ZeroCopyTransfers = 1);
        const long size = 64 * MiB;
        // The first download takes the only slot and holds it: its client reads a little and then waits.
        using var slow = new HttpClient(new SocketsHttpHandler { UseProxy = false }) { BaseAddress = h.Gateway.BaseUri };
        using var held = await slow.GetAsync(h.Path($"/download?size={size}"), HttpCompletionOption.ResponseHeadersRead);
        Assert.True(held.Headers.ConnectionClose); // zero copy
        var heldBody = await held.Content.ReadAsStreamAsync();
        var buffer = new byte[64 * 1024];
        var head = new MemoryStream();
        while (head.Length < 2 * MiB)
            head.Write(buffer, 0, await heldBody.ReadAsync(buffer));

        using (var other = await h.Client.GetAsync(h.Path($"/download?size={5 * MiB}")))
        {
            Assert.NotEqual(true, other.Headers.ConnectionClose); // copied through Kestrel
            Assert.Equal(LocalApp.Pattern(5 * MiB), await other.Content.ReadAsByteArrayAsync());
        }

        // The held download still completes exactly once its client reads on.
        var pattern = LocalApp.Pattern(size);
        var rest = new MemoryStream();
        int n;
        while ((n = await heldBody.ReadAsync(buffer)) > 0)
            rest.Write(buffer, 0, n);
        Assert.Equal(size, head.Length + rest.Length);
        Assert.True(pattern.AsSpan(0, (int)head.Length).SequenceEqual(head.ToArray()), "the head of the held download differs");
        Assert.True(pattern.AsSpan((int)head.Length).SequenceEqual(rest.ToArray()), "the tail of the held download differs");
        await TunnelDataPathTests.WaitForAsync(async () => await ZeroCopyMetricAsync(h.Gateway, "completed") == 1, "zero_copy result=\"completed\" 1");
    }

    [Fact]
    public async Task Client_leaving_mid_splice_cuts_the_agents_upload_and_the_tunnel_carries_on()
    {
        await using var h = await TunnelHarness.StartAsync();
        var agent = h.Agent!;
        var disconnects = 0;
        agent.Disconnected += (_, _) => Interlocked.Increment(ref disconnects);
        using (var client = new HttpClient(new SocketsHttpHandler { UseProxy = false }) { BaseAddress = h.Gateway.BaseUri })
        {
            using var response = await client.GetAsync(h.Path($"/download?size={400 * MiB}"), HttpCompletionOption.ResponseHeadersRead);
            Assert.True(response.Headers.ConnectionClose);
            var body = await response.Content.ReadAsStreamAsync();
            var buffer = new byte[64 * 1024];
            for (long read = 0; read < 8 * MiB;) // well past the parked pipe (1 MiB): the kernel is moving the body
                read += await body.ReadAsync(buffer);
        }
        var clock = Stopwatch.StartNew();
        await TunnelDataPathTests.WaitForAsync(async () => await ZeroCopyMetricAsync(h.Gateway, "client_failed") + await ZeroCopyMetricAsync(h.Gateway, "cancelled") == 1,
            "zero_copy result=\"client_failed\" or \"cancelled\" 1");
        await TunnelDataPathTests.WaitForAsync(async () => (await h.Gateway.Api.GetStringAsync("metrics")).Contains("switchboard_tunnels_data_path_total{result=\"cut\"} 1", StringComparison.Ordinal),
            "data_path result=\"cut\" 1");
        Assert.True(clock.Elapsed < TimeSpan.FromSeconds(5), $"the cut took {clock.Elapsed}");

        // Same agent connection, next download exact.
        using (var again = await h.Client.GetAsync(h.Path($"/download?size={3 * MiB}")))
            Assert.Equal(LocalApp.Pattern(3 * MiB), await again.Content.ReadAsByteArrayAsync());
        Assert.Equal(0, Volatile.Read(ref disconnects));
        Assert.Same(h.Ack, agent.Current);
    }

    [Fact]
    public async Task Slow_agent_body_reaches_the_client_as_it_comes_and_completes()
    {
        await using var h = await TunnelHarness.StartAsync();
        const long size = 2 * MiB;
        const int chunk = 16 * 1024, gated = 16;
        // The local server writes each of the first chunks only after the previous one reached the public client, then
        // the rest at once. A gateway that waits for 1 MiB to pile up before sending (or an agent that holds bytes back
        // for more) never lets the first chunk through: the wait below times out. Cause and effect, not timing, so a
        // loaded machine cannot fail it. The fast rest then parks the gateway's reader and goes by splice.
        using var client = new HttpClient(new SocketsHttpHandler { UseProxy = false }) { BaseAddress = h.Gateway.BaseUri };
        using var response = await client.GetAsync(h.Path($"/gated?size={size}&chunk={chunk}&gated={gated}"), HttpCompletionOption.ResponseHeadersRead);
        Assert.Equal(HttpStatusCode.OK, response.StatusCode);
        Assert.True(response.Headers.ConnectionClose); // zero copy
        var body = await response.Content.ReadAsStreamAsync();
        var received = new MemoryStream();
        var buffer = new byte[64 * 1024];
        for (var i = 0; i < gated; i++)
        {
            while (received.Length < (i + 1) * chunk)
            {
                using var wait = new CancellationTokenSource(TimeSpan.FromSeconds(15));
                int n;
                try
                {
                    n = await body.ReadAsync(buffer.AsMemory(0, (int)((i + 1) * chunk - received.Length)), wait.Token);
                }
                catch (OperationCanceledException)
                {
                    throw new Xunit.Sdk.XunitException($"chunk {i} (bytes {received.Length}-{(i + 1) * chunk}) did not reach the client within 15 s, while the local server waited for it to");
                }
                Assert.NotEqual(0, n);
                received.Write(buffer, 0, n);
            }
            h.Local.ChunkGate.Release();
        }
        await body.CopyToAsync(received);
        Assert.Equal(LocalApp.Pattern(size), received.ToArray());
        await TunnelDataPathTests.WaitForAsync(async () => await ZeroCopyMetricAsync(h.Gateway, "completed") == 1, "zero_copy result=\"completed\" 1");
        Assert.True(h.Agent!.SplicedBytes > size / 2, $"the agent spliced {h.Agent.SplicedBytes} bytes"); // zero copy at the agent too
    }

    [Fact]
    public void Response_head_is_http_1_1_with_every_header_and_connection_close()
    {
        var context = new DefaultHttpContext();
        var response = context.Response;
        response.StatusCode = 206;
        response.Headers.Append("Set-Cookie", "a=1");
        response.Headers.Append("Set-Cookie", "b=2");
        response.Headers.Append("Connection", "keep-alive"); // replaced, never doubled
        response.ContentLength = 10;
        var head = Encoding.Latin1.GetString(TunnelZeroCopy.ResponseHead(response, new DateTimeOffset(2026, 11, 30, 8, 0, 0, TimeSpan.Zero)));
        Assert.StartsWith("HTTP/1.1 206 Partial Content\r\n", head, StringComparison.Ordinal);
        Assert.EndsWith("\r\nConnection: close\r\n\r\n", head, StringComparison.Ordinal);
        Assert.Contains("\r\nSet-Cookie: a=1\r\nSet-Cookie: b=2\r\n", head, StringComparison.Ordinal);
        Assert.Contains("\r\nContent-Length: 10\r\n", head, StringComparison.Ordinal);
        Assert.Contains("\r\nDate: Mon, 30 Nov 2026 08:00:00 GMT\r\n", head, StringComparison.Ordinal);
        Assert.Single(ConnectionHeader().Matches(head));
    }

    [GeneratedRegex("(?im)^Connection:")]
    private static partial Regex ConnectionHeader();

    private static async Task<(string Head, byte[] Body)> ReadHeadAsync(NetworkStream net)
    {
        var buffer = new byte[64 * 1024];
        var filled = 0;
        using var timeout = new CancellationTokenSource(TimeSpan.FromSeconds(10));
        while (true)
        {
            var n = await net.ReadAsync(buffer.AsMemory(filled), timeout.Token);
            Assert.True(n > 0, "the connection closed before the response head");
            filled += n;
            var end = buffer.AsSpan(0, filled).IndexOf("\r\n\r\n"u8);
            if (end >= 0)
                return (Encoding.Latin1.GetString(buffer, 0, end), buffer[(end + 4)..filled]);
        }
    }

    private static Task<long> ZeroCopyMetricAsync(TestGateway gateway, string result) =>
        TunnelDataPathTests.ResultCountAsync(gateway, "switchboard_tunnels_zero_copy_total", result);
}
