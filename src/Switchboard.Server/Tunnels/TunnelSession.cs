using System.Net.Sockets;
using System.Collections.Concurrent;
using System.IO.Pipelines;
using System.Net;
using System.Net.WebSockets;
using System.Security.Cryptography;
using System.Text;
using Switchboard.Protocol;
using Switchboard.Protocol.Tunnels;
using Switchboard.Server.Connections;
using ProtocolViolationException = Switchboard.Server.Connections.ProtocolViolationException;

namespace Switchboard.Server.Tunnels;

/// <summary>
/// One registered agent connection on the gateway: its streams, its connection window and the policy it announced
/// (basic auth, CIDR allow-list, buffered mode). Frames from the agent are dispatched here without ever blocking
/// the read loop: stream data lands in a bounded <see cref="InboundBuffer"/>.
/// </summary>
public sealed class TunnelSession
{
    private readonly ConcurrentDictionary<uint, GatewayStream> _streams = new();
    private readonly byte[]? _basicAuthHash;
    private readonly IPNetwork[] _allow;
    private readonly TunnelOptions _options;
    private readonly byte[] _dataKey = Encoding.ASCII.GetBytes(Convert.ToHexStringLower(RandomNumberGenerator.GetBytes(32)));
    private int _nextStream = -1;
    private long _requests;
    private long _bytesIn;
    private long _bytesOut;

    internal TunnelSession(WsConnection connection, string name, string owner, TunnelHello hello, IPNetwork[] allow, TunnelOptions options)
    {
        Connection = connection;
        Name = name;
        Owner = owner;
        Hello = hello;
        _allow = allow;
        _options = options;
        if (hello.BasicAuth is { } basic)
            _basicAuthHash = SHA256.HashData(Encoding.UTF8.GetBytes(basic));
        ConnectionWindow = new FlowWindow(options.ConnectionWindowBytes);
        RequestLog = new TunnelRequestLog(options.RecentRequests);
    }

    public WsConnection Connection { get; }
    public string Name { get; }
    public string Owner { get; }
    public TunnelHello Hello { get; }
    public FlowWindow ConnectionWindow { get; }
    public TunnelRequestLog RequestLog { get; }
    public int ActiveStreams => _streams.Count;
    public long TotalRequests => Interlocked.Read(ref _requests);
    public long BytesIn => Interlocked.Read(ref _bytesIn);
    public long BytesOut => Interlocked.Read(ref _bytesOut);
    internal TunnelOptions Options => _options;

    public bool IsAllowed(IPAddress? address)
    {
        if (_allow.Length == 0)
            return true;
        if (address is null)
            return false;
        if (address.IsIPv4MappedToIPv6)
            address = address.MapToIPv4();
        foreach (var net in _allow)
        {
            if (net.Contains(address))
                return true;
        }
        return false;
    }

    /// <summary>Checks an <c>Authorization: Basic</c> header against the announced credentials (constant time).</summary>
    public bool IsAuthorized(string? authorization)
    {
        if (_basicAuthHash is null)
            return true;
        if (authorization is null || !authorization.StartsWith("Basic ", StringComparison.OrdinalIgnoreCase))
            return false;
        string decoded;
        try
        {
            decoded = Encoding.UTF8.GetString(Convert.FromBase64String(authorization[6..].Trim()));
        }
        catch (FormatException)
        {
            return false;
        }
        return CryptographicOperations.FixedTimeEquals(SHA256.HashData(Encoding.UTF8.GetBytes(decoded)), _basicAuthHash);
    }

    public bool RequiresBasicAuth => _basicAuthHash is not null;

    /// <summary>The secret that authorizes this connection's data-path requests (CSPRNG, sent only in the hello-ack).</summary>
    internal string DataKey => Encoding.ASCII.GetString(_dataKey);

    /// <summary>Checks a presented data key (constant time).</summary>
    internal bool MatchesDataKey(string? presented) =>
        presented is not null && CryptographicOperations.FixedTimeEquals(Encoding.ASCII.GetBytes(presented), _dataKey);

    /// <summary>An in-flight stream, or null when it finished or never existed.</summary>
    internal GatewayStream? FindStream(uint id) => _streams.GetValueOrDefault(id);

    /// <summary>Opens a stream: its response slot exists before any frame of the request is sent. Null when at the limit.</summary>
    internal GatewayStream? TryOpen()
    {
        if (Connection.IsClosing || _streams.Count >= _options.MaxConcurrentStreams)
            return null;
        var id = (uint)Interlocked.Add(ref _nextStream, 2);
        var stream = new GatewayStream(this, id, _options.StreamWindowBytes);
        _streams[id] = stream;
        Interlocked.Increment(ref _requests);
        return stream;
    }

    internal void Remove(GatewayStream stream) => _streams.TryRemove(stream.Id, out _);

    internal bool Send(byte[] frame) => Connection.TrySend(OutboundFrame.Binary(frame));

    internal void AddBytes(long inbound, long outbound)
    {
        Interlocked.Add(ref _bytesIn, inbound);
        Interlocked.Add(ref _bytesOut, outbound);
    }

    /// <summary>Handles one frame from the agent (after the handshake).</summary>
    internal void Handle(ReadOnlySpan<byte> frame, WebSocketMessageType type)
    {
        if (type != WebSocketMessageType.Binary || frame.Length < TunnelProtocol.HeaderSize)
            throw new ProtocolViolationException("tunnel frames are binary and at least 5 bytes");
        var kind = TunnelProtocol.TypeOf(frame);
        var id = TunnelProtocol.StreamOf(frame);
        var payload = TunnelProtocol.PayloadOf(frame);
        try
        {
            switch (kind)
            {
                case TunnelFrameType.Ping:
                    Send(TunnelProtocol.Frame(TunnelFrameType.Pong, 0, payload));
                    return;
                case TunnelFrameType.Pong:
                    return;
                case TunnelFrameType.WindowUpdate when id == 0:
                    ConnectionWindow.Grant(TunnelProtocol.ReadWindowUpdate(payload));
                    return;
            }
            if (!_streams.TryGetValue(id, out var stream))
                return; // late frame of a finished or aborted stream
            switch (kind)
            {
                case TunnelFrameType.ResponseHead:
                    stream.OnHead(TunnelResponseHead.Decode(payload));
                    break;
                case TunnelFrameType.ResponseBody:
                    stream.Inbound.Write(payload);
                    break;
                case TunnelFrameType.ResponseEnd:
                    stream.Trailers = TunnelProtocol.ReadTrailers(payload);
                    stream.Inbound.Complete();
                    break;
                case TunnelFrameType.WsMessage:
                    if (payload.Length < 1)
                        throw new ProtocolViolationException("empty ws message frame");
                    stream.Inbound.WriteRecord(payload[0], payload[1..]);
                    break;
                case TunnelFrameType.WsClose:
                    stream.Inbound.WriteRecord(InboundBuffer.CloseFlag, payload);
                    stream.Inbound.Complete();
                    break;
                case TunnelFrameType.WindowUpdate:
                    stream.SendWindow.Grant(TunnelProtocol.ReadWindowUpdate(payload));
                    break;
                case TunnelFrameType.Abort:
                    stream.Fail(new TunnelStreamAbortedException("the agent aborted the stream: " + new TunnelReader(payload).String()));
                    break;
                default:
                    throw new ProtocolViolationException($"unexpected frame type 0x{(byte)kind:x2} from an agent");
            }
        }
        catch (FormatException ex)
        {
            throw new ProtocolViolationException("malformed tunnel frame: " + ex.Message);
        }
        catch (InvalidDataException ex)
        {
            throw new ProtocolViolationException(ex.Message);
        }
    }

    /// <summary>The connection ended: every in-flight stream fails at once (502 or abort), nothing hangs.</summary>
    internal void Terminate()
    {
        var gone = new TunnelStreamAbortedException("the tunnel agent disconnected");
        ConnectionWindow.Close(gone);
        foreach (var s in _streams.Values)
            s.Fail(gone);
    }
}

/// <summary>The gateway's half of one stream: the response slot, the inbound body buffer, the send window.</summary>
internal sealed class GatewayStream(TunnelSession session, uint id, int window)
{
    private readonly int _updateThreshold = InboundBuffer.UpdateThreshold(window);
    private int _windowPending;

    public uint Id { get; } = id;
    public TunnelSession Session { get; } = session;
    public TaskCompletionSource<TunnelResponseHead> Head { get; } = new(TaskCreationOptions.RunContinuationsAsynchronously);
    public InboundBuffer Inbound { get; } = new(window);
    public FlowWindow SendWindow { get; } = new(window);
    public IReadOnlyList<KeyValuePair<string, string>> Trailers { get; set; } = [];

    private readonly Lock _attachLock = new();
    private ExternalBody? _external;

    /// <summary>The body that arrived on the data path with the head, or null when the body comes as frames.</summary>
    public ExternalBody? External
    {
        get
        {
            lock (_attachLock)
                return _external;
        }
    }

    /// <summary>
    /// Answers the stream with a head whose body arrives on the data path. False when the stream already has a head or
    /// failed; the caller then refuses the data-path request and nothing of its body is read.
    /// </summary>
    public bool TryAttach(TunnelResponseHead head, ExternalBody body)
    {
        lock (_attachLock)
        {
            if (Head.Task.IsCompleted)
                return false;
            _external = body;
            if (Head.TrySetResult(head))
                return true;
            _external = null;
            return false;
        }
    }

    public void OnHead(TunnelResponseHead head)
    {
        if (!Head.TrySetResult(head))
            throw new ProtocolViolationException("second response head on a stream");
    }

    public void Fail(Exception error)
    {
        Head.TrySetException(error);
        Inbound.Complete(error);
        SendWindow.Close(error);
    }

    /// <summary>Returns credit to the agent for consumed response bytes, batched (<see cref="InboundBuffer.UpdateThreshold"/>).</summary>
    public void Consumed(int bytes, int charged)
    {
        Inbound.Consumed(charged);
        var pending = Interlocked.Add(ref _windowPending, charged);
        if (pending >= _updateThreshold)
        {
            Interlocked.Add(ref _windowPending, -pending);
            Session.Send(TunnelProtocol.WindowUpdate(Id, pending));
        }
        _ = bytes;
    }

    /// <summary>Sends an abort to the agent (public client gone, timeout, limit) and fails local waiters.</summary>
    public void Abort(string reason)
    {
        Session.Send(TunnelProtocol.Abort(Id, reason));
        Fail(new TunnelStreamAbortedException(reason));
    }
}

/// <summary>
/// A response body arriving on the data path: the body of the agent's request, read by the forwarder of the public
/// request. The data-path request waits for <see cref="Done"/> before it ends, so the reader stays valid while it is used.
/// </summary>
internal sealed class ExternalBody(PipeReader reader, long length)
{
    private readonly TaskCompletionSource<bool> _done = new(TaskCreationOptions.RunContinuationsAsynchronously);

    public PipeReader Reader { get; } = reader;
    public long Length { get; } = length;

    /// <summary>The data request's socket when it is plain HTTP/1.1 (zero copy may read the body's tail from it), else null.</summary>
    public Socket? Socket { get; init; }

    /// <summary>Unconsumed bytes at which Kestrel's socket reader stops reading (the transport's MaxReadBufferSize); 0 when unbounded.</summary>
    public long ParkBytes { get; init; }

    /// <summary>True once zero copy took the body's tail from <see cref="Socket"/>: the data request's connection must close after it.</summary>
    public bool Spliced { get; set; }

    /// <summary>True when the whole body reached the public client; false when it did not (the upload is then cut).</summary>
    public Task<bool> Done => _done.Task;

    public void Finish(bool delivered) => _done.TrySetResult(delivered);
}
