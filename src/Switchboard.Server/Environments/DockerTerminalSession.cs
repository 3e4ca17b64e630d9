using System.Net.WebSockets;
using System.Security.Cryptography;
using System.Text;
using System.Text.Json;
using Switchboard.Protocol;
using Switchboard.Protocol.Environments;
using Switchboard.Server.Connections;

namespace Switchboard.Server.Environments;

/// <summary>
/// An interactive shell in a container (docker driver), like <c>docker exec -it</c>: an exec with a TTY whose hijacked
/// connection carries the terminal both ways; resize through the exec resize endpoint; the exit code from exec inspect.
/// Flow control as for the process driver: the connection is not read while the client is behind. The engine does
/// not end an exec when its connection closes, so every terminal carries a marker variable and closing the socket
/// runs a small script in the container that sends SIGHUP (then SIGKILL after 1 s) to every process carrying it.
/// </summary>
internal sealed class DockerTerminalSession : IDisposable
{
    /// <summary>Variable marking the processes of one terminal inside the container.</summary>
    public const string MarkerVariable = "SWITCHBOARD_TERMINAL";

    // Sends $2 to every process whose environment holds MARKER=$1; prints nothing, never fails.
    private const string HangUpScript =
        "m=" + MarkerVariable + "=$1; hit() { for d in /proc/[0-9]*; do tr '\\0' '\\n' < $d/environ 2>/dev/null | grep -qx \"$m\" && echo ${d#/proc/}; done; }; " +
        "p=$(hit); [ -z \"$p\" ] && exit 0; kill -HUP $p 2>/dev/null; sleep 1; p=$(hit); [ -n \"$p\" ] && kill -KILL $p 2>/dev/null; exit 0";

    private readonly WsConnection _connection;
    private readonly DockerEngine _engine;
    private readonly string _containerId;
    private readonly string _execId;
    private readonly string _marker;
    private readonly Stream _stream;
    private readonly EnvironmentOptions _options;
    private readonly TimeProvider _time;
    private readonly CancellationTokenSource _stop = new();
    private readonly SemaphoreSlim _writeGate = new(1, 1);
    private long _lastActivity;
    private int _disposed;

    private DockerTerminalSession(WsConnection connection, DockerEngine engine, string containerId, string execId, string marker, Stream stream,
        EnvironmentOptions options, TimeProvider time)
    {
        _connection = connection;
        _engine = engine;
        _containerId = containerId;
        _execId = execId;
        _marker = marker;
        _stream = stream;
        _options = options;
        _time = time;
        _lastActivity = time.GetTimestamp();
    }

    /// <summary>The command to run: <paramref name="requested"/> when allowed, else the first allowed command present in the container.</summary>
    public static async Task<string?> ResolveCommandAsync(DockerEngine engine, string containerId, EnvironmentOptions options, string? requested, CancellationToken cancellationToken)
    {
        if (!string.IsNullOrEmpty(requested))
            return options.TerminalCommands.Contains(requested, StringComparer.Ordinal) ? requested : null;
        foreach (var command in options.TerminalCommands)
        {
            try
            {
                if (await engine.PathExistsAsync(containerId, command, cancellationToken))
                    return command;
            }
            catch (DockerException)
            {
                break;
            }
        }
        return options.TerminalCommands.LastOrDefault();
    }

    public static async Task<DockerTerminalSession> StartAsync(WsConnection connection, DockerEngine engine, string containerId, string command,
        EnvironmentOptions options, TimeProvider time, ushort cols, ushort rows, CancellationToken cancellationToken)
    {
        var marker = Convert.ToHexStringLower(RandomNumberGenerator.GetBytes(8));
        var execId = await engine.CreateExecAsync(containerId,
            new ExecCreateRequest([command], ["TERM=xterm-256color", MarkerVariable + "=" + marker], Tty: true, AttachStdin: true, AttachStdout: true, AttachStderr: true),
            cancellationToken);
        var stream = await engine.StartExecAttachedAsync(execId, cancellationToken);
        try
        {
            await engine.ResizeExecAsync(execId, rows, cols, cancellationToken);
        }
        catch (DockerException)
        {
            // The shell may already have ended; the reader reports that.
        }
        return new DockerTerminalSession(connection, engine, containerId, execId, marker, stream, options, time);
    }

    /// <summary>Starts relaying output (after the caller queued <c>ready</c>, so it comes first).</summary>
    public void Begin()
    {
        _ = Task.Run(ReadLoopAsync);
        _ = WatchIdleAsync();
    }

    public async ValueTask HandleAsync(WsConnection _, ReadOnlyMemory<byte> payload, WebSocketMessageType type, CancellationToken cancellationToken)
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
                await _writeGate.WaitAsync(cancellationToken);
                try
                {
                    await _stream.WriteAsync(Encoding.UTF8.GetBytes(message.Data), cancellationToken);
                }
                catch (Exception ex) when (ex is IOException or ObjectDisposedException)
                {
                    _connection.Close(CloseCodes.Normal, "terminal closed");
                }
                finally
                {
                    _writeGate.Release();
                }
                break;
            case "resize":
                if (message.Cols is not (>= 1 and <= 1000) || message.Rows is not (>= 1 and <= 1000))
                    throw new ProtocolViolationException("resize needs cols and rows between 1 and 1000");
                try
                {
                    await _engine.ResizeExecAsync(_execId, message.Rows.Value, message.Cols.Value, cancellationToken);
                }
                catch (DockerException)
                {
                    // The shell ended meanwhile.
                }
                break;
            case "ping":
            case "pong":
                break;
            default:
                throw new ProtocolViolationException($"unknown message type '{message.Type}' (input, resize)");
        }
    }

    private void Touch() => Volatile.Write(ref _lastActivity, _time.GetTimestamp());

    private async Task ReadLoopAsync()
    {
        var buffer = new byte[16 * 1024];
        var chars = new char[16 * 1024 + 4];
        var decoder = Encoding.UTF8.GetDecoder();
        var token = _stop.Token;
        try
        {
            while (!token.IsCancellationRequested)
            {
                // Flow control: do not read what the client cannot take; the engine's buffers fill and the shell waits.
                while (_connection.QueuedBytes > _options.TerminalFlowControlBytes && !_connection.IsClosing)
                    await Task.Delay(2, token);
                if (_connection.IsClosing)
                    break;
                var n = await _stream.ReadAsync(buffer, token);
                if (n <= 0)
                    break;
                Touch();
                var count = decoder.GetChars(buffer, 0, n, chars, 0, flush: false);
                if (count > 0)
                    _connection.TrySendJson(new TerminalMessage("output", new string(chars, 0, count)), EnvironmentsJsonContext.Default.TerminalMessage);
            }
        }
        catch (Exception ex) when (ex is IOException or ObjectDisposedException or OperationCanceledException)
        {
        }
        if (!_connection.IsClosing && !token.IsCancellationRequested)
        {
            // The shell ended by itself: report its exit code, then close normally.
            if (await ExitCodeAsync() is { } code)
                _connection.TrySendJson(new TerminalMessage("exit", Code: code), EnvironmentsJsonContext.Default.TerminalMessage);
            _connection.Close(CloseCodes.Normal, "shell exited");
        }
    }

    /// <summary>The exec's exit code; the engine may take a moment to record it after the stream ended.</summary>
    private async Task<int?> ExitCodeAsync()
    {
        for (var i = 0; i < 100; i++)
        {
            try
            {
                var inspect = await _engine.InspectExecAsync(_execId, CancellationToken.None);
                if (!inspect.Running && inspect.ExitCode is { } code)
                    return code;
            }
            catch (DockerException)
            {
                return null;
            }
            await Task.Delay(50);
        }
        return null;
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
                await Task.Delay(step, _time, token);
                if (_time.GetElapsedTime(Volatile.Read(ref _lastActivity)) > timeout)
                {
                    _connection.Close(CloseCodes.Normal, "terminal idle timeout");
                    Dispose();
                    return;
                }
            }
        }
        catch (OperationCanceledException)
        {
        }
    }

    /// <summary>Hangs up every process of this terminal in the container (SIGHUP, then SIGKILL after 1 s).</summary>
    private async Task HangUpAsync()
    {
        try
        {
            var exec = await _engine.CreateExecAsync(_containerId,
                new ExecCreateRequest(["/bin/sh", "-c", HangUpScript, "sh", _marker], null, Tty: false, AttachStdin: false, AttachStdout: false, AttachStderr: false),
                CancellationToken.None);
            await _engine.StartExecDetachedAsync(exec, CancellationToken.None);
        }
        catch (Exception ex) when (ex is DockerException or OperationCanceledException)
        {
            // The container is gone or stopped: so are the terminal's processes.
        }
    }

    /// <summary>The connection ended: close the exec connection and hang up the shell and what it started.</summary>
    public void Dispose()
    {
        if (Interlocked.Exchange(ref _disposed, 1) != 0)
            return;
        _stop.Cancel();
        _stream.Dispose();
        _ = HangUpAsync();
    }
}
