using Switchboard.Server.Connections;

namespace Switchboard.Server.Storage;

/// <summary>
/// For stores that complete many appends at once (a group commit): complete them inside
/// <c>using (DeliveryBatch.Begin()) { ... }</c> on one thread. The publishes those completions resume dispatch to
/// their subscribers' queues as usual, but the subscribers' senders start once, when the batch ends (or early, when
/// many frames wait), so each connection writes the batch's messages together in one system call. Order and
/// delivery are unchanged; only when the senders wake moves.
/// </summary>
public static class DeliveryBatch
{
    /// <summary>Opens a batch on the calling thread; disposing it starts the senders it collected.</summary>
    public static Scope Begin() => new(SenderStarts.BeginBatch());

    /// <summary>An open batch; dispose it on the thread that opened it.</summary>
    public readonly struct Scope : IDisposable
    {
        private readonly SenderStarts? _starts;

        internal Scope(SenderStarts starts) => _starts = starts;

        public void Dispose()
        {
            if (_starts is not null)
                SenderStarts.EndBatch(_starts);
        }
    }
}
