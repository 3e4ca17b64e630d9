using Switchboard.Protocol.Tunnels;

namespace Switchboard.Server.Tests.Tunnels;

public sealed class TunnelFrameTests
{
    [Fact]
    public void Heads_round_trip_with_repeated_headers_and_unicode()
    {
        List<KeyValuePair<string, string>> headers = [new("Set-Cookie", "a=1"), new("Set-Cookie", "b=2"), new("X-Name", "Zoë ✓"), new("Empty", "")];
        var frame = new TunnelRequestHead("PATCH", "/p?q=ü", headers, HasBody: true, WebSocket: false).Encode(7);
        Assert.Equal(TunnelFrameType.RequestHead, TunnelProtocol.TypeOf(frame));
        Assert.Equal(7u, TunnelProtocol.StreamOf(frame));
        var head = TunnelRequestHead.Decode(TunnelProtocol.PayloadOf(frame));
        Assert.Equal("PATCH", head.Method);
        Assert.Equal("/p?q=ü", head.Target);
        Assert.Equal(headers, head.Headers);
        Assert.True(head.HasBody);
        Assert.False(head.WebSocket);

        var response = TunnelResponseHead.Decode(TunnelProtocol.PayloadOf(new TunnelResponseHead(418, headers).Encode(9)));
        Assert.Equal(418, response.Status);
        Assert.Equal(headers, response.Headers);
    }

    [Fact]
    public void Hello_round_trips_and_a_truncated_frame_is_rejected()
    {
        var hello = new TunnelHello(TunnelProtocol.Version, "sbat_x", "demo", true, HostHeaderMode.Preserve, "u:p", ["10.0.0.0/8", "::1/128"], "http://127.0.0.1:3000/");
        var frame = hello.Encode();
        var back = TunnelHello.Decode(TunnelProtocol.PayloadOf(frame));
        Assert.Equal(hello.Token, back.Token);
        Assert.Equal("demo", back.Subdomain);
        Assert.True(back.Buffered);
        Assert.Equal(HostHeaderMode.Preserve, back.HostHeader);
        Assert.Equal("u:p", back.BasicAuth);
        Assert.Equal(hello.AllowCidrs, back.AllowCidrs);
        Assert.Equal(hello.LocalTarget, back.LocalTarget);
        Assert.Throws<FormatException>(() => TunnelHello.Decode(TunnelProtocol.PayloadOf(frame.AsSpan(0, frame.Length - 3))));
    }

    [Fact]
    public async Task Inbound_buffer_refuses_data_beyond_its_window_and_credits_consumption()
    {
        var buffer = new InboundBuffer(1000);
        buffer.Write(new byte[600]);
        buffer.Write(new byte[400]);
        Assert.Throws<InvalidDataException>(() => buffer.Write(new byte[1]));
        var read = await buffer.Reader.ReadAsync();
        Assert.Equal(1000, read.Buffer.Length);
        buffer.Reader.AdvanceTo(read.Buffer.End);
        buffer.Consumed(1000);
        buffer.Write(new byte[1000]); // credit returned: a full window fits again
    }

    [Fact]
    public async Task Flow_window_blocks_at_zero_and_resumes_on_grant()
    {
        var window = new FlowWindow(100);
        Assert.Equal(100, await window.TakeAsync(500, CancellationToken.None));
        var waiting = window.TakeAsync(50, CancellationToken.None).AsTask();
        await Task.Delay(50);
        Assert.False(waiting.IsCompleted);
        window.Grant(30);
        Assert.Equal(30, await waiting.WaitAsync(TimeSpan.FromSeconds(2)));
        window.Close(new TunnelStreamAbortedException("gone"));
        await Assert.ThrowsAsync<TunnelStreamAbortedException>(() => window.TakeAsync(1, CancellationToken.None).AsTask());
    }
}
