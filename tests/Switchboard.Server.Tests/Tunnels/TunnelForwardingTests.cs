using System.Diagnostics;
using System.Net;
using System.Net.Http.Headers;
using System.Text;
using System.Text.Json;

namespace Switchboard.Server.Tests.Tunnels;

public sealed class TunnelForwardingTests
{
    [Fact]
    public async Task Get_by_path_prefix_and_by_host_reaches_the_local_server_with_forwarded_headers()
    {
        await using var h = await TunnelHarness.StartAsync();
        Assert.StartsWith($"http://{h.Ack!.Name}.localhost:", h.Ack.PublicUrl);
        Assert.EndsWith($"/t/{h.Ack.Name}/", h.Ack.PathUrl);

        var byPath = await h.Client.GetStringAsync(h.Path("/hello?x=1"));
        Assert.StartsWith("hello /hello?x=1", byPath);
        Assert.Contains("X-Forwarded-For=127.0.0.1", byPath);
        Assert.Contains("X-Forwarded-Proto=http", byPath);
        Assert.Contains($"X-Forwarded-Prefix=/t/{h.Ack.Name}", byPath);
        Assert.Contains($"Host={h.Local.Uri.Authority}", byPath); // rewrite is the default

        using var request = new HttpRequestMessage(HttpMethod.Get, "hello");
        request.Headers.Host = $"{h.Ack.Name}.localhost:{h.Gateway.BaseUri.Port}";
        request.Headers.TryAddWithoutValidation("X-Multi", ["one", "two"]);
        using var byHost = await h.Client.SendAsync(request);
        var text = await byHost.Content.ReadAsStringAsync();
        Assert.Equal(HttpStatusCode.OK, byHost.StatusCode);
        Assert.StartsWith("hello /hello", text);
        Assert.Contains($"X-Forwarded-Host={h.Ack.Name}.localhost:{h.Gateway.BaseUri.Port}", text);
    }

    [Fact]
    public async Task Host_header_is_preserved_when_asked()
    {
        await using var h = await TunnelHarness.StartAsync(agent: o => o.HostHeader = Protocol.Tunnels.HostHeaderMode.Preserve);
        var text = await h.Client.GetStringAsync(h.Path("/hello"));
        Assert.Contains($"Host={h.Gateway.BaseUri.Authority}", text);
    }

    [Fact]
    public async Task Methods_bodies_statuses_redirects_and_repeated_set_cookie_pass_through()
    {
        await using var h = await TunnelHarness.StartAsync();
        foreach (var method in new[] { "PUT", "PATCH", "DELETE", "POST" })
        {
            using var r = await h.Client.SendAsync(new HttpRequestMessage(new HttpMethod(method), h.Path("/echo")) { Content = new StringContent("body-" + method) });
            Assert.Equal(HttpStatusCode.Created, r.StatusCode);
            Assert.Equal($"{method}:body-{method}", await r.Content.ReadAsStringAsync());
        }

        using var cookies = await h.Client.GetAsync(h.Path("/cookies"));
        Assert.Equal(["a=1; Path=/", "b=2; Path=/; HttpOnly"], cookies.Headers.GetValues("Set-Cookie"));

        using var redirect = await h.Client.GetAsync(h.Path("/redirect"));
        Assert.Equal(HttpStatusCode.Redirect, redirect.StatusCode); // the agent did not follow it
        Assert.Equal("/hello", redirect.Headers.Location!.OriginalString);

        using var missing = await h.Client.GetAsync(h.Path("/nope"));
        Assert.Equal(HttpStatusCode.NotFound, missing.StatusCode);

        using var bare = await h.Client.GetAsync($"t/{h.Ack!.Name}");
        Assert.Equal(HttpStatusCode.PermanentRedirect, bare.StatusCode);
        Assert.Equal($"/t/{h.Ack.Name}/", bare.Headers.Location!.OriginalString);
    }

    [Fact]
    public async Task Server_sent_events_arrive_one_by_one_before_the_next_is_produced()
    {
        await using var h = await TunnelHarness.StartAsync();
        using var response = await h.Client.GetAsync(h.Path("/sse?n=5"), HttpCompletionOption.ResponseHeadersRead);
        Assert.Equal("text/event-stream", response.Content.Headers.ContentType!.MediaType);
        using var reader = new StreamReader(await response.Content.ReadAsStreamAsync());
        for (var i = 0; i < 5; i++)
        {
            using var timeout = new CancellationTokenSource(TimeSpan.FromSeconds(5));
            Assert.Equal($"id: {i}", await reader.ReadLineAsync(timeout.Token));
            Assert.Equal($"data: event {i}", await reader.ReadLineAsync(timeout.Token));
            Assert.Equal("", await reader.ReadLineAsync(timeout.Token));
            lock (h.Local.SseProduced)
                Assert.Equal(i + 1, h.Local.SseProduced.Count); // event i+1 does not exist yet
            h.Local.SseGate.Release();
        }
    }

    [Fact]
    public async Task Buffered_mode_sends_content_length()
    {
        await using var h = await TunnelHarness.StartAsync();
        using var streamed = await h.Client.GetAsync(h.Path("/chunks"), HttpCompletionOption.ResponseHeadersRead);
        Assert.True(streamed.Headers.TransferEncodingChunked); // streamed
        Assert.Equal(LocalApp.Pattern(100000), await streamed.Content.ReadAsByteArrayAsync());
        using var request = new HttpRequestMessage(HttpMethod.Get, h.Path("/chunks"));
        request.Headers.Add("X-Switchboard-Buffer", "1");
        using var buffered = await h.Client.SendAsync(request, HttpCompletionOption.ResponseHeadersRead);
        Assert.NotEqual(true, buffered.Headers.TransferEncodingChunked);
        Assert.Equal(100000, buffered.Content.Headers.ContentLength);
        Assert.Equal(LocalApp.Pattern(100000), await buffered.Content.ReadAsByteArrayAsync());
    }

    [Fact]
    public async Task Two_hundred_concurrent_requests_slow_ones_and_a_stalled_reader_do_not_delay_fast_ones()
    {
        await using var h = await TunnelHarness.StartAsync();
        // A reader that never reads a large download: its stream window fills and stops, nothing else does.
        using var stalled = await h.Client.GetAsync(h.Path("/download?size=20000000"), HttpCompletionOption.ResponseHeadersRead);
        var slow = Enumerable.Range(0, 20).Select(_ => h.Client.GetAsync(h.Path("/slow?ms=4000&size=1000"))).ToList();
        await Task.Delay(200);
        var clock = Stopwatch.StartNew();
        var sizes = new[] { 0, 10, 1000, 50_000, 300_000 };
        var fast = Enumerable.Range(0, 180).Select(async i =>
        {
            var size = sizes[i % sizes.Length];
            var bytes = await h.Client.GetByteArrayAsync(h.Path($"/slow?ms={i % 3 * 10}&size={size}"));
            Assert.Equal(size, bytes.Length);
            Assert.Equal(LocalApp.Pattern(size), bytes);
            return clock.Elapsed;
        }).ToList();
        var times = await Task.WhenAll(fast);
        Assert.True(times.Max() < TimeSpan.FromSeconds(3.5), $"fast requests took up to {times.Max().TotalMilliseconds:0} ms");
        Assert.All(slow, t => Assert.False(t.IsCompleted)); // the slow ones were still running
        foreach (var r in await Task.WhenAll(slow))
        {
            Assert.Equal(HttpStatusCode.OK, r.StatusCode);
            r.Dispose();
        }
        // The stalled download still completes correctly once read.
        var all = await stalled.Content.ReadAsByteArrayAsync();
        Assert.Equal(20000000, all.Length);
    }

    [Fact]
    public async Task Unknown_tunnel_gives_404_naming_it_as_json_or_html()
    {
        await using var h = await TunnelHarness.StartAsync(connect: false);
        using var json = await h.Client.GetAsync("t/ghost/anything");
        Assert.Equal(HttpStatusCode.NotFound, json.StatusCode);
        var doc = JsonDocument.Parse(await json.Content.ReadAsStringAsync());
        Assert.Equal("tunnel_not_found", doc.RootElement.GetProperty("error").GetString());
        Assert.Contains("'ghost'", doc.RootElement.GetProperty("message").GetString());

        using var request = new HttpRequestMessage(HttpMethod.Get, "/");
        request.Headers.Host = "ghost.localhost";
        request.Headers.Accept.Add(new MediaTypeWithQualityHeaderValue("text/html"));
        using var html = await h.Client.SendAsync(request);
        Assert.Equal(HttpStatusCode.NotFound, html.StatusCode);
        Assert.Contains("Tunnel &#39;ghost&#39; is not connected", await html.Content.ReadAsStringAsync());
    }

    [Fact]
    public async Task Too_large_body_gives_413_with_and_without_content_length()
    {
        await using var h = await TunnelHarness.StartAsync(t => t.MaxRequestBodyBytes = 1024 * 1024);
        using var declared = await h.Client.PostAsync(h.Path("/upload"), new ByteArrayContent(new byte[2 * 1024 * 1024]));
        Assert.Equal(HttpStatusCode.RequestEntityTooLarge, declared.StatusCode);
        var chunked = new StreamContent(new MemoryStream(new byte[3 * 1024 * 1024]));
        using var request = new HttpRequestMessage(HttpMethod.Post, h.Path("/upload")) { Content = chunked };
        request.Headers.TransferEncodingChunked = true;
        using var streamed = await h.Client.SendAsync(request);
        Assert.Equal(HttpStatusCode.RequestEntityTooLarge, streamed.StatusCode);
        using var ok = await h.Client.PostAsync(h.Path("/upload"), new ByteArrayContent(new byte[1000]));
        Assert.Equal(HttpStatusCode.OK, ok.StatusCode);
    }

    [Fact]
    public async Task No_first_byte_in_time_gives_504_and_too_many_streams_gives_503()
    {
        await using var h = await TunnelHarness.StartAsync(t =>
        {
            t.FirstByteTimeout = TimeSpan.FromMilliseconds(700);
            t.MaxConcurrentStreams = 2;
        });
        var clock = Stopwatch.StartNew();
        var hangs = new[] { h.Client.GetAsync(h.Path("/hang")), h.Client.GetAsync(h.Path("/hang")) };
        await Task.Delay(200);
        using var busy = await h.Client.GetAsync(h.Path("/hello"));
        Assert.Equal(HttpStatusCode.ServiceUnavailable, busy.StatusCode);
        Assert.Equal("1", busy.Headers.GetValues("Retry-After").Single());
        foreach (var r in await Task.WhenAll(hangs))
        {
            Assert.Equal(HttpStatusCode.GatewayTimeout, r.StatusCode);
            r.Dispose();
        }
        Assert.InRange(clock.Elapsed, TimeSpan.FromMilliseconds(600), TimeSpan.FromSeconds(5));
        using var after = await h.Client.GetAsync(h.Path("/hello"));
        Assert.Equal(HttpStatusCode.OK, after.StatusCode);
    }
}
