using System.Buffers;
using System.Globalization;
using System.Net;
using System.Net.Sockets;
using System.Text;
using Switchboard.Protocol.Tunnels;
using Switchboard.Transport;

namespace Switchboard.Client.Tunnels;

/// <summary>
/// A data-path request (docs/tunnels.md, "Data path") written by hand on a connection of its own, the same request the
/// agent's <see cref="HttpClient"/> would send: <c>POST</c> with <c>Content-Length</c> and <c>Expect: 100-continue</c>.
/// Owning the socket lets the body's tail go from the local server's socket to this one with <c>splice(2)</c> (see
/// <see cref="LocalServerStream"/>): <see cref="HttpClient"/> counts the body bytes it writes itself and would fail
/// the request. Used on Linux when the gateway URL is plain <c>http</c>; the connection closes after the request.
/// </summary>
internal sealed class DataPathRequest(Uri uri, string key, string encodedHead, long length)
{
    private const int BufferBytes = 256 * 1024;
    private const int MaxHeadBytes = 16 * 1024;

    /// <summary>True where this request can be used for <paramref name="server"/>.</summary>
    public static bool IsSupported(Uri server) => SplicePipe.IsSupported && server.Scheme == Uri.UriSchemeHttp;

    private BodyHandoff? _handoff;

    /// <summary>The body started to go out: from here a failure loses the stream (no fallback).</summary>
    public bool Started => _handoff is not null;

    /// <summary>Bytes of the body handed to the gateway's connection, written or spliced.</summary>
    public long Sent => _handoff?.Written ?? 0;

    /// <summary>Bytes of the body that went by splice, without a copy through this process.</summary>
    public long Spliced => _handoff?.SplicedBytes ?? 0;

    /// <summary>
    /// False copies every byte. Only a body framed by <c>Content-Length</c> alone may be spliced: the socket then holds
    /// nothing but body bytes.
    /// </summary>
    public bool Splice { get; init; } = true;

    /// <summary>The connection's send buffer size, when set (tests: a small queue behind the pipe); default: the kernel's.</summary>
    internal int? SendBufferSize { get; init; }

    /// <summary>
    /// Sends the request and returns the gateway's final status: a refusal before the body (the body is then untouched),
    /// or the answer after it. Waits <paramref name="continueTimeout"/> for <c>100 Continue</c>, then sends the body
    /// anyway, as <see cref="HttpClient"/> does. Throws <see cref="IOException"/> or <see cref="SocketException"/> when the
    /// connection fails.
    /// </summary>
    public async Task<int> SendAsync(Stream body, TimeSpan connectTimeout, TimeSpan continueTimeout, CancellationToken cancellationToken)
    {
        using var network = await ConnectAsync(connectTimeout, cancellationToken);
        await network.WriteAsync(Head(), cancellationToken);

        var answer = new ResponseReader(network);
        using (var wait = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken))
        {
            wait.CancelAfter(continueTimeout);
            try
            {
                int status;
                while ((status = await answer.ReadStatusAsync(wait.Token)) is > 100 and < 200)
                {
                    // another interim answer (102, 103): wait on
                }
                if (status != (int)HttpStatusCode.Continue)
                    return status; // refused before the body: nothing of it was read
            }
            catch (OperationCanceledException) when (!cancellationToken.IsCancellationRequested)
            {
                // No interim answer in time: send the body, the gateway reads it or answers with a refusal.
            }
        }

        var buffer = ArrayPool<byte>.Shared.Rent(BufferBytes);
        var handoff = _handoff = new BodyHandoff(buffer, network.Socket, length, cancellationToken);
        if (Splice)
            BodyHandoff.Current = handoff;
        try
        {
            while (handoff.Remaining > 0)
            {
                var want = (int)Math.Min(buffer.Length, handoff.Remaining);
                handoff.Requested = want;
                var read = await body.ReadAsync(buffer.AsMemory(0, want), cancellationToken); // a splice may move most of the rest in here
                if (read == 0)
                    throw new IOException($"the local server's body ended after {handoff.Written} of {length} bytes");
                await network.WriteAsync(buffer.AsMemory(0, read), cancellationToken);
                handoff.Wrote(read);
            }
        }
        finally
        {
            BodyHandoff.Current = null;
            ArrayPool<byte>.Shared.Return(buffer);
        }
        // After the body the gateway answers when the public client has received all of it: no timeout but the stream's.
        // A 100 Continue that came after the wait above is skipped here.
        int final;
        while ((final = await answer.ReadStatusAsync(cancellationToken)) < 200)
        {
        }
        return final;
    }

    private async Task<NetworkStream> ConnectAsync(TimeSpan timeout, CancellationToken cancellationToken)
    {
        var socket = Socket.OSSupportsIPv6
            ? new Socket(SocketType.Stream, ProtocolType.Tcp)
            : new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        socket.NoDelay = true;
        if (SendBufferSize is { } size)
            socket.SendBufferSize = size;
        try
        {
            using var connect = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
            connect.CancelAfter(timeout);
            try
            {
                // Punycode for a name (the resolver does not convert), no brackets for an IPv6 literal.
                var host = uri.HostNameType == UriHostNameType.Dns ? uri.IdnHost : uri.DnsSafeHost;
                await socket.ConnectAsync(new DnsEndPoint(host, uri.Port), connect.Token);
            }
            catch (OperationCanceledException) when (!cancellationToken.IsCancellationRequested)
            {
                throw new IOException($"connecting to {uri.Authority} took longer than {timeout.TotalSeconds:0} s");
            }
            return new NetworkStream(socket, ownsSocket: true);
        }
        catch
        {
            socket.Dispose();
            throw;
        }
    }

    private byte[] Head()
    {
        var host = uri.HostNameType == UriHostNameType.Dns ? uri.IdnHost : uri.Host; // an IPv6 literal keeps its brackets
        if (!uri.IsDefaultPort)
            host += ":" + uri.Port.ToString(CultureInfo.InvariantCulture);
        var head = new StringBuilder()
            .Append("POST ").Append(uri.PathAndQuery).Append(" HTTP/1.1\r\n")
            .Append("Host: ").Append(host).Append("\r\n")
            .Append("Content-Length: ").Append(length.ToString(CultureInfo.InvariantCulture)).Append("\r\n")
            .Append("Expect: 100-continue\r\n")
            .Append(TunnelProtocol.DataKeyHeader).Append(": ").Append(key).Append("\r\n")
            .Append(TunnelProtocol.DataHeadHeader).Append(": ").Append(encodedHead).Append("\r\n")
            .Append("Connection: close\r\n\r\n")
            .ToString();
        return Encoding.ASCII.GetBytes(head);
    }

    /// <summary>Reads response heads (status line and headers, without a body) from the gateway, one at a time.</summary>
    internal sealed class ResponseReader(Stream stream)
    {
        private readonly byte[] _buffer = new byte[MaxHeadBytes];
        private int _start;
        private int _end;

        /// <summary>The status of the next head; the head's headers are skipped.</summary>
        public async Task<int> ReadStatusAsync(CancellationToken cancellationToken)
        {
            while (true)
            {
                var headEnd = _buffer.AsSpan(_start, _end - _start).IndexOf("\r\n\r\n"u8);
                if (headEnd >= 0)
                {
                    var head = _buffer.AsSpan(_start, headEnd);
                    _start += headEnd + 4;
                    return ParseStatus(head);
                }
                if (_start > 0)
                {
                    _buffer.AsSpan(_start, _end - _start).CopyTo(_buffer);
                    _end -= _start;
                    _start = 0;
                }
                if (_end == _buffer.Length)
                    throw new IOException($"the gateway's response head is larger than {MaxHeadBytes} bytes");
                var read = await stream.ReadAsync(_buffer.AsMemory(_end), cancellationToken);
                if (read == 0)
                    throw new IOException("the gateway closed the data connection without an answer");
                _end += read;
            }
        }

        private static int ParseStatus(ReadOnlySpan<byte> head)
        {
            // HTTP/1.x SSS reason
            if (head.Length >= 12 && head.StartsWith("HTTP/1."u8) && head[8] == (byte)' ' &&
                int.TryParse(head.Slice(9, 3), NumberStyles.None, CultureInfo.InvariantCulture, out var status) && status is >= 100 and <= 599)
                return status;
            throw new IOException($"the gateway's answer is not an HTTP/1.x response: {Encoding.ASCII.GetString(head[..Math.Min(head.Length, 64)])}");
        }
    }
}
