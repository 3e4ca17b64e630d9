using System.Text;
using Microsoft.Extensions.DependencyInjection;
using Switchboard.Server.Connections;
using Switchboard.Server.Storage;
using Switchboard.Server.Tests.Infrastructure;

namespace Switchboard.Server.Tests.Connections;

/// <summary>
/// A store's group commit completes its appends inside a <see cref="DeliveryBatch"/>: the fan-outs queue their frames
/// and the senders start once at the end of the batch (or early, once many frames wait), never not at all.
/// </summary>
public sealed class DeliveryBatchTests
{
    [Fact]
    public async Task Senders_start_when_the_batch_ends_and_frames_arrive_in_order()
    {
        await using var gw = await TestGateway.StartAsync();
        await using var a = await gw.ConnectChannelsAsync();
        await using var b = await gw.ConnectChannelsAsync();
        var connections = gw.Services.GetRequiredService<ConnectionManager>();
        Assert.True(connections.TryGet(a.ConnectionId!, out var ca));
        Assert.True(connections.TryGet(b.ConnectionId!, out var cb));

        var first = a.ReceiveTypeAsync("m");
        // A store's writer opens the batch on its own thread and runs it synchronously; so does this test (a thread of
        // its own, so that the thread pool, which sends and receives, is never short of a thread while it waits).
        await OnOwnThread(() =>
        {
            using (DeliveryBatch.Begin())
            {
                Assert.Throws<InvalidOperationException>(() => DeliveryBatch.Begin());
                for (var i = 0; i < 3; i++)
                {
                    // One fan-out per message, as ChannelHub.Dispatch does it.
                    var starts = SenderStarts.For(2);
                    var frame = OutboundFrame.Text(Encoding.UTF8.GetBytes($"{{\"type\":\"m\",\"i\":{i}}}"));
                    Assert.True(starts.TrySend(ca!, frame));
                    Assert.True(starts.TrySend(cb!, frame));
                    starts.Complete();
                }
                // Queued, but the senders wait for the end of the batch.
                Thread.Sleep(300);
                Assert.False(first.IsCompleted);
            }
        });
        Assert.Equal(0, (await first).GetProperty("i").GetInt32());
        for (var i = 1; i < 3; i++)
            Assert.Equal(i, (await a.ReceiveTypeAsync("m")).GetProperty("i").GetInt32());
        for (var i = 0; i < 3; i++)
            Assert.Equal(i, (await b.ReceiveTypeAsync("m")).GetProperty("i").GetInt32());
        // The thread's batch is closed: a fan-out outside a batch starts its senders itself.
        var alone = SenderStarts.For(1);
        Assert.True(alone.TrySend(ca!, OutboundFrame.Text("{\"type\":\"m\",\"i\":3}"u8.ToArray())));
        alone.Complete();
        Assert.Equal(3, (await a.ReceiveTypeAsync("m")).GetProperty("i").GetInt32());
    }

    [Fact]
    public async Task A_large_batch_starts_its_senders_before_it_ends()
    {
        await using var gw = await TestGateway.StartAsync();
        await using var a = await gw.ConnectChannelsAsync();
        var connections = gw.Services.GetRequiredService<ConnectionManager>();
        Assert.True(connections.TryGet(a.ConnectionId!, out var ca));
        var first = a.ReceiveTypeAsync("m");
        Assert.True(await OnOwnThread(() => QueueLargeBatchAndWait(ca!, first)));
        Assert.Equal(0, (await first).GetProperty("i").GetInt32());
        for (var i = 1; i < SenderStarts.MaxDeferredFrames; i++)
            Assert.Equal(i, (await a.ReceiveTypeAsync("m")).GetProperty("i").GetInt32());
    }

    // Queues MaxDeferredFrames messages in one batch, then, with the batch still open on this thread, waits for the
    // first to arrive: a long batch must not hold messages back until it ends.
    private static bool QueueLargeBatchAndWait(WsConnection connection, Task first)
    {
        using (DeliveryBatch.Begin())
        {
            for (var i = 0; i < SenderStarts.MaxDeferredFrames; i++)
            {
                var starts = SenderStarts.For(1);
                Assert.True(starts.TrySend(connection, OutboundFrame.Text(Encoding.UTF8.GetBytes($"{{\"type\":\"m\",\"i\":{i}}}"))));
                starts.Complete();
            }
            return first.Wait(TimeSpan.FromSeconds(10));
        }
    }

    private static Task OnOwnThread(Action action) => OnOwnThread(() =>
    {
        action();
        return true;
    });

    private static Task<T> OnOwnThread<T>(Func<T> func)
    {
        var done = new TaskCompletionSource<T>(TaskCreationOptions.RunContinuationsAsynchronously);
        new Thread(() =>
        {
            try
            {
                done.SetResult(func());
            }
            catch (Exception ex)
            {
                done.SetException(ex);
            }
        }) { IsBackground = true }.Start();
        return done.Task;
    }
}
