using System.Diagnostics;
using System.Net.WebSockets;
using System.Runtime.InteropServices;
using System.Text;
using System.Text.Json;

namespace Switchboard.Bench.Environments;

/// <summary>
/// Scenario (c): keystroke echo. Both variants echo through the kernel's line discipline (canonical mode, ECHO on):
/// through the gateway the terminal's shell is replaced by <c>cat</c>; the bare PTY is a posix_openpt pair opened in
/// this process. One printable character is sent, and the time until it comes back is recorded. Every 64 keystrokes
/// a carriage return (not timed) ends the line so the line buffer never fills.
/// </summary>
internal static partial class Terminal
{
    private const int LineLength = 64;

    public static async Task<Percentiles> GatewayAsync(Uri uri, string apiKey, int warmUp, int keystrokes, CancellationToken cancellationToken)
    {
        using var socket = new ClientWebSocket();
        socket.Options.SetRequestHeader("Authorization", "Bearer " + apiKey);
        using var limit = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
        limit.CancelAfter(TimeSpan.FromSeconds(120));
        var token = limit.Token;
        await socket.ConnectAsync(uri, token);
        var buffer = new byte[64 * 1024];
        var output = new StringBuilder();
        while (await ReceiveAsync(socket, buffer, output, token) != "ready")
        {
        }
        // Replace the shell by cat, then send a marker line until it comes back twice: the kernel's echo, then cat's
        // copy (a marker typed while the shell's line editor still had echo off comes back only once).
        await InputAsync(socket, "exec cat\r", token);
        output.Clear();
        while (!output.ToString().Contains("READY\r\nREADY\r\n", StringComparison.Ordinal))
        {
            var seen = Count(output.ToString(), "READY");
            await InputAsync(socket, "READY\r", token);
            while (Count(output.ToString(), "READY") <= seen)
                await ReceiveAsync(socket, buffer, output, token);
        }
        await Task.Delay(200, token);
        var samples = new long[keystrokes];
        for (var k = 0; k < warmUp + keystrokes; k++)
        {
            if (k > 0 && k % LineLength == 0)
            {
                // End the line: the echo of CR is \r\n, then cat prints the line: two newlines in all.
                output.Clear();
                await InputAsync(socket, "\r", token);
                while (output.ToString().Count(c => c == '\n') < 2)
                    await ReceiveAsync(socket, buffer, output, token);
            }
            var ch = (char)('a' + k % 26);
            output.Clear();
            var t0 = Stopwatch.GetTimestamp();
            await InputAsync(socket, ch.ToString(), token);
            while (output.ToString().IndexOf(ch, StringComparison.Ordinal) < 0)
                await ReceiveAsync(socket, buffer, output, token);
            var elapsed = Stopwatch.GetElapsedTime(t0);
            if (k >= warmUp)
                samples[k - warmUp] = (long)(elapsed.TotalMicroseconds);
        }
        await socket.CloseAsync(WebSocketCloseStatus.NormalClosure, "done", CancellationToken.None);
        return Percentiles.Of(samples);
    }

    private static int Count(string text, string what)
    {
        var n = 0;
        for (var i = text.IndexOf(what, StringComparison.Ordinal); i >= 0; i = text.IndexOf(what, i + 1, StringComparison.Ordinal))
            n++;
        return n;
    }

    private static Task InputAsync(ClientWebSocket socket, string data, CancellationToken token) =>
        socket.SendAsync(JsonSerializer.SerializeToUtf8Bytes(new Input("input", data), BenchJsonContext.Default.Input), WebSocketMessageType.Text, true, token);

    /// <summary>Receives one message; appends <c>output</c> data to <paramref name="output"/>; returns the type.</summary>
    private static async Task<string?> ReceiveAsync(ClientWebSocket socket, byte[] buffer, StringBuilder output, CancellationToken token)
    {
        var length = 0;
        ValueWebSocketReceiveResult r;
        do
        {
            r = await socket.ReceiveAsync(buffer.AsMemory(length), token);
            if (r.MessageType == WebSocketMessageType.Close)
                throw new WebSocketException($"terminal closed: {(int?)socket.CloseStatus} {socket.CloseStatusDescription}");
            length += r.Count;
        }
        while (!r.EndOfMessage);
        var message = JsonSerializer.Deserialize(buffer.AsSpan(0, length), BenchJsonContext.Default.Output);
        if (message?.Type == "output")
            output.Append(message.Data);
        else if (message?.Type == "ping")
            await socket.SendAsync("""{"type":"pong"}"""u8.ToArray(), WebSocketMessageType.Text, true, token);
        return message?.Type;
    }

    /// <summary>The same keystrokes on a PTY pair opened in this process: write to the master, read the echo from it.</summary>
    public static Percentiles Bare(int warmUp, int keystrokes)
    {
        var master = posix_openpt(O_RDWR | O_NOCTTY);
        if (master < 0 || grantpt(master) != 0 || unlockpt(master) != 0)
            throw new IOException("posix_openpt/grantpt/unlockpt failed: " + Marshal.GetLastPInvokeError());
        var name = new byte[256];
        if (ptsname_r(master, name, (nuint)name.Length) != 0)
            throw new IOException("ptsname_r failed");
        var slavePath = Encoding.UTF8.GetString(name, 0, Array.IndexOf(name, (byte)0));
        var slave = open(slavePath, O_RDWR | O_NOCTTY);
        if (slave < 0)
            throw new IOException("cannot open " + slavePath);
        try
        {
            var buffer = new byte[4096];
            var key = new byte[1];
            var samples = new long[keystrokes];
            for (var k = 0; k < warmUp + keystrokes; k++)
            {
                if (k > 0 && k % LineLength == 0)
                {
                    key[0] = (byte)'\r';
                    write(master, key, 1);
                    ReadUntil(master, buffer, (byte)'\n');
                    read(slave, buffer, (nuint)buffer.Length); // the reader of the line, as cat would be
                }
                key[0] = (byte)('a' + k % 26);
                var t0 = Stopwatch.GetTimestamp();
                write(master, key, 1);
                ReadUntil(master, buffer, key[0]);
                var elapsed = Stopwatch.GetElapsedTime(t0);
                if (k >= warmUp)
                    samples[k - warmUp] = (long)elapsed.TotalMicroseconds;
            }
            return Percentiles.Of(samples);
        }
        finally
        {
            close(slave);
            close(master);
        }
    }

    private static void ReadUntil(int fd, byte[] buffer, byte wanted)
    {
        while (true)
        {
            var n = (int)read(fd, buffer, (nuint)buffer.Length);
            if (n <= 0)
                throw new IOException("pty read failed");
            if (Array.IndexOf(buffer, wanted, 0, n) >= 0)
                return;
        }
    }

    private const int O_RDWR = 2;
    private const int O_NOCTTY = 0x100;

    [LibraryImport("libc", SetLastError = true)]
    private static partial int posix_openpt(int flags);

    [LibraryImport("libc", SetLastError = true)]
    private static partial int grantpt(int fd);

    [LibraryImport("libc", SetLastError = true)]
    private static partial int unlockpt(int fd);

    [LibraryImport("libc")]
    private static partial int ptsname_r(int fd, byte[] buffer, nuint length);

    [LibraryImport("libc", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    private static partial int open(string path, int flags);

    [LibraryImport("libc", SetLastError = true)]
    private static partial nint read(int fd, byte[] buffer, nuint count);

    [LibraryImport("libc", SetLastError = true)]
    private static partial nint write(int fd, byte[] buffer, nuint count);

    [LibraryImport("libc")]
    private static partial int close(int fd);
}
