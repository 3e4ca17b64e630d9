using System.Text;
using System.Threading.Channels;
using Microsoft.AspNetCore.Http;
using Switchboard.Server.Diagnostics;

namespace Switchboard.Server.Channels;

/// <summary>
/// A Server-Sent Events stream subscribed to one channel. Same bounded-queue rule as WebSocket connections:
/// a reader that falls behind gets an <c>error</c> event with code <c>slow_consumer</c> and the stream ends;
/// it reconnects with <c>Last-Event-ID</c> and recovers.
/// </summary>
internal sealed class SseSubscriber : IChannelSubscriber, IRecoverableSubscriber
{
    private static readonly ReadOnlyMemory<byte> Heartbeat = ": ping\n\n"u8.ToArray();
    private readonly Channel<ReadOnlyMemory<byte>> _queue;
    private readonly SwitchboardMetrics _metrics;
    private long _queuedBytes;
    private readonly long _maxBytes;
    private volatile string? _endReason;

    public SseSubscriber(int maxMessages, long maxBytes, SwitchboardMetrics metrics)
    {
        _queue = Channel.CreateBounded<ReadOnlyMemory<byte>>(new BoundedChannelOptions(maxMessages) { SingleReader = true });
        _maxBytes = maxBytes;
        _metrics = metrics;
    }

    public string Id { get; } = "sse-" + Convert.ToHexStringLower(System.Security.Cryptography.RandomNumberGenerator.GetBytes(8));

    public bool Deliver(ChannelBroadcast broadcast) => Enqueue(broadcast.Sse);

    public void Resync(string channel) => End("gap");

    public bool Enqueue(ReadOnlyMemory<byte> frame)
    {
        if (_endReason is not null)
            return false;
        if (Interlocked.Add(ref _queuedBytes, frame.Length) > _maxBytes || !_queue.Writer.TryWrite(frame))
        {
            _metrics.SlowConsumer("sse");
            End("slow_consumer");
            return false;
        }
        return true;
    }

    private void End(string reason)
    {
        _endReason ??= reason;
        _queue.Writer.TryComplete();
    }

    public async Task RunAsync(HttpResponse response, TimeSpan heartbeat, TimeProvider time, CancellationToken cancellationToken)
    {
        using var timer = time.CreateTimer(_ => Enqueue(Heartbeat), null, heartbeat, heartbeat);
        var reader = _queue.Reader;
        var sent = 0;
        try
        {
            while (await reader.WaitToReadAsync(cancellationToken))
            {
                while (reader.TryRead(out var frame))
                {
                    await response.Body.WriteAsync(frame, cancellationToken);
                    Interlocked.Add(ref _queuedBytes, -frame.Length);
                    sent++;
                }
                await response.Body.FlushAsync(cancellationToken);
                _metrics.MessagesSent("sse", sent);
                sent = 0;
            }
            if (_endReason is { } reason)
            {
                var text = reason == "gap" ? "history gap: reconnect to resubscribe" : "the stream fell behind: reconnect with Last-Event-ID";
                await response.Body.WriteAsync(Encoding.UTF8.GetBytes($"event: error\ndata: {{\"code\":\"{reason}\",\"message\":\"{text}\"}}\n\n"), cancellationToken);
                await response.Body.FlushAsync(cancellationToken);
            }
        }
        catch (Exception ex) when (ex is OperationCanceledException or IOException)
        {
            // client went away or shutdown
        }
    }

    public void Stop() => End("shutdown");
}
