using System.Buffers;
using System.Net.WebSockets;
using System.Runtime.InteropServices;
using System.Text.Json;
using Switchboard.Protocol;
using Switchboard.Protocol.Environments;
using Switchboard.Server.Connections;

namespace Switchboard.Server.Environments;

/// <summary>
/// The logs protocol on one connection: history on connect, then live lines batched (every
/// <see cref="EnvironmentOptions.BatchInterval"/> or at <see cref="EnvironmentOptions.BatchSize"/> lines), with
/// pause/resume/filter controls. Its pending buffer is bounded: a client that cannot keep up is closed with 4008
/// (here or by the connection's own bounded queue) and resumes with <c>since</c>.
/// </summary>
internal sealed class LogSession : ILogSubscriber, IDisposable
{
    private readonly WsConnection _connection;
    private readonly ManagedEnvironment _environment;
    private readonly EnvironmentOptions _options;
    private readonly Lock _gate = new();
    private readonly SemaphoreSlim _signal = new(0, int.MaxValue); // an extra wake-up is harmless
    private readonly CancellationTokenSource _stop = new();
    private readonly int _maxPending;
    private List<LogRecord> _pending = [];
    private readonly Queue<LogRecord> _paused = new();
    private long _skipped;
    private long _skippedFrom;
    private long _skippedTo;
    private bool _isPaused;
    private byte _filter; // 0 all, 1 stdout, 2 stderr
    private int _signaled;
    private bool _live;
    private Task _flusher = Task.CompletedTask;

    public LogSession(WsConnection connection, ManagedEnvironment environment, EnvironmentOptions options, byte filter)
    {
        _connection = connection;
        _environment = environment;
        _options = options;
        _filter = filter;
        _maxPending = options.MaxPendingLines;
    }

    public static string StreamName(byte stream) => stream == 2 ? "stderr" : "stdout";

    public static bool TryParseFilter(string? value, out byte filter)
    {
        filter = value switch
        {
            null or "" or "all" => 0,
            "stdout" => 1,
            "stderr" => 2,
            _ => 255,
        };
        return filter != 255;
    }

    /// <summary>Registers for live lines, sends the history (tail or since), then starts the flush loop.</summary>
    public async Task StartAsync(IEnvironmentStore store, long? since, int tail, CancellationToken cancellationToken)
    {
        var snapshot = _environment.SubscribeLogs(this, upTo => since is { } s ? Math.Max(s, upTo - _options.MaxReplay) : Math.Max(0, upTo - tail));
        var from = since is { } s0 ? s0 : Math.Max(0, snapshot.UpTo - tail);
        var history = new List<LogRecord>();
        var replayFrom = Math.Max(from, snapshot.UpTo - _options.MaxReplay);
        if (replayFrom + 1 < snapshot.RingFirstSeq && replayFrom < snapshot.UpTo)
        {
            var storeUpTo = Math.Min(snapshot.RingFirstSeq - 1, snapshot.UpTo);
            history.AddRange(await store.ReadLogsAsync(_environment.Id, replayFrom, storeUpTo, (int)(storeUpTo - replayFrom), cancellationToken));
        }
        history.AddRange(snapshot.FromRing);

        // Lines the client asked for but that are no longer retained (or were never persisted) are reported, not hidden.
        var expected = replayFrom + 1;
        var filtered = new List<LogRecord>(history.Count);
        var frames = new List<ReadOnlyMemory<byte>>();
        if (since is not null && replayFrom > from)
            frames.Add(Skipped("retention", replayFrom - from, from + 1, replayFrom));
        foreach (var r in history)
        {
            if (r.Seq < expected)
                continue; // duplicate across store and ring
            if (r.Seq > expected && since is not null)
            {
                if (filtered.Count > 0)
                {
                    frames.Add(Batch(filtered, live: false));
                    filtered.Clear();
                }
                frames.Add(Skipped("retention", r.Seq - expected, expected, r.Seq - 1));
            }
            expected = r.Seq + 1;
            if (Matches(r))
                filtered.Add(r);
        }
        if (since is not null && expected <= snapshot.UpTo && snapshot.UpTo > replayFrom)
            frames.Add(Skipped("retention", snapshot.UpTo - expected + 1, expected, snapshot.UpTo));
        // Always one history batch, possibly empty, so clients know where live lines start.
        frames.Add(Batch(filtered, live: false, lastSeq: snapshot.UpTo));
        foreach (var f in frames)
            _connection.TrySend(OutboundFrame.Text(f));
        lock (_gate)
            _live = true; // from now on full batches go out as soon as they are complete, after the history
        _flusher = FlushLoopAsync();
    }

    private bool Matches(LogRecord r) => _filter == 0 || _filter == r.Stream;

    public long Backlog => _connection.QueuedBytes;

    public bool IsClosing => _connection.IsClosing;

    public void CloseAsSlow()
    {
        _connection.Close(CloseCodes.SlowConsumer, "slow consumer: reconnect with since", drain: false);
        try
        {
            _stop.Cancel();
        }
        catch (ObjectDisposedException)
        {
            // The session already ended.
        }
    }

    public void Offer(LogRecord[] lines)
    {
        lock (_gate)
        {
            foreach (var r in lines)
            {
                if (_filter != 0 && _filter != r.Stream)
                    continue;
                if (_isPaused)
                {
                    _paused.Enqueue(r);
                    if (_paused.Count > _options.PauseBufferLines)
                    {
                        var old = _paused.Dequeue();
                        if (_skipped == 0)
                            _skippedFrom = old.Seq;
                        _skipped++;
                        _skippedTo = old.Seq;
                    }
                    continue;
                }
                _pending.Add(r);
            }
            // A full batch goes out at once, from the reader's thread (no wake-up of the flush loop in between);
            // the rest waits for the next line or the flush interval.
            if (_live && _pending.Count >= _options.BatchSize)
                SendPending(all: false);
            if (_pending.Count > _maxPending)
            {
                _pending = [];
                _connection.Close(CloseCodes.SlowConsumer, "slow consumer: reconnect with since", drain: false);
                _stop.Cancel();
                return;
            }
        }
    }

    /// <summary>
    /// Sends the pending lines in frames of at most <see cref="EnvironmentOptions.BatchSize"/> (a lone line as
    /// <c>log</c>); with <paramref name="all"/> false only complete batches. Called under the gate, so frames from the
    /// reader's thread and from the flush loop never overtake each other.
    /// </summary>
    private void SendPending(bool all)
    {
        var size = _options.BatchSize;
        var count = all ? _pending.Count : _pending.Count - _pending.Count % size;
        if (count == 0)
            return;
        var lines = _pending;
        for (var i = 0; i < count; i += size)
        {
            var n = Math.Min(size, count - i);
            var payload = n == 1 ? Line(lines[i]) : Batch(lines.GetRange(i, n), live: true);
            if (!_connection.TrySend(OutboundFrame.Text(payload)))
            {
                _pending = [];
                return;
            }
        }
        if (count == lines.Count)
            _pending = new List<LogRecord>(Math.Min(lines.Count, size * 4));
        else
            lines.RemoveRange(0, count);
    }

    public ValueTask HandleAsync(WsConnection _, ReadOnlyMemory<byte> payload, WebSocketMessageType type, CancellationToken cancellationToken)
    {
        if (type != WebSocketMessageType.Text)
            throw new ProtocolViolationException("log controls are JSON text frames");
        var control = JsonSerializer.Deserialize(payload.Span, EnvironmentsJsonContext.Default.LogControl)
            ?? throw new ProtocolViolationException("control must be a JSON object");
        List<ReadOnlyMemory<byte>>? frames = null;
        lock (_gate)
        {
            switch (control.Action)
            {
                case "pause":
                    // Lines offered before the pause go out before its ack, so the ack marks where the pause begins.
                    if (_live && !_isPaused)
                        SendPending(all: true);
                    _isPaused = true;
                    break;
                case "resume":
                    if (_isPaused)
                    {
                        _isPaused = false;
                        frames = [];
                        if (_skipped > 0)
                            frames.Add(Skipped("paused", _skipped, _skippedFrom, _skippedTo));
                        _skipped = 0;
                        // Lines kept while paused go out after any older ones still pending, before anything newer.
                        _pending.AddRange(_paused);
                        _paused.Clear();
                    }
                    break;
                case "filter":
                    if (!TryParseFilter(control.Stream, out var f))
                        throw new ProtocolViolationException("filter stream must be 'stdout', 'stderr' or 'all'");
                    _filter = f;
                    break;
                case "ping":
                case "pong":
                    return ValueTask.CompletedTask;
                default:
                    throw new ProtocolViolationException($"unknown action '{control.Action}' (pause, resume, filter)");
            }
            _connection.TrySendJson(new LogControlAck("control", control.Action, _filter == 0 ? "all" : StreamName(_filter), _isPaused),
                EnvironmentsJsonContext.Default.LogControlAck);
            if (frames is not null)
            {
                // Sent under the gate so they precede the lines flushed next.
                foreach (var frame in frames)
                    _connection.TrySend(OutboundFrame.Text(frame));
            }
        }
        if (frames is not null && Interlocked.Exchange(ref _signaled, 1) == 0)
            _signal.Release();
        return ValueTask.CompletedTask;
    }

    private async Task FlushLoopAsync()
    {
        var token = _stop.Token;
        try
        {
            while (!token.IsCancellationRequested && !_connection.IsClosing)
            {
                await _signal.WaitAsync(_options.BatchInterval, token);
                Volatile.Write(ref _signaled, 0);
                lock (_gate)
                    SendPending(all: true);
            }
        }
        catch (OperationCanceledException)
        {
        }
    }

    // ---------- serialization (hand-written: this is the hot path) ----------

    private static readonly JsonWriterOptions WriterOptions = new() { SkipValidation = true };

    private static ReadOnlyMemory<byte> Line(LogRecord r)
    {
        if (!r.Json.IsEmpty)
            return r.Json; // encoded once by the reader, shared by every subscriber
        var buffer = new ArrayBufferWriter<byte>(r.Message.Length + 96);
        using (var w = new Utf8JsonWriter(buffer, WriterOptions))
            WriteLine(w, r);
        return buffer.WrittenMemory;
    }

    private static ReadOnlyMemory<byte> Batch(IReadOnlyList<LogRecord> lines, bool live, long? lastSeq = null)
    {
        var size = 96;
        foreach (var r in lines)
            size += r.Json.IsEmpty ? r.Message.Length * 2 + 128 : r.Json.Length + 1;
        var buffer = new ArrayBufferWriter<byte>(size);
        using (var w = new Utf8JsonWriter(buffer, WriterOptions))
        {
            w.WriteStartObject();
            w.WriteString("type"u8, "batch"u8);
            w.WriteBoolean("live"u8, live);
            w.WriteNumber("count"u8, lines.Count);
            w.WriteNumber("lastSeq"u8, lastSeq ?? (lines.Count > 0 ? lines[^1].Seq : 0));
            w.WriteStartArray("logs"u8);
            var i = 0;
            while (i < lines.Count && lines[i].Json.IsEmpty)
                WriteLine(w, lines[i++]);
            if (i < lines.Count)
            {
                // Pre-encoded lines: copy runs that are contiguous in their read's buffer (already comma-separated) at once.
                w.Flush();
                var any = i > 0;
                while (i < lines.Count)
                {
                    var run = lines[i].Json.IsEmpty ? Line(lines[i]) : lines[i].Json;
                    var j = i + 1;
                    while (j < lines.Count && Follows(run, lines[j].Json))
                        run = Extend(run, lines[j++].Json);
                    if (any)
                        Put(buffer, ","u8);
                    Put(buffer, run.Span);
                    any = true;
                    i = j;
                }
                Put(buffer, "]}"u8);
                return buffer.WrittenMemory;
            }
            w.WriteEndArray();
            w.WriteEndObject();
        }
        return buffer.WrittenMemory;
    }

    /// <summary>True when <paramref name="next"/> starts right after <paramref name="run"/> and a comma in the same buffer.</summary>
    private static bool Follows(ReadOnlyMemory<byte> run, ReadOnlyMemory<byte> next) =>
        !next.IsEmpty
        && MemoryMarshal.TryGetArray(run, out var a) && MemoryMarshal.TryGetArray(next, out var b)
        && ReferenceEquals(a.Array, b.Array) && b.Offset == a.Offset + a.Count + 1;

    private static ReadOnlyMemory<byte> Extend(ReadOnlyMemory<byte> run, ReadOnlyMemory<byte> next)
    {
        MemoryMarshal.TryGetArray(run, out var a);
        MemoryMarshal.TryGetArray(next, out var b);
        return new ReadOnlyMemory<byte>(a.Array, a.Offset, b.Offset + b.Count - a.Offset);
    }

    private static void Put(ArrayBufferWriter<byte> buffer, ReadOnlySpan<byte> bytes)
    {
        bytes.CopyTo(buffer.GetSpan(bytes.Length));
        buffer.Advance(bytes.Length);
    }

    private static void WriteLine(Utf8JsonWriter w, LogRecord r)
    {
        w.WriteStartObject();
        w.WriteString("type"u8, "log"u8);
        w.WriteNumber("seq"u8, r.Seq);
        w.WriteString("timestamp"u8, r.Timestamp);
        w.WriteString("stream"u8, r.Stream == 2 ? "stderr"u8 : "stdout"u8);
        w.WriteString("message"u8, r.Message);
        w.WriteEndObject();
    }

    private static ReadOnlyMemory<byte> Skipped(string reason, long count, long from, long to) =>
        JsonSerializer.SerializeToUtf8Bytes(new LogSkipped("skipped", reason, count, from, to), EnvironmentsJsonContext.Default.LogSkipped);

    public void Dispose()
    {
        _environment.UnsubscribeLogs(this);
        _stop.Cancel();
        _stop.Dispose();
    }
}
