using System.Net;
using System.Net.Sockets;
using System.Security.Cryptography;
using System.Text;
using Switchboard.Client.Tunnels;
using Switchboard.Protocol.Tunnels;
using Switchboard.Transport;

namespace Switchboard.Server.Tests.Tunnels;

/// <summary>
/// The agent's hand-written data-path request (<see cref="DataPathRequest"/>) against a scripted gateway on a real
/// loopback socket: the exact request, the <c>100 Continue</c> handshake and its timeout, refusals before the body,
/// answers that are not HTTP, a gateway that leaves mid-body; and, with a real <see cref="SocketsHttpHandler"/> and
/// <see cref="LocalServerStream"/>, a body whose tail goes by splice, a local server that ends early mid-splice, and a
/// local connection that is not reused after a splice.
/// </summary>
public sealed class DataPathRequestTests
{
    private const long MiB = 1024 * 1024;
    private const string Key = "k3y";
    private const string Head = "aGVhZA==";
    private static readonly TimeSpan Hang = TimeSpan.FromSeconds(15); // only reached when something is broken

    [Fact]
    public async Task Request_is_plain_HTTP_with_length_expect_key_and_head_and_the_body_follows_100_Continue()
    {
        const long length = 300_000;
        var data = LocalApp.Pattern(length);
        await using var gateway = await ScriptedGateway.StartAsync(async (s, head) =>
        {
            await s.SendAsync("HTTP/1.1 100 Continue\r\n\r\n"u8.ToArray());
            var body = await ReceiveExactlyAsync(s, length);
            await s.SendAsync("HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n"u8.ToArray());
            return body;
        });
        var request = new DataPathRequest(gateway.Uri("/tunnel/data/name/7?x=1"), Key, Head, length);

        var status = await request.SendAsync(new MemoryStream(data), Hang, Hang, CancellationToken.None);

        Assert.Equal(204, status);
        Assert.Equal((true, length, 0L), (request.Started, request.Sent, request.Spliced));
        Assert.Equal(data, await gateway.Result);
        var lines = gateway.Head.Split("\r\n");
        Assert.Equal("POST /tunnel/data/name/7?x=1 HTTP/1.1", lines[0]);
        Assert.Equal(
            [$"Host: 127.0.0.1:{gateway.Port}", $"Content-Length: {length}", "Expect: 100-continue", $"{TunnelProtocol.DataKeyHeader}: {Key}",
                $"{TunnelProtocol.DataHeadHeader}: {Head}", "Connection: close"],
            lines[1..]);
    }

    [Fact]
    public async Task Refusal_before_the_body_returns_the_status_and_reads_nothing_of_the_body()
    {
        await using var gateway = await ScriptedGateway.StartAsync(async (s, head) =>
        {
            await s.SendAsync("HTTP/1.1 409 Conflict\r\nContent-Type: application/problem+json\r\nContent-Length: 2\r\n\r\n{}"u8.ToArray());
            return [];
        });
        var body = new CountingStream(LocalApp.Pattern(2 * MiB));
        var request = new DataPathRequest(gateway.Uri("/d/n/1"), Key, Head, 2 * MiB);

        Assert.Equal(409, await request.SendAsync(body, Hang, Hang, CancellationToken.None));
        Assert.False(request.Started);
        Assert.Equal(0, body.Reads); // the caller sends the body over the WebSocket instead
    }

    [Fact]
    public async Task Without_an_interim_answer_the_body_goes_after_the_wait_and_late_interim_answers_are_skipped()
    {
        const long length = 100_000;
        var data = LocalApp.Pattern(length);
        await using var gateway = await ScriptedGateway.StartAsync(async (s, head) =>
        {
            var body = await ReceiveExactlyAsync(s, length); // says nothing until the whole body came
            await s.SendAsync("HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n"u8.ToArray());
            await s.SendAsync("HTTP/1.1 204 No Content\r\n\r\n"u8.ToArray());
            return body;
        });
        var request = new DataPathRequest(gateway.Uri("/d/n/1"), Key, Head, length);

        var status = await request.SendAsync(new MemoryStream(data), Hang, TimeSpan.FromMilliseconds(200), CancellationToken.None);

        Assert.Equal(204, status);
        Assert.Equal(data, await gateway.Result);
    }

    [Fact]
    public async Task Answer_that_is_not_HTTP_fails_before_the_body()
    {
        await using var gateway = await ScriptedGateway.StartAsync(async (s, head) =>
        {
            await s.SendAsync("SSH-2.0-OpenSSH\r\n\r\n"u8.ToArray());
            return [];
        });
        var request = new DataPathRequest(gateway.Uri("/d/n/1"), Key, Head, MiB);

        var error = await Assert.ThrowsAsync<IOException>(() => request.SendAsync(new MemoryStream(LocalApp.Pattern(MiB)), Hang, Hang, CancellationToken.None));
        Assert.Contains("not an HTTP/1.x response", error.Message);
        Assert.False(request.Started);
    }

    [Fact]
    public async Task Gateway_leaving_mid_body_fails_the_request_after_it_started()
    {
        await using var gateway = await ScriptedGateway.StartAsync(async (s, head) =>
        {
            await s.SendAsync("HTTP/1.1 100 Continue\r\n\r\n"u8.ToArray());
            await ReceiveExactlyAsync(s, MiB);
            s.Dispose(); // the gateway goes away with most of the body still to come
            return [];
        });
        var request = new DataPathRequest(gateway.Uri("/d/n/1"), Key, Head, 16 * MiB);

        var error = await Record.ExceptionAsync(() => request.SendAsync(new MemoryStream(LocalApp.Pattern(16 * MiB)), Hang, Hang, CancellationToken.None).WaitAsync(Hang));
        Assert.True(error is IOException or SocketException, $"expected the send to fail, got {error?.GetType().Name ?? "success"}");
        Assert.True(request.Started);
        Assert.InRange(request.Sent, MiB, 16 * MiB - 1);
    }

    [Fact]
    public async Task Tail_of_a_local_response_goes_by_splice_byte_exact_and_the_local_connection_is_not_reused()
    {
        Assert.True(SplicePipe.IsSupported, "splice(2) is available on Linux");
        const long length = 16 * MiB;
        var data = LocalApp.Pattern(length);
        await using var local = await LocalServer.StartAsync(data, LocalMode.Whole);
        using var http = LocalInvoker();
        await using var gateway = await ScriptedGateway.StartAsync(async (s, head) =>
        {
            await s.SendAsync("HTTP/1.1 100 Continue\r\n\r\n"u8.ToArray());
            var body = await ReceiveExactlyAsync(s, length);
            await s.SendAsync("HTTP/1.1 204 No Content\r\n\r\n"u8.ToArray());
            return body;
        });

        using (var response = await http.SendAsync(new HttpRequestMessage(HttpMethod.Get, local.Uri), CancellationToken.None))
        {
            Assert.Equal(length, response.Content.Headers.ContentLength);
            var request = new DataPathRequest(gateway.Uri("/d/n/1"), Key, Head, length);
            Assert.Equal(204, await request.SendAsync(await response.Content.ReadAsStreamAsync(), Hang, Hang, CancellationToken.None));
            Assert.Equal(length, request.Sent);
            // All but what the handler had buffered with the head, and the last byte, which the handler reads itself.
            Assert.InRange(request.Spliced, length - 64 * 1024, length - 1);
        }
        Assert.Equal(SHA256.HashData(data), SHA256.HashData(await gateway.Result));

        // The handler's count is behind the socket: the next request must get a new connection, and an exact body.
        using (var again = await http.SendAsync(new HttpRequestMessage(HttpMethod.Get, local.Uri), CancellationToken.None))
            Assert.Equal(SHA256.HashData(data), SHA256.HashData(await again.Content.ReadAsByteArrayAsync()));
        Assert.Equal(2, local.Connections);
    }

    [Fact]
    public async Task Local_server_ending_mid_splice_fails_the_request_with_what_came_delivered()
    {
        const long length = 16 * MiB;
        var data = LocalApp.Pattern(length);
        await using var local = await LocalServer.StartAsync(data, LocalMode.Half); // sends half, then closes
        using var http = LocalInvoker();
        await using var gateway = await ScriptedGateway.StartAsync(async (s, head) =>
        {
            await s.SendAsync("HTTP/1.1 100 Continue\r\n\r\n"u8.ToArray());
            return await ReceiveToEndAsync(s);
        });

        using var response = await http.SendAsync(new HttpRequestMessage(HttpMethod.Get, local.Uri), CancellationToken.None);
        var request = new DataPathRequest(gateway.Uri("/d/n/1"), Key, Head, length);
        var sending = request.SendAsync(await response.Content.ReadAsStreamAsync(), Hang, Hang, CancellationToken.None);
        var error = await Record.ExceptionAsync(() => sending.WaitAsync(Hang));

        Assert.True(error is IOException or HttpRequestException, $"expected the body to fail, got {error?.GetType().Name ?? "success"}");
        Assert.True(request.Started);
        Assert.Equal(length / 2, request.Sent);
        // The agent closed its data connection: the gateway sees the end after exactly what came.
        Assert.Equal(data.AsSpan(0, (int)(length / 2)).ToArray(), await gateway.Result);
    }

    [Fact]
    public async Task Response_chunked_and_with_a_length_reaches_the_public_client_exact_and_is_copied_not_spliced()
    {
        // The handler decodes such a response as chunked (Transfer-Encoding wins) and reads large chunks straight into
        // the caller's buffer; a splice would pass the chunk framing on as body.
        const long length = 4 * MiB;
        var data = LocalApp.Pattern(length);
        await using var local = await LocalServer.StartAsync(data, LocalMode.ChunkedWithLength);
        await using var h = await TunnelHarness.StartAsync(agent: o => o.LocalTarget = new Uri(local.Uri.GetLeftPart(UriPartial.Authority)));
        Assert.True(h.Agent!.ZeroCopy);

        using var response = await h.Client.GetAsync(h.Path("/file"));
        Assert.Equal(HttpStatusCode.OK, response.StatusCode);
        Assert.Equal(length, response.Content.Headers.ContentLength);
        Assert.Equal(SHA256.HashData(data), SHA256.HashData(await response.Content.ReadAsByteArrayAsync()));
        await TunnelDataPathTests.WaitForAsync(() => Task.FromResult(h.Agent.DataPathBodies == 1), "the agent to count the body on the data path");
        Assert.Equal(0, h.Agent.SplicedBytes);
    }

    [Fact]
    public async Task Cancelling_mid_splice_ends_the_request_at_once_while_the_gateway_is_not_reading()
    {
        // Far more than the pipe and the socket queues hold: the splice waits on the gateway with the rest still coming.
        // The handler cancels by disposing the local connection, which waits for the splice to let go of its socket:
        // the splice sees the stream's token, or the disposal, within 250 ms. (A rest that sits whole in the pipe
        // leaves only the token: the next test.)
        const long length = 16 * MiB;
        await using var stuck = await StuckSpliceAsync(length, sendBufferSize: null);

        var clock = System.Diagnostics.Stopwatch.StartNew();
        await Task.Run(stuck.Cancel.Cancel); // the handler disposes the connection in here, which waits for the splice to let go
        var cancelled = clock.Elapsed;
        var error = await Record.ExceptionAsync(() => stuck.Sending.WaitAsync(Hang));

        Assert.True(cancelled < TimeSpan.FromSeconds(3), $"Cancel() took {cancelled}");
        Assert.True(clock.Elapsed < TimeSpan.FromSeconds(3), $"the request ended {clock.Elapsed} after the cancel");
        Assert.True(error is OperationCanceledException or IOException or HttpRequestException, $"expected the request to fail, got {error?.GetType().Name ?? "success"}");
    }

    [Fact]
    public async Task Cancelling_while_the_whole_rest_of_the_body_waits_in_the_pipe_ends_the_request_at_once()
    {
        // The case where only the stream's own token can end the splice: nothing more is to come from the local server
        // (all of the rest is in the pipe), and the gateway reads nothing. Small queues after the pipe make it so.
        const long length = MiB;
        await using var stuck = await StuckSpliceAsync(length, sendBufferSize: 16 * 1024);
        Assert.False(stuck.Sending.IsCompleted, "the whole body went out: the gateway's queues took it");

        var clock = System.Diagnostics.Stopwatch.StartNew();
        await Task.Run(stuck.Cancel.Cancel).WaitAsync(Hang);
        var cancelled = clock.Elapsed;
        var error = await Record.ExceptionAsync(() => stuck.Sending.WaitAsync(Hang));

        Assert.True(cancelled < TimeSpan.FromSeconds(3), $"Cancel() took {cancelled}");
        Assert.True(error is OperationCanceledException or IOException or HttpRequestException, $"expected the request to fail, got {error?.GetType().Name ?? "success"}");
    }

    // ---- helpers ----

    /// <summary>
    /// A data request of <paramref name="length"/> bytes from a real local response, started (its splice under way) and
    /// stuck: the gateway said <c>100 Continue</c>, took a 4 KiB receive buffer and reads nothing until disposal.
    /// </summary>
    private static async Task<StuckSplice> StuckSpliceAsync(long length, int? sendBufferSize)
    {
        var local = await LocalServer.StartAsync(LocalApp.Pattern(length), LocalMode.Whole);
        var http = LocalInvoker();
        var reading = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var gateway = await ScriptedGateway.StartAsync(async (s, head) =>
        {
            s.ReceiveBufferSize = 4096;
            await s.SendAsync("HTTP/1.1 100 Continue\r\n\r\n"u8.ToArray());
            await reading.Task; // reads nothing: the splice waits on a full send queue with the pipe full behind it
            return [];
        });
        var response = await http.SendAsync(new HttpRequestMessage(HttpMethod.Get, local.Uri), CancellationToken.None);
        var cancel = new CancellationTokenSource();
        var request = new DataPathRequest(gateway.Uri("/d/n/1"), Key, Head, length) { SendBufferSize = sendBufferSize };
        var sending = request.SendAsync(await response.Content.ReadAsStreamAsync(), Hang, Hang, cancel.Token);
        await TunnelDataPathTests.WaitForAsync(async () => { await Task.Delay(50); return request.Started; }, "the body to start");
        await Task.Delay(500); // the splice is now blocked on the gateway
        return new StuckSplice(local, http, gateway, reading, response, cancel, sending);
    }

    private sealed record StuckSplice(LocalServer Local, HttpMessageInvoker Http, ScriptedGateway Gateway, TaskCompletionSource Reading,
        HttpResponseMessage Response, CancellationTokenSource Cancel, Task<int> Sending) : IAsyncDisposable
    {
        public async ValueTask DisposeAsync()
        {
            Reading.TrySetResult();
            Cancel.Dispose();
            Response.Dispose();
            await Gateway.DisposeAsync();
            Http.Dispose();
            await Local.DisposeAsync();
        }
    }

    private static HttpMessageInvoker LocalInvoker() => new(new SocketsHttpHandler
    {
        UseProxy = false,
        ConnectCallback = LocalServerStream.ConnectAsync,
    });

    private static async Task<byte[]> ReceiveExactlyAsync(Socket socket, long length)
    {
        var data = new byte[length];
        for (var got = 0; got < length;)
        {
            var n = await socket.ReceiveAsync(data.AsMemory(got));
            if (n == 0)
                throw new IOException($"the connection ended after {got} of {length} bytes");
            got += n;
        }
        return data;
    }

    private static async Task<byte[]> ReceiveToEndAsync(Socket socket)
    {
        using var received = new MemoryStream();
        var buffer = new byte[256 * 1024];
        int n;
        while ((n = await socket.ReceiveAsync(buffer)) > 0)
            received.Write(buffer, 0, n);
        return received.ToArray();
    }

    /// <summary>A stream over a byte array that counts reads.</summary>
    private sealed class CountingStream(byte[] data) : MemoryStream(data)
    {
        public int Reads { get; private set; }

        public override ValueTask<int> ReadAsync(Memory<byte> buffer, CancellationToken cancellationToken = default)
        {
            Reads++;
            return base.ReadAsync(buffer, cancellationToken);
        }
    }

    /// <summary>One connection's worth of gateway: reads the request head, then runs the script, whose result the test reads.</summary>
    private sealed class ScriptedGateway : IAsyncDisposable
    {
        private readonly TcpListener _listener;
        private Socket? _client;

        private ScriptedGateway(TcpListener listener, Func<Socket, string, Task<byte[]>> script)
        {
            _listener = listener;
            Result = RunAsync(script);
        }

        public int Port => ((IPEndPoint)_listener.LocalEndpoint).Port;

        public string Head { get; private set; } = "";

        public Task<byte[]> Result { get; }

        public Uri Uri(string path) => new($"http://127.0.0.1:{Port}{path}");

        public static Task<ScriptedGateway> StartAsync(Func<Socket, string, Task<byte[]>> script)
        {
            var listener = new TcpListener(IPAddress.Loopback, 0);
            listener.Start();
            return Task.FromResult(new ScriptedGateway(listener, script));
        }

        private async Task<byte[]> RunAsync(Func<Socket, string, Task<byte[]>> script)
        {
            _client = await _listener.AcceptSocketAsync().WaitAsync(Hang);
            // The head, byte by byte so that nothing of the body is taken with it.
            var head = new List<byte>();
            var one = new byte[1];
            while (head.Count < 4 || !head.TakeLast(4).SequenceEqual("\r\n\r\n"u8.ToArray()))
            {
                if (await _client.ReceiveAsync(one) == 0)
                    throw new IOException("the request ended inside its head");
                head.Add(one[0]);
            }
            Head = Encoding.ASCII.GetString(head.ToArray(), 0, head.Count - 4);
            return await script(_client, Head).WaitAsync(Hang);
        }

        public async ValueTask DisposeAsync()
        {
            _listener.Stop();
            _client?.Dispose();
            await Task.WhenAny(Result); // observed
        }
    }

    private enum LocalMode
    {
        /// <summary>The whole body, keep-alive.</summary>
        Whole,

        /// <summary>Half of the body, then the connection closes.</summary>
        Half,

        /// <summary><c>Content-Length</c> and <c>Transfer-Encoding: chunked</c> (against the RFC), in 1 MiB chunks.</summary>
        ChunkedWithLength,
    }

    /// <summary>A keep-alive HTTP/1.1 server that answers every request with the same body, as <see cref="LocalMode"/> says.</summary>
    private sealed class LocalServer : IAsyncDisposable
    {
        private readonly TcpListener _listener;
        private readonly byte[] _body;
        private readonly LocalMode _mode;
        private readonly CancellationTokenSource _stop = new();
        private readonly Task _accepting;
        private int _connections;

        private LocalServer(TcpListener listener, byte[] body, LocalMode mode)
        {
            _listener = listener;
            _body = body;
            _mode = mode;
            _accepting = AcceptAsync();
        }

        public Uri Uri => new($"http://127.0.0.1:{((IPEndPoint)_listener.LocalEndpoint).Port}/file");

        public int Connections => Volatile.Read(ref _connections);

        public static Task<LocalServer> StartAsync(byte[] body, LocalMode mode)
        {
            var listener = new TcpListener(IPAddress.Loopback, 0);
            listener.Start();
            return Task.FromResult(new LocalServer(listener, body, mode));
        }

        private async Task AcceptAsync()
        {
            var served = new List<Task>();
            try
            {
                while (true)
                {
                    var socket = await _listener.AcceptSocketAsync(_stop.Token);
                    Interlocked.Increment(ref _connections);
                    served.Add(ServeAsync(socket));
                }
            }
            catch (Exception ex) when (ex is OperationCanceledException or SocketException or ObjectDisposedException)
            {
            }
            await Task.WhenAll(served);
        }

        private async Task ServeAsync(Socket socket)
        {
            using (socket)
            {
                try
                {
                    var buffer = new byte[8192];
                    var pending = "";
                    while (true)
                    {
                        while (!pending.Contains("\r\n\r\n", StringComparison.Ordinal))
                        {
                            var n = await socket.ReceiveAsync(buffer, _stop.Token);
                            if (n == 0)
                                return;
                            pending += Encoding.ASCII.GetString(buffer, 0, n);
                        }
                        pending = pending[(pending.IndexOf("\r\n\r\n", StringComparison.Ordinal) + 4)..];
                        var chunked = _mode == LocalMode.ChunkedWithLength ? "Transfer-Encoding: chunked\r\n" : "";
                        await socket.SendAsync(Encoding.ASCII.GetBytes($"HTTP/1.1 200 OK\r\nContent-Length: {_body.Length}\r\n{chunked}\r\n"), _stop.Token);
                        switch (_mode)
                        {
                            case LocalMode.Half:
                                await socket.SendAsync(_body.AsMemory(0, _body.Length / 2), _stop.Token);
                                return;
                            case LocalMode.ChunkedWithLength:
                                for (var offset = 0; offset < _body.Length; offset += (int)MiB)
                                {
                                    var size = Math.Min((int)MiB, _body.Length - offset);
                                    await socket.SendAsync(Encoding.ASCII.GetBytes($"{size:x}\r\n"), _stop.Token);
                                    await socket.SendAsync(_body.AsMemory(offset, size), _stop.Token);
                                    await socket.SendAsync("\r\n"u8.ToArray(), _stop.Token);
                                }
                                await socket.SendAsync("0\r\n\r\n"u8.ToArray(), _stop.Token);
                                break;
                            default:
                                await socket.SendAsync(_body, _stop.Token);
                                break;
                        }
                    }
                }
                catch (Exception ex) when (ex is OperationCanceledException or SocketException)
                {
                }
            }
        }

        public async ValueTask DisposeAsync()
        {
            await _stop.CancelAsync();
            _listener.Stop();
            await _accepting;
            _stop.Dispose();
        }
    }
}
