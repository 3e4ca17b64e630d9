using System.Buffers;
using System.Diagnostics.Metrics;
using System.Globalization;
using System.IO.Pipelines;
using System.Net.Sockets;
using System.Text;
using Microsoft.AspNetCore.Connections.Features;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Http.Features;
using Microsoft.AspNetCore.WebUtilities;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Options;
using Microsoft.Net.Http.Headers;
using Switchboard.Protocol.Tunnels;
using Switchboard.Server.Diagnostics;
using Switchboard.Transport;

namespace Switchboard.Server.Tunnels;

/// <summary>
/// Zero-copy delivery of a data-path body (<see cref="TunnelDataPath"/>): the gateway writes the public response on the
/// public connection's socket itself and lets the kernel move the body from the agent's socket to it with
/// <c>splice(2)</c>, so the bulk of a large download never enters the gateway's memory (docs/tunnels.md, "Zero copy").
/// <para>
/// How the agent's socket becomes ours: Kestrel's socket reader fills the connection's input pipe until the bytes
/// nobody consumed reach the transport's <c>MaxReadBufferSize</c>; then its flush waits and it reads nothing more until
/// they are consumed. The body's first bytes (at least that limit) are sent from the pipe and left unconsumed, so the
/// reader stays parked and the rest of the body is still in the socket, where splice takes it. Kestrel consumes the
/// parked bytes after the data request ends; the request's connection is then closed.
/// </para>
/// <para>
/// Used when both requests are plain HTTP/1.1 over sockets (no TLS, no HTTP/2) on Linux, and a transfer slot is free
/// (<see cref="TunnelOptions.ZeroCopyTransfers"/>); otherwise the body is copied through Kestrel as before. The public
/// connection is closed after the body (<c>Connection: close</c>), because Kestrel did not write that response and
/// cannot go on with the connection.
/// </para>
/// </summary>
public sealed partial class TunnelZeroCopy
{
    /// <summary>Nothing moved for this long (a client that stopped reading, an agent that stopped sending): the transfer is cut.</summary>
    public static readonly TimeSpan StallTimeout = TimeSpan.FromSeconds(30);

    /// <summary>How long the gateway waits for the agent to fill Kestrel's input pipe before it sends what has come (a slow agent).</summary>
    private static readonly TimeSpan ParkWait = TimeSpan.FromMilliseconds(20);

    /// <summary>How long a complete response waits for the client to close the connection before it is closed from here.</summary>
    private static readonly TimeSpan CloseWait = TimeSpan.FromSeconds(5);

    private readonly SemaphoreSlim _slots;
    private readonly bool _enabled;
    private readonly TimeProvider _time;
    private readonly ILogger<TunnelZeroCopy> _logger;
    private readonly Counter<long> _bodies;

    public TunnelZeroCopy(IOptions<TunnelOptions> options, TimeProvider time, IMeterFactory meterFactory, ILogger<TunnelZeroCopy> logger)
    {
        var transfers = options.Value.ZeroCopyTransfers;
        _enabled = transfers > 0 && SplicePipe.IsSupported;
        _slots = new SemaphoreSlim(Math.Max(1, transfers));
        _time = time;
        _logger = logger;
        _bodies = meterFactory.Create(SwitchboardMetrics.MeterName).CreateCounter<long>("switchboard.tunnels.zero_copy", "{body}",
            "Data-path bodies moved by the kernel from the agent's connection to the public one, by result: completed, agent_failed, client_failed, stalled or cancelled.");
    }

    /// <summary>The socket under a plain HTTP/1.1 request, or null (TLS, HTTP/2, another transport).</summary>
    internal static Socket? PlainSocket(HttpContext context) =>
        HttpProtocol.IsHttp11(context.Request.Protocol) && context.Features.Get<ITlsConnectionFeature>() is null
            ? context.Features.Get<IConnectionSocketFeature>()?.Socket
            : null;

    /// <summary>
    /// Sends the response whose status and headers are set on <paramref name="context"/> and the data-path body, then
    /// closes the public connection. False, with nothing written, when zero copy cannot be used for this pair of requests.
    /// </summary>
    internal async Task<bool> TryCopyAsync(HttpContext context, GatewayStream stream, ExternalBody external, TunnelRequestRecord record)
    {
        var request = context.Request;
        // Not for responses that may not have a body (Kestrel would refuse one; here nothing would), and not while the
        // public request may still get a 100 Continue from Kestrel on the same socket.
        if (!_enabled || external.Socket is null || external.ParkBytes <= 0 || HttpMethods.IsHead(request.Method) ||
            context.Response.StatusCode is < 200 or 204 or 304 || request.Headers.Expect.Count > 0 || PlainSocket(context) is not { } client)
            return false;
        if (!_slots.Wait(0))
            return false;
        string result;
        try
        {
            using var pipe = SplicePipe.TryCreate();
            if (pipe is null)
                return false;
            try
            {
                result = await CopyAsync(context, pipe, client, external, record);
            }
            catch
            {
                external.Finish(delivered: false);
                context.Abort();
                throw;
            }
        }
        finally
        {
            _slots.Release();
        }
        try
        {
            _bodies.Add(1, new KeyValuePair<string, object?>("result", result));
            if (result == "completed")
                await CloseAsync(context, client, stream, record);
            else
            {
                record.Error = result switch
                {
                    "agent_failed" => "the agent's data-path upload broke off",
                    "stalled" => $"nothing moved for {StallTimeout.TotalSeconds:0} s",
                    _ => "client disconnected",
                };
                stream.Abort(record.Error);
                Log.Cut(_logger, stream.Session.Name, stream.Id, record.Error, record.ResponseBytes, external.Length);
            }
            return true;
        }
        finally
        {
            external.Finish(delivered: false); // no-op after a delivery; after a cut the data request is cut too
            // Kestrel wrote nothing of this response and cannot continue the connection: it is closed (after a cut
            // the client sees a short body).
            context.Abort();
        }
    }

    // After a complete body: FIN at once, then wait (bounded) until the client has acknowledged every byte and closed
    // its side. Kestrel's abort, the only way to end a connection it did not answer, resets it (linger 0), and a reset
    // may erase what the client has received but not read yet; after the client's own close there is nothing to erase.
    private async Task CloseAsync(HttpContext context, Socket client, GatewayStream stream, TunnelRequestRecord record)
    {
        try
        {
            client.Shutdown(SocketShutdown.Send);
        }
        catch (Exception ex) when (ex is SocketException or ObjectDisposedException)
        {
            return; // the client has closed already (Kestrel disposed the socket)
        }
        await DrainAsync(client, context.RequestAborted);
        try
        {
            await TunnelForwarder.AwaitEndAsync(context, stream);
        }
        catch (TunnelStreamAbortedException ex)
        {
            record.Error = ex.Message;
        }
        try
        {
            await Task.Delay(CloseWait, _time, context.RequestAborted);
        }
        catch (OperationCanceledException)
        {
            // The client closed: the usual end, since the response said Connection: close.
        }
    }

    private async Task<string> CopyAsync(HttpContext context, SplicePipe pipe, Socket client, ExternalBody external, TunnelRequestRecord record)
    {
        var aborted = context.RequestAborted;
        var body = external.Reader;
        var total = external.Length;
        long sent = 0;
        try
        {
            await SendAsync(client, ResponseHead(context.Response, _time.GetUtcNow()), aborted);

            // Kestrel's socket reader stops reading when its flush makes the pipe's back-pressure count (bytes flushed
            // and not yet examined) reach the pause threshold T, and goes on only when an AdvanceTo brings the count
            // below the resume threshold T/2. Here every examined byte is also consumed, so the count is exactly what
            // a read shows.
            var pause = external.ParkBytes;
            while (true)
            {
                // 1. Send what arrives and consume all of it, until right after that the count is below T/2: then the
                //    reader is running, and it stops only by reaching T, which a later read will show.
                ReadResult result;
                try
                {
                    result = await body.ReadAsync(aborted);
                }
                catch (Exception ex) when (!aborted.IsCancellationRequested && ex is OperationCanceledException or IOException or BadHttpRequestException)
                {
                    return "agent_failed";
                }
                var buffer = Clamp(result.Buffer, total - sent);
                await SendAsync(client, buffer, aborted);
                sent += buffer.Length;
                record.ResponseBytes = sent;
                body.AdvanceTo(buffer.End);
                if (sent == total)
                    return Delivered(external);
                if (result.IsCompleted)
                    return "agent_failed";
                if (Peek(body, total - sent) >= pause / 2)
                    continue;

                // 2. Wait, examining nothing, until the count reaches T: the reader is then parked and the rest of the
                //    body is in the agent's socket. Reads that examine nothing return at once, so this polls (1 ms,
                //    backing off to 8 ms); a fast agent fills the pipe in about a millisecond. A body that arrives
                //    whole is sent from the pipe. For a slower agent, what has come is sent as in step 1 after ParkWait.
                var waited = _time.GetTimestamp();
                var delay = 1;
                long length;
                while (true)
                {
                    length = Peek(body, total - sent);
                    if (length < 0)
                        return "agent_failed";
                    if (length == total - sent || length >= pause || _time.GetElapsedTime(waited) > ParkWait)
                        break;
                    await Task.Delay(TimeSpan.FromMilliseconds(delay), _time, aborted);
                    delay = Math.Min(delay * 2, 8);
                }
                if (length != total - sent && length < pause)
                    continue; // not parked: back to step 1, which sends what has come

                if (!TryRead(body, out result))
                    return "agent_failed";
                buffer = Clamp(result.Buffer, total - sent);
                await SendAsync(client, buffer, aborted);
                sent += buffer.Length;
                record.ResponseBytes = sent;
                if (sent == total)
                {
                    body.AdvanceTo(buffer.End);
                    return Delivered(external);
                }
                // Parked: what the pipe holds stays unexamined, so the reader stays parked.
                body.AdvanceTo(buffer.Start, buffer.Start);
                break;
            }

            // 3. The rest moves from the agent's socket to the client's in the kernel, on a thread of its own.
            external.Spliced = true;
            var socket = external.Socket!;
            var left = total - sent;
            long moved = 0;
            var outcome = await Task.Factory.StartNew(() =>
            {
                var o = pipe.Move(socket, client, left, StallTimeout, aborted, out var m);
                moved = m;
                return o;
            }, CancellationToken.None, TaskCreationOptions.LongRunning, TaskScheduler.Default);
            sent += moved;
            record.ResponseBytes = sent;
            return outcome switch
            {
                SpliceOutcome.Completed => Delivered(external),
                SpliceOutcome.SourceFailed => "agent_failed",
                SpliceOutcome.Stalled => "stalled",
                SpliceOutcome.Canceled => "cancelled",
                _ => "client_failed",
            };
        }
        catch (AgentReadException)
        {
            return "agent_failed";
        }
        catch (StalledException)
        {
            return "stalled";
        }
        catch (OperationCanceledException) when (aborted.IsCancellationRequested)
        {
            return "cancelled";
        }
        catch (Exception ex) when (ex is SocketException or IOException or ObjectDisposedException)
        {
            return "client_failed";
        }
    }

    // Waits until the client has acknowledged every byte (or stops making progress, or leaves), so that closing the
    // connection cannot discard what is still queued, whatever way the close takes.
    private async Task DrainAsync(Socket client, CancellationToken cancellationToken)
    {
        var delay = 1;
        var last = int.MaxValue;
        var lastProgress = _time.GetTimestamp();
        try
        {
            while (SplicePipe.Unacknowledged(client) is var queued && queued > 0)
            {
                if (queued < last)
                {
                    last = queued;
                    lastProgress = _time.GetTimestamp();
                }
                else if (_time.GetElapsedTime(lastProgress) > StallTimeout)
                    return;
                await Task.Delay(TimeSpan.FromMilliseconds(delay), _time, cancellationToken);
                delay = Math.Min(delay * 2, 16);
            }
        }
        catch (OperationCanceledException)
        {
        }
    }

    // Bytes of the body in the pipe (at most the rest of the body) without examining any; -1 when the upload ended
    // short. A failing read is the agent's (AgentReadException).
    private static long Peek(PipeReader body, long rest)
    {
        if (!TryRead(body, out var result))
            return 0; // nothing new since the last examination
        var buffer = Clamp(result.Buffer, rest);
        body.AdvanceTo(buffer.Start, buffer.Start);
        return result.IsCompleted && buffer.Length < rest ? -1 : buffer.Length;
    }

    private static bool TryRead(PipeReader body, out ReadResult result)
    {
        try
        {
            return body.TryRead(out result);
        }
        catch (Exception ex) when (ex is IOException or BadHttpRequestException or OperationCanceledException)
        {
            throw new AgentReadException(ex);
        }
    }

    private sealed class AgentReadException(Exception inner) : Exception(inner.Message, inner);

    private sealed class StalledException() : Exception("nothing moved for the stall timeout");

    private static string Delivered(ExternalBody external)
    {
        external.Finish(delivered: true);
        return "completed";
    }

    private static ReadOnlySequence<byte> Clamp(ReadOnlySequence<byte> buffer, long length) =>
        buffer.Length > length ? buffer.Slice(0, length) : buffer;

    private static async ValueTask SendAsync(Socket socket, ReadOnlySequence<byte> bytes, CancellationToken aborted)
    {
        foreach (var segment in bytes)
            await SendAsync(socket, segment, aborted);
    }

    // Sends all of it; a client that takes nothing for StallTimeout ends the transfer (StalledException).
    private static async ValueTask SendAsync(Socket socket, ReadOnlyMemory<byte> bytes, CancellationToken aborted)
    {
        using var stall = CancellationTokenSource.CreateLinkedTokenSource(aborted);
        while (!bytes.IsEmpty)
        {
            stall.CancelAfter(StallTimeout);
            int n;
            try
            {
                n = await socket.SendAsync(bytes, SocketFlags.None, stall.Token);
            }
            catch (OperationCanceledException) when (!aborted.IsCancellationRequested)
            {
                throw new StalledException();
            }
            bytes = bytes[n..];
        }
    }

    /// <summary>The HTTP/1.1 response head as Kestrel would write it, with <c>Connection: close</c>. Kestrel validated every header when it was set.</summary>
    internal static byte[] ResponseHead(HttpResponse response, DateTimeOffset now)
    {
        var head = new StringBuilder(512);
        head.Append("HTTP/1.1 ").Append(response.StatusCode.ToString(CultureInfo.InvariantCulture)).Append(' ')
            .Append(ReasonPhrases.GetReasonPhrase(response.StatusCode)).Append("\r\n");
        foreach (var (name, values) in response.Headers)
        {
            if (name.Equals(HeaderNames.Connection, StringComparison.OrdinalIgnoreCase) || name.Equals(HeaderNames.KeepAlive, StringComparison.OrdinalIgnoreCase))
                continue;
            foreach (var value in values)
                head.Append(name).Append(": ").Append(value).Append("\r\n");
        }
        if (!response.Headers.ContainsKey(HeaderNames.Date))
            head.Append("Date: ").Append(now.ToString("r", CultureInfo.InvariantCulture)).Append("\r\n");
        head.Append("Connection: close\r\n\r\n");
        return Encoding.Latin1.GetBytes(head.ToString());
    }

    private static partial class Log
    {
        [LoggerMessage(3102, LogLevel.Debug, "Tunnel '{Name}' stream {StreamId}: zero-copy body cut ({Reason}) after {Sent} of {Length} bytes.")]
        public static partial void Cut(ILogger logger, string name, uint streamId, string reason, long sent, long length);
    }
}
