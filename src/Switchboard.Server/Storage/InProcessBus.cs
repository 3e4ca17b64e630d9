using System.Collections.Immutable;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Options;

namespace Switchboard.Server.Storage;

/// <summary>
/// The single-node bus: delivers to this process's subscribers. Handlers run inline on the publisher's thread,
/// so they must be quick and non-blocking (they enqueue, they do not write sockets).
/// </summary>
public sealed partial class InProcessBus(IOptions<SwitchboardOptions> options, ILogger<InProcessBus> logger) : IMessageBus
{
    private ImmutableArray<(string Topic, bool Prefix, Func<BusMessage, CancellationToken, ValueTask> Handler)> _subscriptions = [];
    private readonly Lock _gate = new();

    public string NodeId { get; } = options.Value.NodeId;

    public async ValueTask PublishAsync(string topic, ReadOnlyMemory<byte> payload, CancellationToken cancellationToken)
    {
        var message = new BusMessage(topic, NodeId, payload);
        foreach (var s in _subscriptions)
        {
            if (s.Prefix ? topic.StartsWith(s.Topic, StringComparison.Ordinal) : topic == s.Topic)
            {
                try
                {
                    await s.Handler(message, cancellationToken);
                }
                catch (Exception ex) when (ex is not OperationCanceledException)
                {
                    Log.HandlerFailed(logger, ex, topic);
                }
            }
        }
    }

    public IDisposable Subscribe(string topic, Func<BusMessage, CancellationToken, ValueTask> handler)
    {
        var prefix = topic.EndsWith('*');
        var entry = (prefix ? topic[..^1] : topic, prefix, handler);
        lock (_gate)
            _subscriptions = _subscriptions.Add(entry);
        return new Unsubscriber(this, entry);
    }

    private sealed class Unsubscriber(InProcessBus bus, (string, bool, Func<BusMessage, CancellationToken, ValueTask>) entry) : IDisposable
    {
        public void Dispose()
        {
            lock (bus._gate)
                bus._subscriptions = bus._subscriptions.Remove(entry);
        }
    }

    private static partial class Log
    {
        [LoggerMessage(1301, LogLevel.Error, "Bus handler failed for topic {Topic}.")]
        public static partial void HandlerFailed(ILogger logger, Exception exception, string topic);
    }
}
