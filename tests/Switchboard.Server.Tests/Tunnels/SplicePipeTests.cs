using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using System.Security.Cryptography;
using Switchboard.Transport;

namespace Switchboard.Server.Tests.Tunnels;

/// <summary>
/// <see cref="SplicePipe"/> on real loopback TCP connections (sender → source, destination → receiver, with source and
/// destination non-blocking as the gateway hands them over): <c>Move</c> hands exactly the count over byte-exact and
/// never reads past it, reports an agent that ends early, a client that leaves, a stall and a cancellation with the
/// right outcome, byte count and timing, mutes the .NET socket engine's epoll registration of the source during a long
/// move and puts it back exactly, and <c>Unacknowledged</c> reads the send queue and answers -1 once closed.
/// </summary>
public sealed class SplicePipeTests
{
    private const long MiB = 1024 * 1024;
    private static readonly TimeSpan Hang = TimeSpan.FromSeconds(10); // only reached when something is broken

    [Fact]
    public async Task Move_hands_over_exactly_count_bytes_byte_exact_and_leaves_what_follows_in_the_source()
    {
        const long count = 32 * MiB;
        const int extra = 1000;
        var data = Pattern(count + extra);
        using var pipe = NewPipe();
        Assert.True(count > 4L * pipe.Capacity, $"the pipe holds {pipe.Capacity} bytes: the count must need many rounds");
        using var s = await Sockets.OpenAsync();
        using var timeout = new CancellationTokenSource(Hang);

        var receiving = ReceiveToEndAsync(s.Receiver, timeout.Token);
        var move = MoveAsync(pipe, s, count, TimeSpan.FromSeconds(5), CancellationToken.None);
        var sent = await s.Sender.SendAsync(data, timeout.Token); // more than the count: the rest must stay in the source
        var result = await move.WaitAsync(Hang);

        Assert.Equal((SpliceOutcome.Completed, count), (result.Outcome, result.Moved));
        Assert.Equal(data.Length, sent);
        s.Destination.Shutdown(SocketShutdown.Send); // the receiver reads to the end: nothing beyond the count may come
        var received = await receiving;
        Assert.Equal(count, received.Length);
        Assert.Equal(Sha256(data.AsSpan(0, (int)count)), Sha256(received));

        s.Sender.Shutdown(SocketShutdown.Send);
        Assert.Equal(data.AsSpan((int)count).ToArray(), await ReceiveToEndAsync(s.Source, timeout.Token));
    }

    [Fact]
    public async Task Bytes_of_a_source_that_ran_dry_go_out_at_once_and_are_not_held_for_a_fuller_segment()
    {
        // A slow sender: a small piece, then nothing until the receiver has it. "More" (MSG_MORE) on those bytes would let
        // the kernel hold each piece up to 200 ms for a fuller segment. The median of ten round trips stays far below that
        // on a loaded machine: nothing here waits on a timer.
        const int piece = 4 * 1024, pieces = 10;
        var data = Pattern(piece * pieces);
        using var pipe = NewPipe();
        using var s = await Sockets.OpenAsync();
        using var timeout = new CancellationTokenSource(Hang);
        var move = MoveAsync(pipe, s, 100 * MiB, TimeSpan.FromSeconds(5), timeout.Token); // far more than comes: never "the end"
        var buffer = new byte[piece];
        var rounds = new List<double>();
        for (var i = 0; i < pieces; i++)
        {
            var clock = Stopwatch.StartNew();
            await s.Sender.SendAsync(data.AsMemory(i * piece, piece), timeout.Token);
            for (var got = 0; got < piece;)
                got += await s.Receiver.ReceiveAsync(buffer.AsMemory(got), timeout.Token);
            rounds.Add(clock.Elapsed.TotalMilliseconds);
            Assert.Equal(data.AsSpan(i * piece, piece).ToArray(), buffer);
        }
        rounds.Sort();
        Assert.True(rounds[pieces / 2] < 100, $"median round trip {rounds[pieces / 2]:0} ms (all: {string.Join(", ", rounds.Select(r => r.ToString("0", System.Globalization.CultureInfo.InvariantCulture)))})");
        await timeout.CancelAsync();
        Assert.Equal(SpliceOutcome.Canceled, (await move.WaitAsync(Hang)).Outcome);
    }

    [Fact]
    public async Task Source_reset_while_the_destination_is_blocked_still_hands_over_everything_it_had_received()
    {
        // The sender writes the whole body and resets (linger 0) once its kernel saw every byte acknowledged, while the
        // move waits on a receiver that does not read. Linux keeps what the source received readable after the reset.
        const int count = 1536 * 1024;
        var data = Pattern(count);
        using var pipe = NewPipe();
        using var s = await Sockets.OpenAsync();
        using var timeout = new CancellationTokenSource(Hang);

        s.Destination.SendBufferSize = 64 * 1024; // small queues after the pipe, so the move waits on the receiver
        s.Receiver.ReceiveBufferSize = 64 * 1024;
        // Room in the source for what the pipe does not take: the move reads the source only when the pipe is empty,
        // so while it waits on the receiver, the rest of the body must fit in the source's queue to be acknowledged.
        s.Source.ReceiveBufferSize = 4 * 1024 * 1024;
        var move = MoveAsync(pipe, s, count, TimeSpan.FromSeconds(8), CancellationToken.None);
        Assert.Equal(count, await s.Sender.SendAsync(data, timeout.Token));
        while (SplicePipe.Unacknowledged(s.Sender) != 0)
            await Task.Delay(5, timeout.Token);
        s.Sender.LingerState = new LingerOption(true, 0);
        s.Sender.Close(); // RST
        await Task.Delay(300, timeout.Token); // the move sees the reset while it waits for the receiver
        Assert.False(move.IsCompleted, "the move ended before the receiver read");

        var received = ReceiveToEndAsync(s.Receiver, timeout.Token);
        var result = await move.WaitAsync(Hang);
        Assert.Equal((SpliceOutcome.Completed, (long)count), (result.Outcome, result.Moved));
        s.Destination.Shutdown(SocketShutdown.Send);
        Assert.Equal(Sha256(data), Sha256(await received));
    }

    [Fact]
    public async Task A_long_move_mutes_the_engines_epoll_registration_and_blocks_its_source_then_puts_both_back_exactly()
    {
        // The source has waited on an asynchronous receive, as Kestrel's and the agent's sockets have: .NET's engine has
        // it registered. During a long enough move the registration reports errors and hang-ups only, and the source is
        // blocking with receive and send timeouts of one poll interval (splices wait in the kernel). After the move,
        // here cancelled while it waits on a receiver that does not read, the mask, the engine's key, the descriptor's
        // flags and both timeouts are what they were, and asynchronous receives on the source complete again as bytes
        // come (with the registration left muted they would wait forever).
        Assert.True(EpollMute.Threshold() < long.MaxValue, "this system mutes nothing");
        const long count = 1L << 40; // far above the threshold however many descriptors the test host opens meanwhile; the move is cancelled
        const int sent = 4 * 1024 * 1024;
        var data = Pattern(sent + 1);
        using var pipe = NewPipe();
        using var s = await Sockets.OpenAsync();
        using var timeout = new CancellationTokenSource(Hang);
        await RegisterWithEngineAsync(s, timeout.Token);
        var fd = (int)s.Source.Handle;
        Assert.True(EpollMute.TryFind(fd, long.MaxValue, out var before), "the engine has no epoll registration of the source");
        Assert.NotEqual(0u, before.Events & 0x1); // EPOLLIN
        var flags = SplicePipe.FileStatusFlags(fd);
        Assert.NotEqual(0, flags & O_NONBLOCK);
        SetTimeout(s.Source, SO_RCVTIMEO, TimeSpan.FromSeconds(7)); // not the move's: they must come back
        SetTimeout(s.Source, SO_SNDTIMEO, TimeSpan.FromSeconds(9));

        s.Destination.SendBufferSize = 64 * 1024; // small queues after the pipe, so the move waits on the receiver
        s.Receiver.ReceiveBufferSize = 64 * 1024;
        using var cancel = new CancellationTokenSource();
        var move = MoveAsync(pipe, s, count, TimeSpan.FromSeconds(30), cancel.Token);
        var sending = s.Sender.SendAsync(data.AsMemory(0, sent), timeout.Token).AsTask();
        EpollMute.Registration during;
        while (true) // the move has started once the mask changes; it cannot end before the receiver reads
        {
            Assert.True(EpollMute.TryFind(fd, long.MaxValue, out during));
            if (during.Events != before.Events || move.IsCompleted)
                break;
            await Task.Delay(5, timeout.Token);
        }
        Assert.False(move.IsCompleted, "the move ended before the receiver read");
        Assert.Equal(before with { Events = EpollMute.MutedEvents }, during);
        Assert.Equal(flags & ~O_NONBLOCK, SplicePipe.FileStatusFlags(fd));
        Assert.InRange(Timeout(s.Source, SO_RCVTIMEO), TimeSpan.FromMilliseconds(240), TimeSpan.FromMilliseconds(260)); // kept in ticks
        Assert.InRange(Timeout(s.Source, SO_SNDTIMEO), TimeSpan.FromMilliseconds(240), TimeSpan.FromMilliseconds(260));

        await cancel.CancelAsync();
        var result = await move.WaitAsync(Hang);
        Assert.Equal(SpliceOutcome.Canceled, result.Outcome);
        Assert.True(EpollMute.TryFind(fd, long.MaxValue, out var after));
        Assert.Equal(before, after);
        Assert.Equal(flags, SplicePipe.FileStatusFlags(fd));
        Assert.Equal(TimeSpan.FromSeconds(7), Timeout(s.Source, SO_RCVTIMEO));
        Assert.Equal(TimeSpan.FromSeconds(9), Timeout(s.Source, SO_SNDTIMEO));

        // What moved reached the receiver in order (what the pipe held when cancelled is dropped with it). The rest is read
        // from the source with asynchronous receives, which wait on the engine whenever the sender is behind, and ends
        // with the end of what was sent.
        s.Destination.Shutdown(SocketShutdown.Send);
        Assert.Equal(Sha256(data.AsSpan(0, (int)result.Moved)), Sha256(await ReceiveToEndAsync(s.Receiver, timeout.Token)));
        using var rest = new MemoryStream();
        var chunk = new byte[256 * 1024];
        while (!sending.IsCompleted || SplicePipe.Unacknowledged(s.Sender) > 0 || s.Source.Available > 0)
        {
            var n = await s.Source.ReceiveAsync(chunk, timeout.Token).AsTask().WaitAsync(TimeSpan.FromSeconds(5));
            Assert.True(n > 0);
            rest.Write(chunk, 0, n);
        }
        await sending;
        Assert.InRange(rest.Length, 1, sent - result.Moved);
        Assert.Equal(Sha256(data.AsSpan(sent - (int)rest.Length, (int)rest.Length)), Sha256(rest.ToArray()));

        var buffer = new byte[16];
        var receiving = s.Source.ReceiveAsync(buffer, timeout.Token).AsTask();
        await Task.Delay(50, timeout.Token);
        Assert.False(receiving.IsCompleted); // waiting on the engine, not completed from what was already there
        await s.Sender.SendAsync(data.AsMemory(sent), timeout.Token);
        Assert.Equal(1, await receiving.WaitAsync(TimeSpan.FromSeconds(5)));
        Assert.Equal(data[sent], buffer[0]);
    }

    [Fact]
    public async Task A_source_ending_with_the_pipe_empty_ends_the_move_at_once_not_a_poll_interval_later()
    {
        // The sender sends a piece, the receiver reads it, and the move waits in the kernel for more; then the sender
        // closes. The move must end as soon as the splice sees the end (the old loop then waited 250 ms for nothing,
        // which is also how long a disposing owner waited). The median of five stays far below that on a loaded machine.
        var took = new List<double>();
        for (var i = 0; i < 5; i++)
        {
            using var pipe = NewPipe();
            using var s = await Sockets.OpenAsync();
            using var timeout = new CancellationTokenSource(Hang);
            var move = MoveAsync(pipe, s, 64 * MiB, TimeSpan.FromSeconds(30), timeout.Token);
            await s.Sender.SendAsync(Pattern(64 * 1024), timeout.Token);
            var buffer = new byte[64 * 1024];
            for (var read = 0; read < buffer.Length;)
                read += await s.Receiver.ReceiveAsync(buffer.AsMemory(read), timeout.Token);
            await Task.Delay(100, timeout.Token);
            Assert.False(move.IsCompleted);
            var clock = Stopwatch.StartNew();
            s.Sender.Shutdown(SocketShutdown.Send);
            var result = await move.WaitAsync(Hang);
            took.Add(clock.Elapsed.TotalMilliseconds);
            Assert.Equal((SpliceOutcome.SourceFailed, 64L * 1024), (result.Outcome, result.Moved));
        }
        took.Sort();
        Assert.True(took[2] < 100, $"the move ended {string.Join(", ", took.Select(t => $"{t:0}"))} ms after the source's end");
    }

    [Fact]
    public async Task Bytes_held_in_the_pipe_go_out_as_the_receiver_reads_while_the_source_is_dry()
    {
        // The receiver does not read at first, so the move fills the small queues after the pipe and holds bytes in the
        // pipe, and the rest of 768 KiB waits before it; the sender then has nothing more. When the receiver reads, what the pipe holds must follow at the
        // receiver's pace: a splice from the dry source (which waits a poll interval in the kernel) must not come before
        // each refill of the destination (with that order 768 KiB took 1.7-2.6 s here, against 2-103 ms).
        const int sent = 768 * 1024; // less than the pipe holds
        var data = Pattern(sent);
        using var pipe = NewPipe();
        using var s = await Sockets.OpenAsync();
        using var timeout = new CancellationTokenSource(Hang);
        s.Destination.SendBufferSize = 32 * 1024; // small queues: many refills of the destination
        s.Receiver.ReceiveBufferSize = 32 * 1024;
        var move = MoveAsync(pipe, s, 64 * MiB, TimeSpan.FromSeconds(30), timeout.Token);
        var sending = s.Sender.SendAsync(data, timeout.Token).AsTask(); // it completes only once the receiver reads
        await Task.Delay(300, timeout.Token);

        var clock = Stopwatch.StartNew();
        var received = new byte[sent];
        for (var read = 0; read < sent;)
        {
            var n = await s.Receiver.ReceiveAsync(received.AsMemory(read), timeout.Token);
            Assert.True(n > 0);
            read += n;
        }
        var took = clock.Elapsed;
        await sending;
        Assert.Equal(Sha256(data), Sha256(received));
        Assert.True(took < TimeSpan.FromMilliseconds(500), $"768 KiB took {took.TotalMilliseconds:0} ms to reach a reading receiver");
        await timeout.CancelAsync();
        Assert.Equal(SpliceOutcome.Canceled, (await move.WaitAsync(Hang)).Outcome);
    }

    [Fact]
    public async Task A_short_move_or_a_lookup_over_budget_leaves_the_engines_registration_alone()
    {
        using var s = await Sockets.OpenAsync();
        using var timeout = new CancellationTokenSource(Hang);
        await RegisterWithEngineAsync(s, timeout.Token);
        var fd = (int)s.Source.Handle;
        Assert.True(EpollMute.TryFind(fd, long.MaxValue, out var before));
        Assert.False(EpollMute.TryFind(fd, 40, out _), "found within 40 bytes: less than one line of fdinfo");
        Assert.False(EpollMute.TryMute(fd, SplicePipe.MuteFrom - 1, out _), "muted for a move below MuteFrom");
        Assert.True(EpollMute.TryFind(fd, long.MaxValue, out var unchanged));
        Assert.Equal(before, unchanged);
        Assert.False(EpollMute.TryFind((int)s.Destination.Handle, long.MaxValue, out _), "an accepted socket not used asynchronously yet is not registered");

        // A move below MuteFrom, waiting on a receiver that does not read: the mask stays as it was throughout.
        using var pipe = NewPipe();
        const int count = 2 * 1024 * 1024;
        Assert.True(count < SplicePipe.MuteFrom);
        s.Destination.SendBufferSize = 64 * 1024;
        s.Receiver.ReceiveBufferSize = 64 * 1024;
        var move = MoveAsync(pipe, s, count, TimeSpan.FromSeconds(8), CancellationToken.None);
        var sending = s.Sender.SendAsync(Pattern(count), timeout.Token).AsTask();
        await Task.Delay(300, timeout.Token);
        Assert.False(move.IsCompleted);
        Assert.True(EpollMute.TryFind(fd, long.MaxValue, out var during));
        Assert.Equal(before, during);
        var received = ReceiveToEndAsync(s.Receiver, timeout.Token);
        Assert.Equal(SpliceOutcome.Completed, (await move.WaitAsync(Hang)).Outcome);
        await sending;
        s.Destination.Shutdown(SocketShutdown.Send);
        Assert.Equal(count, (await received).Length);
    }

    [Fact]
    public async Task Source_ending_before_the_count_is_SourceFailed_after_every_byte_that_arrived_was_handed_over()
    {
        const int sent = 100 * 1024;
        var data = Pattern(sent);
        using var pipe = NewPipe();
        using var s = await Sockets.OpenAsync();
        using var timeout = new CancellationTokenSource(Hang);

        var receiving = ReceiveToEndAsync(s.Receiver, timeout.Token);
        var move = MoveAsync(pipe, s, MiB, TimeSpan.FromSeconds(5), CancellationToken.None);
        Assert.Equal(sent, await s.Sender.SendAsync(data, timeout.Token));
        s.Sender.Shutdown(SocketShutdown.Send); // the agent goes away after 100 KB of 1 MiB
        var result = await move.WaitAsync(Hang);

        Assert.Equal((SpliceOutcome.SourceFailed, (long)sent), (result.Outcome, result.Moved));
        s.Destination.Shutdown(SocketShutdown.Send);
        Assert.Equal(data, await receiving);
    }

    [Fact]
    public async Task Source_ending_while_the_destination_is_slow_still_hands_over_what_the_pipe_holds()
    {
        using var pipe = NewPipe();
        using var s = await Sockets.OpenAsync();
        // Small buffers towards a slow reader: when the sender ends, up to a pipe's worth is still on its way out.
        s.Destination.SendBufferSize = 64 * 1024;
        s.Receiver.ReceiveBufferSize = 64 * 1024;
        using var timeout = new CancellationTokenSource(Hang);
        var data = Pattern(4 * MiB);

        var move = MoveAsync(pipe, s, 64 * MiB, TimeSpan.FromSeconds(5), CancellationToken.None);
        var sending = Task.Run(async () =>
        {
            await s.Sender.SendAsync(data, timeout.Token);
            s.Sender.Shutdown(SocketShutdown.Send);
        });
        using var received = new MemoryStream();
        var buffer = new byte[16 * 1024];
        var receiving = Task.Run(async () =>
        {
            int n;
            while ((n = await s.Receiver.ReceiveAsync(buffer, timeout.Token)) > 0)
            {
                received.Write(buffer, 0, n);
                await Task.Delay(1, timeout.Token);
            }
        });
        var result = await move.WaitAsync(Hang);
        await sending;
        s.Destination.Shutdown(SocketShutdown.Send);
        await receiving;

        Assert.Equal((SpliceOutcome.SourceFailed, data.LongLength), (result.Outcome, result.Moved));
        Assert.Equal(Sha256(data), Sha256(received.ToArray()));
    }

    [Fact]
    public async Task Closing_the_source_while_the_move_waits_on_the_destination_ends_the_move_at_once()
    {
        using var pipe = NewPipe();
        using var s = await Sockets.OpenAsync();
        using var stop = new CancellationTokenSource(Hang);

        // The receiver never reads: the move fills every buffer and waits on the destination.
        var move = MoveAsync(pipe, s, 1024 * MiB, TimeSpan.FromSeconds(30), CancellationToken.None);
        var sending = SendUntilStoppedAsync(s.Sender, stop.Token);
        while (SplicePipe.Unacknowledged(s.Destination) < 64 * 1024)
            await Task.Delay(10, stop.Token);
        await Task.Delay(300, stop.Token);

        // What the gateway does when the agent's connection is closed under a transfer: the socket is disposed.
        var clock = Stopwatch.StartNew();
        s.Source.Dispose(); // waits for the move to let go of the descriptor
        var disposed = clock.Elapsed;
        var result = await move.WaitAsync(Hang);
        await stop.CancelAsync();
        await sending;

        Assert.Equal(SpliceOutcome.SourceFailed, result.Outcome);
        Assert.True(disposed < TimeSpan.FromSeconds(2), $"disposing the source took {disposed.TotalMilliseconds:0} ms");
    }

    [Fact]
    public async Task Destination_peer_leaving_mid_move_is_DestinationFailed_at_once()
    {
        const long count = 1024 * MiB; // far more than will ever move
        using var pipe = NewPipe();
        using var s = await Sockets.OpenAsync();
        using var stop = new CancellationTokenSource(Hang);

        var move = MoveAsync(pipe, s, count, TimeSpan.FromSeconds(30), CancellationToken.None);
        var sending = SendUntilStoppedAsync(s.Sender, stop.Token);
        var buffer = new byte[64 * 1024];
        for (long read = 0; read < MiB;) // the bytes flow...
        {
            var n = await s.Receiver.ReceiveAsync(buffer, stop.Token);
            Assert.True(n > 0, $"the receiver saw the end after {read} bytes");
            read += n;
        }
        var clock = Stopwatch.StartNew();
        s.Receiver.Dispose(); // ...then the client leaves with bytes unread (a reset)
        var result = await move.WaitAsync(Hang);
        clock.Stop();
        await stop.CancelAsync();
        await sending;

        Assert.Equal(SpliceOutcome.DestinationFailed, result.Outcome);
        Assert.True(clock.Elapsed < TimeSpan.FromSeconds(2), $"Move noticed the client left {clock.ElapsedMilliseconds} ms later");
        Assert.InRange(result.Moved, MiB, count - 1);
    }

    [Fact]
    public async Task Nothing_arriving_for_the_stall_timeout_is_Stalled()
    {
        using var pipe = NewPipe();
        using var s = await Sockets.OpenAsync();

        var result = await MoveAsync(pipe, s, MiB, TimeSpan.FromMilliseconds(300), CancellationToken.None).WaitAsync(Hang);

        Assert.Equal((SpliceOutcome.Stalled, 0L), (result.Outcome, result.Moved));
        Assert.InRange(result.Elapsed, TimeSpan.FromMilliseconds(300), TimeSpan.FromSeconds(3));
    }

    [Fact]
    public async Task Cancelling_ends_a_waiting_move_within_a_poll_interval()
    {
        using var pipe = NewPipe();
        using var s = await Sockets.OpenAsync();
        using var cancel = new CancellationTokenSource();

        var move = MoveAsync(pipe, s, MiB, TimeSpan.FromSeconds(30), cancel.Token);
        await Task.Delay(200);
        Assert.False(move.IsCompleted, "Move ended before it was cancelled");
        var clock = Stopwatch.StartNew();
        await cancel.CancelAsync();
        var result = await move.WaitAsync(Hang);
        clock.Stop();

        Assert.Equal((SpliceOutcome.Canceled, 0L), (result.Outcome, result.Moved));
        Assert.True(clock.Elapsed < TimeSpan.FromSeconds(1), $"Move ended {clock.ElapsedMilliseconds} ms after the cancellation");
    }

    [Fact]
    public async Task Unacknowledged_is_the_send_queue_zero_once_the_peer_read_everything_and_minus_one_when_closed()
    {
        Assert.True(SplicePipe.IsSupported);
        var (sender, peer) = await ConnectAsync();
        using (peer)
        using (sender)
        {
            Assert.Equal(0, SplicePipe.Unacknowledged(sender)); // nothing sent yet

            // The peer reads nothing: fill its receive window and the sender's send queue until a send would block.
            sender.Blocking = false;
            var chunk = Pattern(64 * 1024);
            long sent = 0;
            while (sender.Send(chunk, SocketFlags.None, out var error) is var n && error == SocketError.Success)
                sent += n;
            var queued = SplicePipe.Unacknowledged(sender);
            Assert.InRange(queued, 1, sent);

            using var timeout = new CancellationTokenSource(Hang);
            var buffer = new byte[256 * 1024];
            for (long read = 0; read < sent;)
            {
                var n = await peer.ReceiveAsync(buffer, timeout.Token);
                Assert.True(n > 0, $"the peer saw the end after {read} of {sent} bytes");
                read += n;
            }
            // Everything was read, so everything was received; the last acknowledgement may trail the read a little.
            var clock = Stopwatch.StartNew();
            while (SplicePipe.Unacknowledged(sender) != 0 && clock.Elapsed < TimeSpan.FromSeconds(2))
                await Task.Delay(10);
            Assert.Equal(0, SplicePipe.Unacknowledged(sender));
            Assert.Equal(0, peer.Available); // idle: not a byte more than was sent
        }
        Assert.Equal(-1, SplicePipe.Unacknowledged(sender));
    }

    // ---- helpers ----

    private const int O_NONBLOCK = 0x800;

    private const int SO_RCVTIMEO = 20;
    private const int SO_SNDTIMEO = 21;

    // SO_RCVTIMEO or SO_SNDTIMEO as the kernel holds it (Socket.ReceiveTimeout is .NET's own on Linux): a struct timeval.
    private static void SetTimeout(Socket socket, int option, TimeSpan timeout)
    {
        var value = new byte[16];
        BitConverter.TryWriteBytes(value.AsSpan(0, 8), (long)timeout.TotalSeconds);
        BitConverter.TryWriteBytes(value.AsSpan(8, 8), (long)(timeout.Ticks % TimeSpan.TicksPerSecond / 10));
        socket.SetRawSocketOption(1, option, value);
    }

    private static TimeSpan Timeout(Socket socket, int option)
    {
        var value = new byte[16];
        Assert.Equal(16, socket.GetRawSocketOption(1, option, value));
        return TimeSpan.FromSeconds(BitConverter.ToInt64(value, 0)) + TimeSpan.FromMicroseconds(BitConverter.ToInt64(value, 8));
    }

    /// <summary>A pipe; fails the test when this machine cannot make one (these tests run on Linux).</summary>
    private static SplicePipe NewPipe()
    {
        Assert.True(SplicePipe.IsSupported);
        var pipe = SplicePipe.TryCreate();
        Assert.NotNull(pipe);
        return pipe;
    }

    private readonly record struct MoveResult(SpliceOutcome Outcome, long Moved, TimeSpan Elapsed);

    /// <summary>Runs <see cref="SplicePipe.Move"/> on a thread of its own, as the gateway does, timing it there.</summary>
    private static Task<MoveResult> MoveAsync(SplicePipe pipe, Sockets s, long count, TimeSpan stall, CancellationToken cancellationToken) =>
        Task.Factory.StartNew(() =>
        {
            var clock = Stopwatch.StartNew();
            var outcome = pipe.Move(s.Source, s.Destination, count, stall, cancellationToken, out var moved);
            return new MoveResult(outcome, moved, clock.Elapsed);
        }, CancellationToken.None, TaskCreationOptions.LongRunning, TaskScheduler.Default);

    /// <summary>
    /// Makes .NET's socket engine register the source, as Kestrel's reads and the agent's do: a receive that has to wait,
    /// then one byte. The byte is consumed, so the source holds nothing before the move.
    /// </summary>
    private static async Task RegisterWithEngineAsync(Sockets s, CancellationToken cancellationToken)
    {
        var one = new byte[1];
        var receiving = s.Source.ReceiveAsync(one, cancellationToken).AsTask();
        await Task.Delay(20, cancellationToken);
        await s.Sender.SendAsync(new byte[] { 42 }, cancellationToken);
        Assert.Equal(1, await receiving.WaitAsync(Hang, cancellationToken));
    }

    /// <summary><paramref name="length"/> bytes that do not repeat (seeded, so the same every run).</summary>
    private static byte[] Pattern(long length)
    {
        var data = new byte[length];
        new Random(20_240_611).NextBytes(data);
        return data;
    }

    private static string Sha256(ReadOnlySpan<byte> data) => Convert.ToHexStringLower(SHA256.HashData(data));

    private static async Task<byte[]> ReceiveToEndAsync(Socket socket, CancellationToken cancellationToken)
    {
        using var received = new MemoryStream();
        var buffer = new byte[256 * 1024];
        int n;
        while ((n = await socket.ReceiveAsync(buffer, cancellationToken)) > 0)
            received.Write(buffer, 0, n);
        return received.ToArray();
    }

    /// <summary>Sends until stopped or refused (the source was closed under it); the test stops it when done.</summary>
    private static async Task SendUntilStoppedAsync(Socket socket, CancellationToken cancellationToken)
    {
        var chunk = Pattern(MiB);
        try
        {
            while (true)
                await socket.SendAsync(chunk, cancellationToken);
        }
        catch (Exception ex) when (ex is OperationCanceledException or SocketException)
        {
        }
    }

    /// <summary>A loopback TCP connection: the connecting end and the accepted end.</summary>
    private static async Task<(Socket Connected, Socket Accepted)> ConnectAsync()
    {
        var listener = new TcpListener(IPAddress.Loopback, 0);
        listener.Start();
        try
        {
            var connected = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
            try
            {
                var accepting = listener.AcceptSocketAsync();
                await connected.ConnectAsync((IPEndPoint)listener.LocalEndpoint);
                return (connected, await accepting.WaitAsync(Hang));
            }
            catch
            {
                connected.Dispose();
                throw;
            }
        }
        finally
        {
            listener.Stop();
        }
    }

    /// <summary>
    /// The two connections of one move: the agent's (<see cref="Sender"/> → <see cref="Source"/>) and the public
    /// client's (<see cref="Destination"/> → <see cref="Receiver"/>). Source and destination are the gateway's accepted
    /// ends, non-blocking at the descriptor level.
    /// </summary>
    private sealed class Sockets : IDisposable
    {
        private Sockets(Socket sender, Socket source, Socket destination, Socket receiver)
        {
            Sender = sender;
            Source = source;
            Destination = destination;
            Receiver = receiver;
        }

        public Socket Sender { get; }

        public Socket Source { get; }

        public Socket Destination { get; }

        public Socket Receiver { get; }

        public static async Task<Sockets> OpenAsync()
        {
            var (sender, source) = await ConnectAsync();
            var (receiver, destination) = await ConnectAsync();
            source.Blocking = false;
            destination.Blocking = false;
            return new Sockets(sender, source, destination, receiver);
        }

        public void Dispose()
        {
            Sender.Dispose();
            Source.Dispose();
            Destination.Dispose();
            Receiver.Dispose();
        }
    }
}
