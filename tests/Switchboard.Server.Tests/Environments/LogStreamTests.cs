using System.Diagnostics;
using System.Text.Json;
using Switchboard.Protocol;
using Switchboard.Server.Environments;
using Switchboard.Server.Tests.Infrastructure;

namespace Switchboard.Server.Tests.Environments;

[Collection("Environments")]
public sealed class LogStreamTests
{
    private static void AssertContiguous(IReadOnlyList<SeenLine> lines, long first, long last)
    {
        Assert.Equal(last - first + 1, lines.Count);
        for (var i = 0; i < lines.Count; i++)
            Assert.Equal(first + i, lines[i].Seq);
    }

    // Lines strictly in order, and every seq between the first and the last either delivered or in a reported skipped range.
    private static void AssertDeliveredOrSkipped(List<SeenLine> lines, List<(long From, long To)> skipped)
    {
        for (var i = 1; i < lines.Count; i++)
            Assert.True(lines[i].Seq > lines[i - 1].Seq, $"seq {lines[i].Seq} after {lines[i - 1].Seq}");
        var seen = lines.Select(l => l.Seq).ToHashSet();
        for (var q = lines[0].Seq; q <= lines[^1].Seq; q++)
            Assert.True(seen.Contains(q) || skipped.Exists(r => q >= r.From && q <= r.To), $"seq {q} neither delivered nor reported as skipped");
    }

    [Fact]
    public async Task History_then_live_and_resume_with_since_has_no_gap_and_no_duplicate()
    {
        await using var gw = await EnvTestKit.StartAsync(o => o.RingSize = 50); // older lines must come from the store
        var dir = Directory.CreateTempSubdirectory("sb-logs").FullName;
        // 150 lines, then wait for the test's go file, then 250 more, a little at a time.
        var e = await gw.CreateShAsync("counter",
            "i=1; while [ $i -le 400 ]; do echo line$i; [ $i -eq 150 ] && while [ ! -f go ]; do sleep 0.02; done; [ $((i % 20)) -eq 0 ] && sleep 0.05; i=$((i+1)); done; sleep 60",
            cwd: dir);
        var id = e.GetProperty("id").GetString()!;
        var environment = (await ((EnvironmentManager)gw.Services.GetService(typeof(EnvironmentManager))!).FindAsync(id))!;
        await EnvTestKit.WaitUntilAsync(() => environment.LastSeq == 150);

        // First connection: a tail of 100 plus live lines; disconnect somewhere in the middle.
        var first = new List<SeenLine>();
        await using (var a = await gw.ConnectEnvAsync(id, "logs"))
        {
            var history = await a.ReceiveTypeAsync("batch");
            Assert.False(history.GetProperty("live").GetBoolean());
            EnvTestKit.Collect(history, first);
            Assert.Equal(100, first.Count);
            Assert.Equal(51, first[0].Seq);
            await File.WriteAllTextAsync(Path.Combine(dir, "go"), "");
            await a.ReadLinesUntilAsync(l => l.Count >= 180, first);
        }
        AssertContiguous(first, 51, first[^1].Seq);
        Assert.All(first, l => Assert.Equal("line" + l.Seq, l.Message));
        var resumeAfter = first[^1].Seq;

        // Lines produced while disconnected: the ring holds only 50, so most come from the store.
        await EnvTestKit.WaitUntilAsync(() => environment.LastSeq == 400 && environment.PersistQueueLength == 0, TimeSpan.FromSeconds(20));
        await Task.Delay(300); // the last batch taken from the queue is being written
        await using var b = await gw.ConnectEnvAsync(id, "logs", $"&since={resumeAfter}");
        var second = await b.ReadLinesUntilAsync(l => l.Count > 0 && l[^1].Seq >= 400);
        AssertContiguous(second, resumeAfter + 1, 400);
        Assert.All(second, l => Assert.Equal("line" + l.Seq, l.Message));
        Directory.Delete(dir, true);

        // A since older than the retention is reported as skipped, not silently lost.
        await Task.Delay(300);
        await using var c = await gw.ConnectEnvAsync(id, "logs", "&since=0&tail=5");
        var firstMessage = await c.ReceiveJsonAsync();
        Assert.Equal("batch", firstMessage.GetProperty("type").GetString());
        Assert.Equal(1, firstMessage.GetProperty("logs")[0].GetProperty("seq").GetInt64());
    }

    [Fact]
    public async Task History_includes_lines_still_waiting_for_the_store()
    {
        // A ring of 16 and a store written only every 30 s: lines 1-84 are neither in the ring nor stored yet.
        await using var gw = await EnvTestKit.StartAsync(o =>
        {
            o.RingSize = 16;
            o.PersistInterval = TimeSpan.FromSeconds(30);
        });
        var e = await gw.CreateShAsync("pending", "i=1; while [ $i -le 100 ]; do echo line$i; i=$((i+1)); done; sleep 60");
        var id = e.GetProperty("id").GetString()!;
        await EnvTestKit.WaitUntilAsync(() => gw.GetEnvAsync(id).Result.GetProperty("lastSeq").GetInt64() == 100);
        await using var socket = await gw.ConnectEnvAsync(id, "logs", "&tail=60");
        var lines = new List<SeenLine>();
        EnvTestKit.Collect(await socket.ReceiveTypeAsync("batch"), lines);
        Assert.Equal(60, lines.Count);
        AssertContiguous(lines, 41, 100);
        Assert.All(lines, l => Assert.Equal("line" + l.Seq, l.Message));
        await using var resumed = await gw.ConnectEnvAsync(id, "logs", "&since=5");
        var fromSince = await resumed.ReadLinesUntilAsync(l => l.Count > 0 && l[^1].Seq >= 100);
        AssertContiguous(fromSince, 6, 100);
    }

    [Fact]
    public async Task Tail_and_stream_filter_on_connect_and_filter_control()
    {
        await using var gw = await EnvTestKit.StartAsync();
        var e = await gw.CreateShAsync("mixed", "for i in 1 2 3 4 5 6; do echo out$i; echo err$i >&2; done; read x");
        var id = e.GetProperty("id").GetString()!;
        await EnvTestKit.WaitUntilAsync(() => gw.GetEnvAsync(id).Result.GetProperty("lastSeq").GetInt64() >= 12);

        await using var tail = await gw.ConnectEnvAsync(id, "logs", "&tail=3");
        var batch = await tail.ReceiveTypeAsync("batch");
        Assert.Equal(3, batch.GetProperty("count").GetInt32());
        Assert.Equal(12, batch.GetProperty("lastSeq").GetInt64());

        await using var errOnly = await gw.ConnectEnvAsync(id, "logs", "&stream=stderr&tail=100");
        var lines = new List<SeenLine>();
        EnvTestKit.Collect(await errOnly.ReceiveTypeAsync("batch"), lines);
        Assert.Equal(["err1", "err2", "err3", "err4", "err5", "err6"], lines.Select(l => l.Message));
        Assert.All(lines, l => Assert.Equal("stderr", l.Stream));

        await errOnly.SendTextAsync("""{"action":"filter","stream":"stdout"}""");
        var ack = await errOnly.ReceiveTypeAsync("control");
        Assert.Equal("stdout", ack.GetProperty("stream").GetString());
        await errOnly.SendTextAsync("""{"action":"filter","stream":"all"}""");
        Assert.Equal("all", (await errOnly.ReceiveTypeAsync("control")).GetProperty("stream").GetString());
    }

    [Fact]
    public async Task Pause_then_resume_delivers_what_was_produced_or_reports_what_was_skipped()
    {
        await using var gw = await EnvTestKit.StartAsync(o => o.PauseBufferLines = 20);
        // Prints a burst of 10 lines on each line of input... simpler: a steady producer.
        var e = await gw.CreateShAsync("ticker", "i=1; while true; do echo t$i; i=$((i+1)); sleep 0.01; done");
        var id = e.GetProperty("id").GetString()!;
        await using var socket = await gw.ConnectEnvAsync(id, "logs", "&tail=0");
        var lines = new List<SeenLine>();
        await socket.ReadLinesUntilAsync(l => l.Count >= 3, lines);
        await socket.SendTextAsync("""{"action":"pause"}""");
        // Lines already in flight may still arrive until the ack.
        while (true)
        {
            var m = await socket.ReceiveJsonAsync();
            if (EnvTestKit.Collect(m, lines) == "control")
            {
                Assert.True(m.GetProperty("paused").GetBoolean());
                break;
            }
        }
        var lastBeforePause = lines[^1].Seq;
        await Task.Delay(150); // about 10 lines: within the bound of 20 (a loaded machine may stretch the pause past it)
        await socket.SendTextAsync("""{"action":"resume"}""");
        // Every seq after the pause arrives, or is covered by a `skipped` report: never a silent gap.
        var skippedRanges = new List<(long From, long To)>();
        var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(15);
        {
            while (lines[^1].Seq <= lastBeforePause + 10)
            {
                Assert.True(DateTime.UtcNow < deadline, "lines after resume did not arrive");
                var m = await socket.ReceiveJsonAsync(TimeSpan.FromSeconds(10));
                if (m.GetProperty("type").GetString() == "skipped")
                {
                    var from = m.GetProperty("fromSeq").GetInt64();
                    Assert.Equal(lastBeforePause + 1, from);
                    Assert.Equal(from + m.GetProperty("count").GetInt64() - 1, m.GetProperty("toSeq").GetInt64());
                    skippedRanges.Add((from, m.GetProperty("toSeq").GetInt64()));
                    continue;
                }
                EnvTestKit.Collect(m, lines);
            }
        }
        AssertDeliveredOrSkipped(lines, skippedRanges);

        // Now pause long enough to exceed the bound: resume says how many were skipped, then continues in order.
        await socket.SendTextAsync("""{"action":"pause"}""");
        while (EnvTestKit.Collect(await socket.ReceiveJsonAsync(), lines) != "control")
        {
        }
        var before = lines[^1].Seq;
        await Task.Delay(800);
        await socket.SendTextAsync("""{"action":"resume"}""");
        JsonElement skipped;
        while (true)
        {
            var m = await socket.ReceiveJsonAsync();
            if (m.GetProperty("type").GetString() == "skipped")
            {
                skipped = m;
                break;
            }
            EnvTestKit.Collect(m, lines);
        }
        Assert.Equal("paused", skipped.GetProperty("reason").GetString());
        var count = skipped.GetProperty("count").GetInt64();
        Assert.True(count > 0);
        Assert.Equal(before + 1, skipped.GetProperty("fromSeq").GetInt64());
        var after = await socket.ReadLinesUntilAsync(l => l.Count >= 25);
        Assert.Equal(skipped.GetProperty("toSeq").GetInt64() + 1, after[0].Seq);
        AssertContiguous(after, after[0].Seq, after[^1].Seq);
    }

    [Fact]
    public async Task Live_lines_are_batched_at_most_100_per_frame_and_flushed_within_the_interval()
    {
        await using var gw = await EnvTestKit.StartAsync();
        var e = await gw.CreateShAsync("batcher", "i=1; while [ $i -le 1000 ]; do echo b$i; i=$((i+1)); done; echo single", start: false);
        var id = e.GetProperty("id").GetString()!;
        await using var socket = await gw.ConnectEnvAsync(id, "logs", "&tail=0");
        Assert.Equal(0, (await socket.ReceiveTypeAsync("batch")).GetProperty("count").GetInt32());
        await gw.Api.PostAsync($"api/v1/environments/{id}/start", null);
        var lines = new List<SeenLine>();
        var frames = new List<int>();
        while (lines.Count < 1001)
        {
            var m = await socket.ReceiveJsonAsync();
            var before = lines.Count;
            var type = EnvTestKit.Collect(m, lines);
            if (type is "log" or "batch")
            {
                Assert.True(type == "log" || m.GetProperty("live").GetBoolean());
                frames.Add(lines.Count - before);
            }
        }
        Assert.All(frames, n => Assert.InRange(n, 1, 100));
        Assert.True(frames.Count < 1001 / 2, $"{frames.Count} frames for 1001 lines: not batched");
        AssertContiguous(lines, 1, 1001);
        Assert.Equal("single", lines[^1].Message);

        // One line alone arrives as a single 'log' message within about the batch interval.
        var sw = Stopwatch.StartNew();
        await gw.Api.PostAsync($"api/v1/environments/{id}/restart", null);
        await socket.ReadLinesUntilAsync(l => l.Any(x => x.Message == "single"));
        Assert.True(sw.Elapsed < TimeSpan.FromSeconds(2));
    }

    /// <summary>The server side of the only logs connection open so far.</summary>
    private static async Task<Server.Connections.WsConnection> ServerSideAsync(TestGateway gw)
    {
        var manager = (Server.Connections.ConnectionManager)gw.Services.GetService(typeof(Server.Connections.ConnectionManager))!;
        Server.Connections.WsConnection? found = null;
        await EnvTestKit.WaitUntilAsync(() => (found = manager.Connections.SingleOrDefault(c => c.Endpoint == "env-logs")) is not null);
        return found!;
    }

    /// <summary>The seq values of a raw log/batch frame, without building a document (the test client must keep up with a flood).</summary>
    private static void ScanSeqs(ReadOnlySpan<byte> json, List<long> seqs)
    {
        var reader = new Utf8JsonReader(json);
        while (reader.Read())
        {
            if (reader.TokenType == JsonTokenType.PropertyName && reader.ValueTextEquals("seq"u8))
            {
                reader.Read();
                seqs.Add(reader.GetInt64());
            }
        }
    }

    [Fact]
    public async Task Flood_does_not_stall_the_process_keeps_memory_bounded_and_closes_the_slow_client_with_4008()
    {
        await using var gw = await EnvTestKit.StartAsync(
            o => o.PersistQueueLines = 20_000,
            g =>
            {
                g.Limits.MaxQueuedBytes = 1024 * 1024;
                g.Limits.MaxQueuedMessages = 256;
            });
        // yes writes as fast as the pipe is drained.
        var e = await gw.CreateShAsync("flood", "exec yes 0123456789012345678901234567890123456789", start: false);
        var id = e.GetProperty("id").GetString()!;
        var manager = (EnvironmentManager)gw.Services.GetService(typeof(EnvironmentManager))!;
        var environment = (await manager.FindAsync(id))!;
        GC.Collect();
        var heapBefore = GC.GetTotalMemory(true);

        await using var slow = await gw.ConnectEnvAsync(id, "logs", "&tail=0"); // never reads
        var slowConnection = await ServerSideAsync(gw);
        await gw.Api.PostAsync($"api/v1/environments/{id}/start", null);
        var sw = Stopwatch.StartNew();
        long maxPersist = 0, maxHeap = 0;
        while (sw.Elapsed < TimeSpan.FromSeconds(2))
        {
            await Task.Delay(50);
            maxPersist = Math.Max(maxPersist, environment.PersistQueueLength);
            maxHeap = Math.Max(maxHeap, GC.GetTotalMemory(false));
        }
        var produced = environment.LastSeq;
        var rate = produced / sw.Elapsed.TotalSeconds;
        Assert.True(rate > 100_000, $"{rate:F0} lines/s: the producer was stalled");
        await EnvTestKit.WaitUntilAsync(() => slowConnection.IsClosing, TimeSpan.FromSeconds(10), "the slow client is closed");
        Assert.Equal(CloseCodes.SlowConsumer, slowConnection.CloseCode);
        Assert.Contains(await slow.WaitForCloseAsync(TimeSpan.FromSeconds(20)), new[] { CloseCodes.SlowConsumer, 1006 });
        Assert.InRange(maxPersist, 0, 20_000);
        await gw.Api.PostAsync($"api/v1/environments/{id}/stop", null);
        Assert.True(maxHeap - heapBefore < 300L * 1024 * 1024, $"managed heap grew by {(maxHeap - heapBefore) / 1024 / 1024} MB");
        Console.WriteLine($"flood: {produced} lines in {sw.Elapsed.TotalSeconds:F1} s ({rate:F0} lines/s), max persist queue {maxPersist}, " +
            $"max heap growth {(maxHeap - heapBefore) / 1024 / 1024} MB, lines not persisted {environment.DroppedLines}");
    }

    [Fact]
    public async Task With_log_backpressure_a_slow_reader_gets_every_line_and_a_stuck_one_is_closed_after_the_wait()
    {
        await using var gw = await EnvTestKit.StartAsync(
            o =>
            {
                o.LogBackpressureBytes = 512 * 1024;
                o.LogBackpressureMaxWait = TimeSpan.FromSeconds(2);
            },
            g =>
            {
                // One 64 KB pipe read of short lines becomes about 1 MB of log JSON: the bound leaves room for it.
                g.Limits.MaxQueuedBytes = 4 * 1024 * 1024;
                g.Limits.MaxQueuedMessages = 4096;
            });
        // An unpaced flood far faster than the client reads: without backpressure this client gets 4008 (see the flood tests).
        var e = await gw.CreateShAsync("burst", "seq 1 300000; exec sleep 60", start: false);
        var id = e.GetProperty("id").GetString()!;
        await using var reader = await gw.ConnectEnvAsync(id, "logs", "&tail=0");
        Assert.Equal(0, (await reader.ReceiveTypeAsync("batch")).GetProperty("count").GetInt32());
        await gw.Api.PostAsync($"api/v1/environments/{id}/start", null);
        long last = 0, frames = 0;
        var seqs = new List<long>();
        while (last < 300_000)
        {
            var frame = await reader.ReceiveAsync(TimeSpan.FromSeconds(30))
                ?? throw new InvalidOperationException($"closed: {reader.CloseStatus} {reader.Socket.CloseStatusDescription} after line {last}");
            if (++frames % 50 == 0)
                await Task.Delay(5); // a reader slower than the producer
            seqs.Clear();
            ScanSeqs(frame.Data, seqs);
            foreach (var seq in seqs)
            {
                Assert.Equal(last + 1, seq);
                last = seq;
            }
        }
        Assert.Equal(System.Net.WebSockets.WebSocketState.Open, reader.Socket.State);

        // A client that never reads holds the process back only for LogBackpressureMaxWait, then gets 4008.
        var stuckEnv = await gw.CreateShAsync("stuck", "yes $(printf '%0200d' 0) | head -n 200000; exec sleep 60", start: false);
        var stuckId = stuckEnv.GetProperty("id").GetString()!;
        await using var stuck = await gw.ConnectEnvAsync(stuckId, "logs", "&tail=0");
        await gw.Api.PostAsync($"api/v1/environments/{stuckId}/start", null);
        var manager = (EnvironmentManager)gw.Services.GetService(typeof(EnvironmentManager))!;
        var environment = (await manager.FindAsync(stuckId))!;
        await EnvTestKit.WaitUntilAsync(() => environment.LastSeq == 200_000, TimeSpan.FromSeconds(40), "the process finishes after the stuck client is dropped");
        Assert.Contains(await stuck.WaitForCloseAsync(TimeSpan.FromSeconds(20)), new[] { CloseCodes.SlowConsumer, 1006 });
    }

    [Fact]
    public async Task Under_a_flood_a_fast_client_keeps_up_in_order_while_a_slow_one_gets_4008()
    {
        await using var gw = await EnvTestKit.StartAsync(configure: null, gateway: g =>
        {
            g.Limits.MaxQueuedBytes = 4 * 1024 * 1024;
            g.Limits.MaxQueuedMessages = 4096;
        });
        // About 10,000 lines/s of 100 characters: a steady ~1 MB/s that a reading client absorbs even on a loaded machine
        // (it may fall several seconds behind before it is at risk), while a stalled one overflows its queue once its
        // TCP buffers fill.
        var e = await gw.CreateShAsync("burst", "while true; do seq -f '%0100g' 1 100; sleep 0.01; done", start: false);
        var id = e.GetProperty("id").GetString()!;
        await using var slow = await gw.ConnectEnvAsync(id, "logs", "&tail=0");
        var slowConnection = await ServerSideAsync(gw);
        await using var fast = await gw.ConnectEnvAsync(id, "logs", "&tail=0");
        Assert.Equal(0, (await fast.ReceiveTypeAsync("batch")).GetProperty("count").GetInt32());
        await gw.Api.PostAsync($"api/v1/environments/{id}/start", null);

        var manager = (EnvironmentManager)gw.Services.GetService(typeof(EnvironmentManager))!;
        var environment = (await manager.FindAsync(id))!;
        var seqs = new List<long>();
        long last = 0, received = 0, frames = 0;
        var sw = Stopwatch.StartNew();
        // Read until the server has dropped the slow client (it never reads), at least a second, at most 20 s.
        while ((environment.ConnectionCount > 1 || sw.Elapsed < TimeSpan.FromSeconds(1)) && sw.Elapsed < TimeSpan.FromSeconds(40))
        {
            var frame = await fast.ReceiveAsync(TimeSpan.FromSeconds(20))
                ?? throw new InvalidOperationException($"fast client closed: {fast.CloseStatus} {fast.Socket.CloseStatusDescription} after {received} lines in {frames} frames in {sw.ElapsedMilliseconds} ms");
            frames++;
            seqs.Clear();
            ScanSeqs(frame.Data, seqs);
            foreach (var s in seqs)
            {
                Assert.Equal(last + 1, s);
                last = s;
            }
            received += seqs.Count;
        }
        Assert.Equal(1, environment.ConnectionCount);
        // The server closed it as a slow consumer; the close frame itself may not get through a full TCP window (then the client sees 1006).
        Assert.Equal(CloseCodes.SlowConsumer, slowConnection.CloseCode);
        Assert.Contains(await slow.WaitForCloseAsync(TimeSpan.FromSeconds(20)), new[] { CloseCodes.SlowConsumer, 1006 });
        Assert.Equal(System.Net.WebSockets.WebSocketState.Open, fast.Socket.State);
        Assert.True(received > 5_000, $"fast client got only {received} lines");
        Console.WriteLine($"fast client: {received} lines in {frames} frames in {sw.Elapsed.TotalSeconds:F1} s, in order, no gap; slow client closed with 4008");
        await gw.Api.PostAsync($"api/v1/environments/{id}/stop", null);
    }
}
