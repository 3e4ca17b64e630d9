namespace Switchboard.Server.Storage;

/// <summary>A message on the bus: its topic, the node that sent it, and an opaque payload.</summary>
public readonly record struct BusMessage(string Topic, string SourceNode, ReadOnlyMemory<byte> Payload);

/// <summary>
/// Node-to-node fan-out. Features deliver to their local connections first and publish on the bus only what other
/// nodes need; handlers therefore ignore messages whose <see cref="BusMessage.SourceNode"/> is their own node.
/// Delivery is at-most-once and ordered per topic per sender; features that need more (channels) recover from
/// the store.
/// </summary>
public interface IMessageBus
{
    /// <summary>This node's id, stamped on every message it publishes.</summary>
    string NodeId { get; }

    ValueTask PublishAsync(string topic, ReadOnlyMemory<byte> payload, CancellationToken cancellationToken);

    /// <summary>Subscribes to one topic, or to every topic starting with a prefix when <paramref name="topic"/> ends with <c>*</c>. Dispose to unsubscribe.</summary>
    IDisposable Subscribe(string topic, Func<BusMessage, CancellationToken, ValueTask> handler);
}
