using System.Globalization;
using System.Net.WebSockets;
using System.Runtime.InteropServices;
using System.Text;
using System.Text.Json;
using Switchboard.Protocol;
using Switchboard.Protocol.Environments;
using Switchboard.Server.Connections;

namespace Switchboard.Server.Environments;

/// <summary>
/// An interactive shell on a real PTY for one connection (process driver): posix_openpt + posix_spawn with the
/// slave as controlling terminal, in the environment's working directory and variables. A dedicated thread reads
/// the master; it stops reading while the client's outbound queue is above the flow-control threshold, so a slow
/// client pauses the shell instead of growing memory. Closing the socket ends the shell (SIGHUP, then SIGKILL).
/// </summary>
internal sealed class TerminalSession : IDisposable
{
    private readonly WsConnection _connection;
    private readonly EnvironmentOptions _options;
    private readonly TimeProvider _time;
    private readonly int _master;
    private readonly NativeProcess _process;
    private readonly Thread _reader;
    private readonly CancellationTokenSource _stop = new();
    private readonly Lock _masterGate = new(); // the descriptor is never used after close (its number could be reused)
    private bool _masterClosed;
    private long _lastActivity;
    private int _disposed;

    private TerminalSession(WsConnection connection, EnvironmentOptions options, TimeProvider time, int master, NativeProcess process)
    {
        _connection = connection;
        _options = options;
        _time = time;
        _master = master;
        _process = process;
        _lastActivity = time.GetTimestamp();
        _reader = new Thread(ReadLoop) { IsBackground = true, Name = "pty " + process.Pid.ToString(CultureInfo.InvariantCulture) };
    }

    public int Pid => _process.Pid;

    /// <summary>The command a terminal runs: <paramref name="requested"/> when allowed, else the first allowed command that exists.</summary>
    public static string? ResolveCommand(EnvironmentOptions options, string? requested)
    {
        if (!string.IsNullOrEmpty(requested))
            return options.TerminalCommands.Contains(requested, StringComparer.Ordinal) ? requested : null;
        return options.TerminalCommands.FirstOrDefault(File.Exists) ?? options.TerminalCommands.FirstOrDefault();
    }

    public static unsafe TerminalSession Start(WsConnection connection, EnvironmentRecord record, string command, EnvironmentOptions options, TimeProvider time,
        ushort cols = 80, ushort rows = 24)
    {
        var master = Libc.posix_openpt(Libc.O_RDWR | Libc.O_NOCTTY | Libc.O_CLOEXEC);
        if (master < 0)
            throw new IOException("posix_openpt failed: " + Libc.Error(Marshal.GetLastPInvokeError()));
        try
        {
            if (Libc.grantpt(master) != 0 || Libc.unlockpt(master) != 0)
                throw new IOException("grantpt/unlockpt failed: " + Libc.Error(Marshal.GetLastPInvokeError()));
            var name = stackalloc byte[256];
            var rc = Libc.ptsname_r(master, name, 256);
            if (rc != 0)
                throw new IOException("ptsname_r failed: " + Libc.Error(rc));
            var slave = Marshal.PtrToStringUTF8((IntPtr)name)!;
            var size = new Libc.WinSize { Cols = cols, Rows = rows };
            Libc.ioctl(master, Libc.TIOCSWINSZ, ref size);
            var cwd = !string.IsNullOrEmpty(record.Cwd) && Directory.Exists(record.Cwd) ? record.Cwd : null;
            var process = NativeProcess.Spawn(command, [command], ProcessWorkload.Environment(record.Env, "xterm-256color"), cwd, new ChildIo.Terminal(slave));
            return new TerminalSession(connection, options, time, master, process);
        }
        catch
        {
            Libc.close(master);
            throw;
        }
    }

    /// <summary>Starts relaying output (after the caller queued <c>ready</c>, so it comes first).</summary>
    public void Begin()
    {
        _reader.Start();
        _ = WatchIdleAsync();
    }

    public ValueTask HandleAsync(WsConnection _, ReadOnlyMemory<byte> payload, WebSocketMessageType type, CancellationToken cancellationToken)
    {
        if (type != WebSocketMessageType.Text)
            throw new ProtocolViolationException("terminal messages are JSON text frames");
        var message = JsonSerializer.Deserialize(payload.Span, EnvironmentsJsonContext.Default.TerminalMessage)
            ?? throw new ProtocolViolationException("message must be a JSON object");
        switch (message.Type)
        {
            case "input":
                if (message.Data is null)
                    throw new ProtocolViolationException("input needs 'data'");
                Touch();
                bool written;
                lock (_masterGate)
                    written = !_masterClosed && Libc.WriteAll(_master, Encoding.UTF8.GetBytes(message.Data));
                if (!written)
                    _connection.Close(CloseCodes.Normal, "terminal closed");
                break;
            case "resize":
                if (message.Cols is not (>= 1 and <= 1000) || message.Rows is not (>= 1 and <= 1000))
                    throw new ProtocolViolationException("resize needs cols and rows between 1 and 1000");
                var size = new Libc.WinSize { Cols = (ushort)message.Cols.Value, Rows = (ushort)message.Rows.Value };
                lock (_masterGate)
                {
                    if (!_masterClosed)
                        Libc.ioctl(_master, Libc.TIOCSWINSZ, ref size); // the kernel sends SIGWINCH to the foreground group
                }
                break;
            case "ping":
            case "pong":
                break;
            default:
                throw new ProtocolViolationException($"unknown message type '{message.Type}' (input, resize)");
        }
        return ValueTask.CompletedTask;
    }

    private void Touch() => Volatile.Write(ref _lastActivity, _time.GetTimestamp());

    private void ReadLoop()
    {
        var buffer = new byte[16 * 1024];
        var chars = new char[16 * 1024 + 4];
        var decoder = Encoding.UTF8.GetDecoder();
        try
        {
            while (!_stop.IsCancellationRequested)
            {
                // Flow control: do not read what the client cannot take; the PTY fills and the shell waits.
                while (_connection.QueuedBytes > _options.TerminalFlowControlBytes && !_connection.IsClosing)
                    Thread.Sleep(2);
                if (_connection.IsClosing)
                    break;
                var n = Libc.Read(_master, buffer);
                if (n <= 0)
                    break; // EIO: every process holding the slave is gone
                Touch();
                var count = decoder.GetChars(buffer, 0, n, chars, 0, flush: false);
                if (count > 0)
                    _connection.TrySendJson(new TerminalMessage("output", new string(chars, 0, count)), EnvironmentsJsonContext.Default.TerminalMessage);
            }
            if (!_connection.IsClosing)
            {
                // The shell ended by itself: report its exit code, then close normally.
                if (_process.Exited.Wait(TimeSpan.FromSeconds(5)))
                    _connection.TrySendJson(new TerminalMessage("exit", Code: _process.Exited.Result), EnvironmentsJsonContext.Default.TerminalMessage);
                _connection.Close(CloseCodes.Normal, "shell exited");
            }
        }
        finally
        {
            lock (_masterGate)
            {
                _masterClosed = true;
                Libc.close(_master);
            }
        }
    }

    private async Task WatchIdleAsync()
    {
        var token = _stop.Token;
        var timeout = _options.TerminalIdleTimeout;
        var step = TimeSpan.FromMilliseconds(Math.Clamp(timeout.TotalMilliseconds / 4, 10, 1000));
        try
        {
            while (!token.IsCancellationRequested)
            {
                var exited = await Task.WhenAny(_process.Exited, Task.Delay(step, _time, token)) == _process.Exited;
                if (exited)
                {
                    // The shell is gone: whatever it left in its session goes too, so the PTY reader sees EIO.
                    await Task.Delay(TimeSpan.FromMilliseconds(100), _time, token);
                    _process.SignalSession(Libc.SIGKILL);
                    return;
                }
                if (_time.GetElapsedTime(Volatile.Read(ref _lastActivity)) > timeout)
                {
                    _connection.Close(CloseCodes.Normal, "terminal idle timeout");
                    Terminate();
                    return;
                }
            }
        }
        catch (OperationCanceledException)
        {
        }
    }

    private void Terminate() => _ = _process.TerminateAsync(Libc.SIGHUP, TimeSpan.FromSeconds(1));

    /// <summary>The connection ended: hang up the shell (SIGHUP, then SIGKILL after 1 s).</summary>
    public void Dispose()
    {
        if (Interlocked.Exchange(ref _disposed, 1) != 0)
            return;
        _stop.Cancel();
        Terminate();
    }
}
