using System.Collections.Concurrent;
using System.Diagnostics;
using System.Globalization;
using System.Net;
using System.Security.Cryptography;
using System.Text.Json;
using System.Text.RegularExpressions;
using Microsoft.Extensions.DependencyInjection;
using Switchboard.Protocol.Tunnels;
using Switchboard.Server.Tests.Cluster;
using Switchboard.Server.Tests.Infrastructure;
using Switchboard.Server.Tunnels;

namespace Switchboard.Server.Tests.Tunnels;

/// <summary>
/// The tunnel data path (docs/tunnels.md, "Data path"): large response bodies of known length go from the agent to the
/// gateway as one plain POST instead of WebSocket frames. Real gateway, real agent (in process or the CLI), real nginx.
/// </summary>
public sealed class TunnelDataPathTests
{
    private const long MiB = 1024 * 1024;

    [Theory]
    [InlineData(true)] // the agent's own request, tail by splice
    [InlineData(false)] // HttpClient, copied
    public async Task Large_body_of_known_length_goes_on_the_data_path_byte_exact_and_small_or_chunked_ones_do_not(bool zeroCopy)
    {
        await using var h = await TunnelHarness.StartAsync(agent: o => o.ZeroCopy = zeroCopy);
        var agent = h.Agent!;
        Assert.Equal(zeroCopy, agent.ZeroCopy);
        Assert.True(h.Ack!.OffersDataPath);
        Assert.Equal(TunnelProtocol.DataPathPrefix, h.Ack.DataPath);
        Assert.Equal(MiB, h.Ack.DataMinBytes);

        using (var big = await DownloadExactAsync(h.Client, h.Path($"/download?size={20 * MiB}"), 20 * MiB))
            Assert.Equal(20 * MiB, big.Content.Headers.ContentLength);
        // The agent counts the body when the gateway's 204 arrives, which may trail the last byte the public client read.
        await WaitForAsync(() => Task.FromResult(agent.DataPathBodies == 1), "the agent to count the 20 MB body on the data path");
        Assert.Equal(0, agent.DataPathRefusals);
        await WaitForAsync(async () => await DataPathMetricAsync(h.Gateway, "delivered") == 1, "result=\"delivered\" 1 at the gateway");

        // Exactly the minimum goes on the data path; one byte less, a small body and a body of unknown length do not.
        (await DownloadExactAsync(h.Client, h.Path($"/download?size={MiB}"), MiB)).Dispose();
        await WaitForAsync(() => Task.FromResult(agent.DataPathBodies == 2), "the agent to count the 1 MiB body on the data path");
        (await DownloadExactAsync(h.Client, h.Path($"/download?size={MiB - 1}"), MiB - 1)).Dispose();
        (await DownloadExactAsync(h.Client, h.Path("/download?size=100000"), 100_000)).Dispose();
        using (var chunked = await DownloadExactAsync(h.Client, h.Path($"/slow?ms=0&size={3 * MiB}"), 3 * MiB))
        {
            Assert.True(chunked.Headers.TransferEncodingChunked); // the local server gave no length, and neither did the gateway
            Assert.Null(chunked.Content.Headers.ContentLength);
        }
        using (var small = await h.Client.GetAsync(h.Path("/chunks")))
            Assert.Equal(LocalApp.Pattern(100_000), await small.Content.ReadAsByteArrayAsync());

        Assert.Equal(2, agent.DataPathBodies);
        Assert.Equal(0, agent.DataPathRefusals);
        if (zeroCopy)
            Assert.InRange(agent.SplicedBytes, 20 * MiB, 21 * MiB - 1); // all but the bytes buffered with each head
        else
            Assert.Equal(0, agent.SplicedBytes);
        var metrics = await h.Gateway.Api.GetStringAsync("metrics");
        Assert.Equal(["delivered 2"], DataPathLines(metrics));
    }

    [Fact]
    public async Task Upload_answered_with_a_large_body_goes_whole_both_ways_with_the_body_spliced()
    {
        // While a splice reads the local connection, that socket is blocking (and, for moves long enough for this
        // process's descriptor count, its engine registration muted), which is safe because the agent's handler sends
        // the whole request before it reads a response (the gateway answers and strips Expect). An upload answered with
        // a large body must therefore go through whole both ways.
        await using var h = await TunnelHarness.StartAsync();
        var agent = h.Agent!;
        Assert.True(agent.ZeroCopy);
        var upload = RandomNumberGenerator.GetBytes((int)(6 * MiB));
        using var request = new HttpRequestMessage(HttpMethod.Post, h.Path($"/upload-download?size={24 * MiB}"))
        {
            Content = new ByteArrayContent(upload),
        };
        request.Headers.ExpectContinue = true;
        using var response = await ExactAsync(await h.Client.SendAsync(request, HttpCompletionOption.ResponseHeadersRead), 24 * MiB);
        Assert.Equal($"{upload.Length}:{Convert.ToHexStringLower(SHA256.HashData(upload))}", Assert.Single(response.Headers.GetValues("X-Upload")));
        await WaitForAsync(() => Task.FromResult(agent.DataPathBodies == 1), "the agent to count the 24 MiB body on the data path");
        Assert.InRange(agent.SplicedBytes, 23 * MiB, 24 * MiB - 1);
    }

    [Fact]
    public async Task Data_path_min_bytes_zero_offers_nothing_and_large_bodies_go_over_the_websocket()
    {
        await using var h = await TunnelHarness.StartAsync(t => t.DataPathMinBytes = 0);
        Assert.False(h.Ack!.OffersDataPath);
        Assert.Equal("", h.Ack.DataPath);
        Assert.Equal("", h.Ack.DataKey); // the key is not handed out when there is nothing to use it for

        (await DownloadExactAsync(h.Client, h.Path($"/download?size={20 * MiB}"), 20 * MiB)).Dispose();
        Assert.Equal(0, h.Agent!.DataPathBodies);
        Assert.Equal(0, h.Agent.DataPathRefusals);
        Assert.Empty(DataPathLines(await h.Gateway.Api.GetStringAsync("metrics")));
    }

    [Fact]
    public async Task Endpoint_refuses_before_reading_the_body_and_never_lists_the_key()
    {
        await using var h = await TunnelHarness.StartAsync();
        var ack = h.Ack!;
        Assert.Equal(64, ack.DataKey.Length); // 32 random bytes, hex
        // The client sends the body only after a 100 Continue (no timeout fallback): a body that was serialized means
        // the gateway started reading it.
        using var http = new HttpClient(new SocketsHttpHandler { UseProxy = false, Expect100ContinueTimeout = TimeSpan.FromSeconds(60) })
        {
            BaseAddress = h.Gateway.BaseUri,
            Timeout = TimeSpan.FromSeconds(15),
        };

        async Task<(HttpStatusCode Status, string? Error)> PostAsync(string name, long stream, string? key, string? head, long? length = 8 * MiB)
        {
            var content = new RecordingContent(length);
            using var request = new HttpRequestMessage(HttpMethod.Post, $"{ack.DataPath.TrimStart('/')}/{name}/{stream}") { Content = content };
            request.Headers.ExpectContinue = true;
            if (key is not null)
                request.Headers.TryAddWithoutValidation(TunnelProtocol.DataKeyHeader, key);
            if (head is not null)
                request.Headers.TryAddWithoutValidation(TunnelProtocol.DataHeadHeader, head);
            var clock = Stopwatch.StartNew();
            using var response = await http.SendAsync(request);
            var text = await response.Content.ReadAsStringAsync();
            Assert.False(content.Serialized, $"the body was sent before the {(int)response.StatusCode} answer ({text})");
            Assert.True(clock.Elapsed < TimeSpan.FromSeconds(5), $"the refusal took {clock.ElapsedMilliseconds} ms");
            return (response.StatusCode, JsonDocument.Parse(text).RootElement.GetProperty("error").GetString());
        }
        string Head(uint stream) => Convert.ToBase64String(new TunnelResponseHead(200, [new("Content-Type", "application/octet-stream")]).Encode(stream));

        Assert.Equal((HttpStatusCode.MisdirectedRequest, "tunnel_not_here"), await PostAsync("ghost", 1, ack.DataKey, Head(1)));
        Assert.Equal((HttpStatusCode.Forbidden, "invalid_data_key"), await PostAsync(ack.Name, 1, new string('0', 64), Head(1)));
        Assert.Equal((HttpStatusCode.Forbidden, "invalid_data_key"), await PostAsync(ack.Name, 1, null, Head(1)));
        Assert.Equal((HttpStatusCode.NotFound, "stream_not_found"), await PostAsync(ack.Name, 1, ack.DataKey, Head(1)));
        Assert.Equal((HttpStatusCode.NotFound, "stream_not_found"), await PostAsync(ack.Name, 0, ack.DataKey, Head(0)));

        // A stream in flight (the local server never answers /hang): the checks after the stream lookup refuse before the body too.
        using var hang = new CancellationTokenSource();
        var waiting = h.Client.GetAsync(h.Path("/hang"), hang.Token);
        var session = h.Gateway.Services.GetRequiredService<TunnelHub>().Find(ack.Name)!;
        await WaitForAsync(() => Task.FromResult(session.FindStream(1) is not null), "stream 1 to be in flight");
        Assert.Equal((HttpStatusCode.LengthRequired, "length_required"), await PostAsync(ack.Name, 1, ack.DataKey, Head(1), length: null));
        Assert.Equal((HttpStatusCode.BadRequest, "malformed_head"), await PostAsync(ack.Name, 1, ack.DataKey, Head(3)));
        Assert.Equal((HttpStatusCode.BadRequest, "malformed_head"), await PostAsync(ack.Name, 1, ack.DataKey, "not base64!"));
        Assert.Equal((HttpStatusCode.BadRequest, "malformed_head"), await PostAsync(ack.Name, 1, ack.DataKey, null));
        Assert.False(waiting.IsCompleted); // the refused requests did not touch the public request
        await hang.CancelAsync();
        await Assert.ThrowsAnyAsync<OperationCanceledException>(() => waiting);

        using var get = await http.GetAsync($"{ack.DataPath.TrimStart('/')}/{ack.Name}/1");
        Assert.Equal(HttpStatusCode.MethodNotAllowed, get.StatusCode);

        var list = await h.Gateway.Api.GetStringAsync("api/v1/tunnels");
        Assert.Contains(ack.Name, list);
        Assert.DoesNotContain(ack.DataKey, list, StringComparison.OrdinalIgnoreCase);

        Assert.Equal(["invalid_data_key 2", "length_required 1", "malformed_head 3", "stream_not_found 2", "tunnel_not_here 1"],
            DataPathLines(await h.Gateway.Api.GetStringAsync("metrics")).Order(StringComparer.Ordinal));
        Assert.Equal(0, h.Agent!.DataPathBodies);
    }

    [Fact]
    public async Task Public_client_dropping_a_data_path_download_cuts_only_that_body_and_the_connection_carries_on()
    {
        await using var h = await TunnelHarness.StartAsync();
        var agent = h.Agent!;
        var disconnects = 0;
        agent.Disconnected += (_, _) => Interlocked.Increment(ref disconnects);
        const int drops = 10;
        for (var i = 1; i <= drops; i++)
        {
            // Far more than every buffer between the local server and the public client holds, so the body is cut mid-way.
            using (var client = new HttpClient(new SocketsHttpHandler { UseProxy = false }) { BaseAddress = h.Gateway.BaseUri })
            {
                using var response = await client.GetAsync(h.Path($"/download?size={200 * MiB}"), HttpCompletionOption.ResponseHeadersRead);
                Assert.Equal(HttpStatusCode.OK, response.StatusCode);
                Assert.Equal(200 * MiB, response.Content.Headers.ContentLength);
                var body = await response.Content.ReadAsStreamAsync();
                var buffer = new byte[64 * 1024];
                for (long read = 0; read < (1 + i % 3) * MiB;) // 1 to 3 MB, so the drop lands at different points
                {
                    var n = await body.ReadAsync(buffer);
                    Assert.True(n > 0, $"the download ended after {read} bytes");
                    read += n;
                }
            } // disposing the client closes its connection mid-body
            var cut = i;
            await WaitForAsync(async () => await DataPathMetricAsync(h.Gateway, "cut") == cut, $"result=\"cut\" {cut}");

            (await DownloadExactAsync(h.Client, h.Path($"/download?size={5 * MiB}"), 5 * MiB)).Dispose();
            await WaitForAsync(() => Task.FromResult(agent.DataPathBodies == cut), $"the agent to count {cut} bodies on the data path");
        }
        Assert.Equal(0, Volatile.Read(ref disconnects));
        Assert.Same(h.Ack, agent.Current); // no reconnect: still the first connection's ack
        Assert.Equal(0, agent.DataPathRefusals);
        Assert.Equal([$"cut {drops}", $"delivered {drops}"], DataPathLines(await h.Gateway.Api.GetStringAsync("metrics")).Order(StringComparer.Ordinal));
    }

    [Fact]
    public async Task Agent_process_killed_mid_body_on_the_data_path_aborts_the_public_response_quickly()
    {
        await using var h = await TunnelHarness.StartAsync(connect: false);
        var token = await h.AgentTokenAsync("cli");
        using var cli = await CliAgentProcess.StartAsync("tunnel", "http", h.Local.Uri.Port.ToString(CultureInfo.InvariantCulture),
            "--server", h.Gateway.BaseUri.ToString(), "--token", token, "--subdomain", "datakill");

        const long size = 500 * MiB;
        using var response = await h.Client.GetAsync($"t/datakill/download?size={size}", HttpCompletionOption.ResponseHeadersRead);
        Assert.Equal(HttpStatusCode.OK, response.StatusCode);
        Assert.Equal(size, response.Content.Headers.ContentLength);
        var body = await response.Content.ReadAsStreamAsync();
        var buffer = new byte[64 * 1024];
        long read = 0;
        while (read < 4 * MiB)
        {
            var n = await body.ReadAsync(buffer);
            Assert.True(n > 0, $"the download ended after {read} bytes");
            read += n;
        }
        await Task.Delay(200); // the client stops reading: every buffer fills and the agent waits mid-body

        var clock = Stopwatch.StartNew();
        cli.Kill();
        using var limit = new CancellationTokenSource(TimeSpan.FromSeconds(10));
        var error = await Record.ExceptionAsync(async () =>
        {
            int n;
            while ((n = await body.ReadAsync(buffer, limit.Token)) > 0)
                read += n;
        });
        clock.Stop();
        Assert.True(error is IOException, $"expected the aborted connection to fail the read, got {error?.GetType().Name ?? "a clean end"} after {read} bytes: {error?.Message}");
        Assert.True(clock.Elapsed < TimeSpan.FromSeconds(5), $"the public read failed {clock.ElapsedMilliseconds} ms after the kill");
        Assert.True(read < size);
        // It was the data path that broke off (a WebSocket body would not show here at all).
        await WaitForAsync(async () => await DataPathMetricAsync(h.Gateway, "cut") == 1, "result=\"cut\" 1");
        Assert.Equal(0, await DataPathMetricAsync(h.Gateway, "delivered"));
    }

    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public async Task Proxy_refusing_large_request_bodies_costs_three_refusals_then_bodies_go_over_the_websocket(bool zeroCopy)
    {
        await using var h = await TunnelHarness.StartAsync(connect: false);
        await using var nginx = await StartNginxAsync(h.Gateway.BaseUri.Port);
        var lb = new Uri($"http://127.0.0.1:{nginx.Port}/");
        var (agent, ack) = await h.StartAgentAsync(o => (o.Server, o.ZeroCopy) = (lb, zeroCopy)); // the agent's WebSocket and data POSTs go through nginx
        Assert.True(ack.OffersDataPath);
        using var client = new HttpClient(new SocketsHttpHandler { UseProxy = false }) { BaseAddress = lb, Timeout = TimeSpan.FromSeconds(15) };
        for (var i = 1; i <= 5; i++)
        {
            (await DownloadExactAsync(client, $"t/{ack.Name}/download?size={5 * MiB}", 5 * MiB)).Dispose();
            // The agent counts a refusal before it falls back, so the count is final when the download is.
            Assert.Equal(Math.Min(i, 3), agent.DataPathRefusals);
        }
        Assert.Equal(3, agent.DataPathRefusals);
        Assert.Equal(0, agent.DataPathBodies);
        Assert.Empty(DataPathLines(await h.Gateway.Api.GetStringAsync("metrics"))); // nginx answered 413; the gateway saw none
    }

    [Fact]
    public async Task Upload_whose_public_client_left_ends_at_once_instead_of_running_on()
    {
        // This test is the uploader itself (with the connection's real key), for a real stream in flight (/hang), so
        // it sees what an agent sees when the public client goes away mid-body: its upload connection is aborted.
        await using var h = await TunnelHarness.StartAsync();
        var ack = h.Ack!;
        using var publicClient = new HttpClient(new SocketsHttpHandler { UseProxy = false }) { BaseAddress = h.Gateway.BaseUri };
        var download = publicClient.GetAsync(h.Path("/hang"), HttpCompletionOption.ResponseHeadersRead);
        var session = h.Gateway.Services.GetRequiredService<TunnelHub>().Find(ack.Name)!;
        await WaitForAsync(() => Task.FromResult(session.FindStream(1) is not null), "stream 1 to be in flight");

        using var uploader = new HttpClient(new SocketsHttpHandler { UseProxy = false }) { BaseAddress = h.Gateway.BaseUri, Timeout = Timeout.InfiniteTimeSpan };
        using var request = new HttpRequestMessage(HttpMethod.Post, $"{ack.DataPath.TrimStart('/')}/{ack.Name}/1")
        {
            Content = new RecordingContent(1024 * MiB), // far more than the public client will take
        };
        request.Headers.TryAddWithoutValidation(TunnelProtocol.DataKeyHeader, ack.DataKey);
        request.Headers.TryAddWithoutValidation(TunnelProtocol.DataHeadHeader,
            Convert.ToBase64String(new TunnelResponseHead(200, [new("Content-Type", "application/octet-stream")]).Encode(1)));
        var upload = uploader.SendAsync(request);

        using (var response = await download.WaitAsync(TimeSpan.FromSeconds(10)))
        {
            Assert.Equal(HttpStatusCode.OK, response.StatusCode);
            Assert.Equal(1024 * MiB, response.Content.Headers.ContentLength);
            var body = await response.Content.ReadAsStreamAsync();
            var buffer = new byte[64 * 1024];
            for (long read = 0; read < 2 * MiB;)
                read += await body.ReadAsync(buffer);
        }
        publicClient.Dispose(); // the public client leaves mid-body

        var clock = Stopwatch.StartNew();
        var failure = await Record.ExceptionAsync(() => upload.WaitAsync(TimeSpan.FromSeconds(10)));
        Assert.True(failure is HttpRequestException or IOException, $"the upload was not cut: {failure?.GetType().Name ?? "it completed"} after {clock.Elapsed}");
        await WaitForAsync(async () => await DataPathMetricAsync(h.Gateway, "cut") == 1, "result=\"cut\" 1");
    }

    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public async Task Body_refused_after_it_started_fails_that_request_with_502_at_once_and_the_agent_stops_using_the_data_path(bool zeroCopy)
    {
        // nginx sends the data path to a second gateway that has no agent and answers Expect: 100-continue itself, so
        // the agent is already sending the body when the 421 comes: that stream is lost, and must fail fast (not 504).
        await using var h = await TunnelHarness.StartAsync(tunnels: o => o.FirstByteTimeout = TimeSpan.FromSeconds(20), connect: false);
        await using var other = await TestGateway.StartAsync();
        await using var nginx = await StartNginxAsync(h.Gateway.BaseUri.Port, dataUpstreamPort: other.BaseUri.Port);
        var (agent, ack) = await h.StartAgentAsync(o => (o.Server, o.ZeroCopy) = (new Uri($"http://127.0.0.1:{nginx.Port}/"), zeroCopy));
        Assert.True(ack.OffersDataPath);

        var watch = Stopwatch.StartNew();
        using (var lost = await h.Client.GetAsync($"t/{ack.Name}/download?size={5 * MiB}"))
        {
            Assert.Equal(HttpStatusCode.BadGateway, lost.StatusCode);
            Assert.Contains("421", await lost.Content.ReadAsStringAsync());
        }
        Assert.True(watch.Elapsed < TimeSpan.FromSeconds(5), $"the lost stream took {watch.Elapsed} to fail");
        Assert.Equal(1, agent.DataPathRefusals);

        // One lost download is enough: the agent no longer tries the data path on this connection.
        (await DownloadExactAsync(h.Client, $"t/{ack.Name}/download?size={5 * MiB}", 5 * MiB)).Dispose();
        Assert.Equal(1, agent.DataPathRefusals);
        Assert.Equal(0, agent.DataPathBodies);
    }

    // ---- helpers ----

    private static readonly ConcurrentDictionary<long, string> PatternHashes = new();

    /// <summary>GETs <paramref name="url"/> and checks status, length and SHA-256 against <see cref="LocalApp.Pattern"/>; returns the response for its headers.</summary>
    private static async Task<HttpResponseMessage> DownloadExactAsync(HttpClient client, string url, long size) =>
        await ExactAsync(await client.GetAsync(url, HttpCompletionOption.ResponseHeadersRead), size);

    /// <summary>Checks a 200 whose body is <paramref name="size"/> bytes of <see cref="LocalApp.Pattern"/>; disposes it on failure.</summary>
    private static async Task<HttpResponseMessage> ExactAsync(HttpResponseMessage response, long size)
    {
        try
        {
            Assert.Equal(HttpStatusCode.OK, response.StatusCode);
            await using var body = await response.Content.ReadAsStreamAsync();
            using var sha = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
            var buffer = new byte[256 * 1024];
            long total = 0;
            int n;
            while ((n = await body.ReadAsync(buffer)) > 0)
            {
                sha.AppendData(buffer, 0, n);
                total += n;
            }
            Assert.Equal(size, total);
            var expected = PatternHashes.GetOrAdd(size, s => Convert.ToHexStringLower(SHA256.HashData(LocalApp.Pattern(s))));
            Assert.Equal(expected, Convert.ToHexStringLower(sha.GetHashAndReset()));
            return response;
        }
        catch
        {
            response.Dispose();
            throw;
        }
    }

    /// <summary>The <c>switchboard_tunnels_data_path_total</c> series as "RESULT COUNT", in the exporter's order.</summary>
    private static List<string> DataPathLines(string metrics) =>
        [.. Regex.Matches(metrics, @"(?m)^switchboard_tunnels_data_path_total\{result=""([^""]+)""\} (\d+)$").Select(m => $"{m.Groups[1].Value} {m.Groups[2].Value}")];

    private static Task<long> DataPathMetricAsync(TestGateway gateway, string result) =>
        ResultCountAsync(gateway, "switchboard_tunnels_data_path_total", result);

    /// <summary>The value of <c>COUNTER{result="RESULT"}</c> in the gateway's /metrics, 0 when the series is absent.</summary>
    internal static async Task<long> ResultCountAsync(TestGateway gateway, string counter, string result)
    {
        var match = Regex.Match(await gateway.Api.GetStringAsync("metrics"), $@"(?m)^{counter}\{{result=""{Regex.Escape(result)}""\}} (\d+)$");
        return match.Success ? long.Parse(match.Groups[1].Value, CultureInfo.InvariantCulture) : 0;
    }

    /// <summary>Polls <paramref name="condition"/> every 20 ms and fails after 10 s, naming <paramref name="what"/>.</summary>
    internal static async Task WaitForAsync(Func<Task<bool>> condition, string what)
    {
        var clock = Stopwatch.StartNew();
        while (!await condition())
        {
            if (clock.Elapsed > TimeSpan.FromSeconds(10))
                Assert.Fail($"timed out waiting for {what}");
            await Task.Delay(20);
        }
    }

    /// <summary>A request body of <c>length</c> zero bytes (chunked when null) that records whether it was ever serialized.</summary>
    private sealed class RecordingContent(long? length) : HttpContent
    {
        private int _serialized;

        public bool Serialized => Volatile.Read(ref _serialized) != 0;

        protected override async Task SerializeToStreamAsync(Stream stream, TransportContext? context)
        {
            Volatile.Write(ref _serialized, 1);
            var chunk = new byte[64 * 1024];
            var total = length ?? 4 * MiB;
            for (long sent = 0; sent < total; sent += chunk.Length)
                await stream.WriteAsync(chunk.AsMemory(0, (int)Math.Min(chunk.Length, total - sent)));
        }

        protected override bool TryComputeLength(out long size)
        {
            size = length ?? 0;
            return length is not null;
        }
    }

    /// <summary>
    /// nginx in front of one gateway with its default-like <c>client_max_body_size 1m</c>, WebSocket upgrades passed and
    /// response buffering off. A missing nginx fails the test (the suite never skips).
    /// </summary>
    /// <param name="dataUpstreamPort">When set, <c>/tunnel/data/</c> goes there (with request bodies streamed and unlimited) instead.</param>
    private static Task<NginxProcess> StartNginxAsync(int upstreamPort, int? dataUpstreamPort = null) => NginxProcess.StartAsync((dir, port) =>
    {
        var dataLocation = dataUpstreamPort is { } dataPort
                ? $$"""
                    location /tunnel/data/ {
                        client_max_body_size 0;
                        proxy_pass http://127.0.0.1:{{dataPort}};
                        proxy_http_version 1.1;
                        proxy_request_buffering off;
                        proxy_buffering off;
                    }
                    """
                : "";
        return Task.FromResult($$"""
                worker_processes 1;
                pid {{dir}}/nginx.pid;
                error_log {{dir}}/error.log;
                events { worker_connections 256; }
                http {
                    access_log off;
                    client_body_temp_path {{dir}}/tmp/body;
                    proxy_temp_path {{dir}}/tmp/proxy;
                    fastcgi_temp_path {{dir}}/tmp/fastcgi;
                    uwsgi_temp_path {{dir}}/tmp/uwsgi;
                    scgi_temp_path {{dir}}/tmp/scgi;
                    map $http_upgrade $connection_upgrade {
                        default upgrade;
                        ''      '';
                    }
                    server {
                        listen 127.0.0.1:{{port}};
                        client_max_body_size 1m;
                        {{dataLocation}}
                        location / {
                            proxy_pass http://127.0.0.1:{{upstreamPort}};
                            proxy_http_version 1.1;
                            proxy_set_header Upgrade $http_upgrade;
                            proxy_set_header Connection $connection_upgrade;
                            proxy_set_header Host $http_host;
                            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
                            proxy_set_header X-Forwarded-Proto $scheme;
                            proxy_read_timeout 3600s;
                            proxy_buffering off;
                        }
                    }
                }
                """);
    });
}
