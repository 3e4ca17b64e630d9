using System.CommandLine;
using System.Globalization;
using System.Net.WebSockets;
using System.Runtime.InteropServices;
using System.Text;
using Switchboard.Client.Environments;
using Switchboard.Protocol.Environments;

namespace Switchboard.Cli.Commands;

/// <summary><c>env create|ls|start|stop|restart|rm</c>, <c>logs</c>, <c>exec</c>, <c>status</c>.</summary>
internal static partial class EnvCommands
{
    // One name across the CLI: --server / SWITCHBOARD_SERVER (--url and SWITCHBOARD_URL still work).
    private static Option<string> Url() => new("--server", "--url")
    {
        Description = "Gateway URL (env SWITCHBOARD_SERVER).",
        DefaultValueFactory = _ => Environment.GetEnvironmentVariable("SWITCHBOARD_SERVER") is { Length: > 0 } s ? s
            : Environment.GetEnvironmentVariable("SWITCHBOARD_URL") is { Length: > 0 } u ? u : "http://127.0.0.1:8080",
    };

    private static Option<string?> Credential() => new("--token")
    {
        Description = "API key or JWT (env SWITCHBOARD_TOKEN, else SWITCHBOARD_API_KEY, else the api-key file in the data dir).",
    };

    private static EnvironmentClient Client(ParseResult parse, Option<string> url, Option<string?> token, Option<string> dataDir)
    {
        var credential = parse.GetValue(token);
        if (string.IsNullOrEmpty(credential))
            credential = Environment.GetEnvironmentVariable("SWITCHBOARD_TOKEN");
        if (string.IsNullOrEmpty(credential))
            credential = Environment.GetEnvironmentVariable("SWITCHBOARD_API_KEY");
        if (string.IsNullOrEmpty(credential))
            credential = Secrets.LoadOrCreate(Path.GetFullPath(parse.GetValue(dataDir)!), create: false).ApiKey;
        return new EnvironmentClient(new Uri(parse.GetValue(url)!), credential);
    }

    private static async Task<int> RunAsync(Func<Task<int>> body)
    {
        try
        {
            return await body();
        }
        catch (EnvironmentApiException ex)
        {
            await Console.Error.WriteLineAsync("error: " + ex.Message);
            return 1;
        }
        catch (Exception ex) when (ex is HttpRequestException or WebSocketException or InvalidOperationException)
        {
            await Console.Error.WriteLineAsync("error: " + ex.Message);
            return 1;
        }
        catch (OperationCanceledException)
        {
            return 130;
        }
    }

    private static void Add(Command command, out Option<string> url, out Option<string?> token, out Option<string> dataDir)
    {
        url = Url();
        token = Credential();
        dataDir = CommonOptions.DataDir();
        command.Options.Add(url);
        command.Options.Add(token);
        command.Options.Add(dataDir);
    }

    public static Command Env()
    {
        var env = new Command("env", "Manage environments: processes or containers the gateway runs.");

        var name = new Argument<string>("name") { Description = "Environment name." };
        var argv = new Argument<string[]>("command") { Description = "Command and arguments (after --); optional with --image, where the image's own command runs.", Arity = ArgumentArity.ZeroOrMore };
        var cwd = new Option<string?>("--cwd") { Description = "Working directory." };
        var vars = new Option<string[]>("--env", "-e") { Description = "Variable KEY=VALUE (repeatable).", AllowMultipleArgumentsPerToken = false };
        var noStart = new Option<bool>("--no-start") { Description = "Create without starting." };
        var image = new Option<string?>("--image") { Description = "Container image; implies --driver docker." };
        var driver = new Option<string?>("--driver") { Description = "process (default) or docker (default when --image is given)." };
        driver.AcceptOnlyFromAmong("process", "docker");
        var create = new Command("create", "Create (and start) an environment: switchboard env create NAME [--image IMAGE] -- command args...")
            { name, argv, cwd, vars, noStart, image, driver };
        Add(create, out var url, out var token, out var dataDir);
        create.SetAction((parse, ct) => RunAsync(async () =>
        {
            using var client = Client(parse, url, token, dataDir);
            var command = parse.GetValue(argv) ?? [];
            var img = parse.GetValue(image);
            var drv = parse.GetValue(driver) ?? (img is null ? "process" : "docker");
            if (drv == "docker" && string.IsNullOrWhiteSpace(img))
                throw new InvalidOperationException("--driver docker needs --image IMAGE");
            if (drv == "process" && img is not null)
                throw new InvalidOperationException("--image needs the docker driver (drop --driver process)");
            if (drv == "process" && command.Length == 0)
                throw new InvalidOperationException("give the command to run after --, e.g. switchboard env create web -- python3 -m http.server");
            var variables = new Dictionary<string, string>(StringComparer.Ordinal);
            foreach (var kv in parse.GetValue(vars) ?? [])
            {
                var eq = kv.IndexOf('=', StringComparison.Ordinal);
                if (eq <= 0)
                    throw new InvalidOperationException($"--env '{kv}' is not KEY=VALUE");
                variables[kv[..eq]] = kv[(eq + 1)..];
            }
            // A container's working directory is inside the image: only pass --cwd through for it, never the caller's directory.
            var workDir = parse.GetValue(cwd) is { } d
                ? (drv == "process" ? Path.GetFullPath(d) : d)
                : (drv == "process" ? Directory.GetCurrentDirectory() : null);
            var info = await client.CreateAsync(new CreateEnvironmentRequest(parse.GetValue(name), drv, command.Length > 0 ? command[0] : null,
                command.Length > 1 ? command[1..] : [], workDir, variables, img, !parse.GetValue(noStart)), ct);
            Console.WriteLine($"{info.Name}\t{info.Id}\t{info.Status}{(info.Error is null ? "" : "\t" + info.Error)}");
            return info.Status == EnvironmentStatus.Failed ? 1 : 0;
        }));
        env.Subcommands.Add(create);

        var ls = new Command("ls", "List environments.");
        Add(ls, out var lsUrl, out var lsToken, out var lsData);
        ls.SetAction((parse, ct) => RunAsync(async () =>
        {
            using var client = Client(parse, lsUrl, lsToken, lsData);
            Console.WriteLine("NAME\tID\tSTATUS\tPID\tLAST SEQ\tNODE\tCOMMAND");
            foreach (var e in await client.ListAsync(ct))
            {
                var status = e.Status == EnvironmentStatus.Exited ? $"exited({e.ExitCode})" : e.Status;
                Console.WriteLine($"{e.Name}\t{e.Id}\t{status}\t{e.Pid?.ToString(CultureInfo.InvariantCulture) ?? "-"}\t{e.LastSeq}\t{e.Node ?? "-"}\t{e.Command} {string.Join(' ', e.Args)}");
            }
            return 0;
        }));
        env.Subcommands.Add(ls);

        foreach (var action in new[] { "start", "stop", "restart" })
        {
            var target = new Argument<string>("name") { Description = "Environment name or id." };
            var c = new Command(action, $"{char.ToUpperInvariant(action[0])}{action[1..]} an environment.") { target };
            Add(c, out var u, out var tk, out var dd);
            c.SetAction((parse, ct) => RunAsync(async () =>
            {
                using var client = Client(parse, u, tk, dd);
                var info = await client.ActionAsync(parse.GetValue(target)!, action, ct);
                Console.WriteLine($"{info.Name}\t{info.Status}{(info.ExitCode is { } x ? $"\texit {x}" : "")}");
                return 0;
            }));
            env.Subcommands.Add(c);
        }

        var rmTarget = new Argument<string>("name") { Description = "Environment name or id." };
        var rm = new Command("rm", "Stop and delete an environment and its logs.") { rmTarget };
        Add(rm, out var rmUrl, out var rmToken, out var rmData);
        rm.SetAction((parse, ct) => RunAsync(async () =>
        {
            using var client = Client(parse, rmUrl, rmToken, rmData);
            await client.DeleteAsync(parse.GetValue(rmTarget)!, ct);
            return 0;
        }));
        env.Subcommands.Add(rm);
        return env;
    }

    public static Command Logs()
    {
        var name = new Argument<string>("name") { Description = "Environment name or id." };
        var follow = new Option<bool>("--follow", "-f") { Description = "Keep streaming new lines (reconnects and resumes without gaps)." };
        var since = new Option<long?>("--since") { Description = "Print lines after this sequence number." };
        var tail = new Option<int?>("--tail", "-n") { Description = "Lines of history to print (default 100)." };
        var stderr = new Option<bool>("--stderr") { Description = "Only stderr." };
        var stdout = new Option<bool>("--stdout") { Description = "Only stdout." };
        var seq = new Option<bool>("--seq") { Description = "Prefix each line with its sequence number." };
        var command = new Command("logs", "Print an environment's output, like docker logs.") { name, follow, since, tail, stderr, stdout, seq };
        Add(command, out var url, out var token, out var dataDir);
        command.SetAction((parse, ct) => RunAsync(async () =>
        {
            using var client = Client(parse, url, token, dataDir);
            var stream = parse.GetValue(stderr) ? "stderr" : parse.GetValue(stdout) ? "stdout" : null;
            var withSeq = parse.GetValue(seq);
            var outWriter = Console.Out;
            await client.StreamLogsAsync(parse.GetValue(name)!, parse.GetValue(since), parse.GetValue(tail), stream, parse.GetValue(follow),
                line =>
                {
                    var text = withSeq ? $"{line.Seq} {line.Message}" : line.Message;
                    if (line.Stream == "stderr")
                        Console.Error.WriteLine(text);
                    else
                        outWriter.WriteLine(text);
                },
                skipped => Console.Error.WriteLine($"[{skipped.Count} lines skipped ({skipped.Reason}): {skipped.FromSeq}..{skipped.ToSeq}]"), ct);
            return 0;
        }));
        return command;
    }

    public static Command Status()
    {
        var name = new Argument<string>("name") { Description = "Environment name or id." };
        var follow = new Option<bool>("--follow", "-f") { Description = "Keep printing status changes and metrics." };
        var command = new Command("status", "Show an environment's status (and with -f, changes and metrics as they come).") { name, follow };
        Add(command, out var url, out var token, out var dataDir);
        command.SetAction((parse, ct) => RunAsync(async () =>
        {
            using var client = Client(parse, url, token, dataDir);
            if (!parse.GetValue(follow))
            {
                var e = await client.GetAsync(parse.GetValue(name)!, ct);
                Console.WriteLine($"{e.Name}\t{e.Status}{(e.ExitCode is { } x ? $"\texit {x}" : "")}{(e.Pid is { } p ? $"\tpid {p}" : "")}{(e.Error is { } err ? "\t" + err : "")}");
                return 0;
            }
            using var ws = await client.ConnectAsync(parse.GetValue(name)!, "status", "", ct);
            await foreach (var doc in EnvironmentClient.ReadMessagesAsync(ws, ct))
            {
                using (doc)
                {
                    var r = doc.RootElement;
                    var time = r.GetProperty("timestamp").GetDateTimeOffset().ToLocalTime().ToString("HH:mm:ss", CultureInfo.InvariantCulture);
                    if (r.GetProperty("type").GetString() == "status")
                    {
                        var code = r.TryGetProperty("exitCode", out var c) && c.ValueKind == System.Text.Json.JsonValueKind.Number ? $" (exit {c.GetInt32()})" : "";
                        Console.WriteLine($"{time} status {r.GetProperty("status").GetString()}{code}");
                    }
                    else
                    {
                        var net = r.GetProperty("network");
                        Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
                            $"{time} cpu {r.GetProperty("cpu").GetDouble(),5:F1}%  mem {r.GetProperty("memory").GetInt64() / 1048576.0:F1} MiB / {r.GetProperty("memoryLimit").GetInt64() / 1048576.0:F0} MiB  net rx {net.GetProperty("rx").GetInt64()} tx {net.GetProperty("tx").GetInt64()}"));
                    }
                }
            }
            var closeCode = ws.CloseStatus is { } s ? (int)s : 1006;
            if (closeCode != 1000)
                await Console.Error.WriteLineAsync($"closed: {closeCode} {ws.CloseStatusDescription}");
            return closeCode == 1000 ? 0 : 1;
        }));
        return command;
    }

    public static Command Exec()
    {
        var name = new Argument<string>("name") { Description = "Environment name or id." };
        var cmd = new Option<string?>("--cmd") { Description = "Shell to run (must be allowed by the gateway; default bash, else sh)." };
        var command = new Command("exec", "Open an interactive shell in an environment, like docker exec -it.") { name, cmd };
        Add(command, out var url, out var token, out var dataDir);
        command.SetAction((parse, ct) => RunAsync(async () =>
        {
            using var client = Client(parse, url, token, dataDir);
            var (cols, rows) = TerminalSize();
            var query = $"cols={cols}&rows={rows}" + (parse.GetValue(cmd) is { } c ? "&cmd=" + Uri.EscapeDataString(c) : "");
            using var ws = await client.ConnectAsync(parse.GetValue(name)!, "terminal", query, ct);
            using var raw = RawMode.Enter();
            using var stop = CancellationTokenSource.CreateLinkedTokenSource(ct);
            using var winch = OperatingSystem.IsWindows() ? null : PosixSignalRegistration.Create(PosixSignal.SIGWINCH, signal =>
            {
                var (w, h) = TerminalSize();
                _ = Task.Run(() => EnvironmentClient.SendJsonAsync(ws, new TerminalMessage("resize", Cols: w, Rows: h), EnvironmentsJsonContext.Default.TerminalMessage, CancellationToken.None));
            });
            var input = Task.Run(async () =>
            {
                var stdin = Console.OpenStandardInput();
                var buffer = new byte[4096];
                var decoder = Encoding.UTF8.GetDecoder();
                var chars = new char[4100];
                while (!stop.IsCancellationRequested)
                {
                    var n = await stdin.ReadAsync(buffer, stop.Token);
                    if (n <= 0)
                        break;
                    var count = decoder.GetChars(buffer, 0, n, chars, 0, flush: false);
                    if (count > 0)
                        await EnvironmentClient.SendJsonAsync(ws, new TerminalMessage("input", new string(chars, 0, count)), EnvironmentsJsonContext.Default.TerminalMessage, stop.Token);
                }
            }, stop.Token);
            var stdout = Console.OpenStandardOutput();
            var exitCode = 0;
            await foreach (var doc in EnvironmentClient.ReadMessagesAsync(ws, ct))
            {
                using (doc)
                {
                    var r = doc.RootElement;
                    switch (r.GetProperty("type").GetString())
                    {
                        case "output":
                            var bytes = Encoding.UTF8.GetBytes(r.GetProperty("data").GetString() ?? "");
                            await stdout.WriteAsync(bytes, ct);
                            await stdout.FlushAsync(ct);
                            break;
                        case "exit":
                            exitCode = r.GetProperty("code").GetInt32();
                            break;
                        case "error":
                            await Console.Error.WriteLineAsync("error: " + r.GetProperty("data").GetString());
                            exitCode = 1;
                            break;
                    }
                }
            }
            await stop.CancelAsync();
            var close = ws.CloseStatus is { } s ? (int)s : 1006;
            if (close != 1000)
            {
                raw.Dispose();
                await Console.Error.WriteLineAsync($"\r\nconnection closed: {close} {ws.CloseStatusDescription}");
                return exitCode == 0 ? 1 : exitCode;
            }
            return exitCode;
        }));
        return command;
    }

    private static (int Cols, int Rows) TerminalSize()
    {
        try
        {
            return (Math.Clamp(Console.WindowWidth, 1, 1000), Math.Clamp(Console.WindowHeight, 1, 1000));
        }
        catch (IOException)
        {
            return (80, 24);
        }
    }

    /// <summary>Puts the local terminal in raw mode (termios through libc) and restores it on dispose.</summary>
    private sealed partial class RawMode : IDisposable
    {
        private readonly byte[]? _saved;
        private int _restored;

        private RawMode(byte[]? saved) => _saved = saved;

        public static RawMode Enter()
        {
            if (!OperatingSystem.IsLinux() && !OperatingSystem.IsMacOS() || Console.IsInputRedirected)
                return new RawMode(null);
            var saved = new byte[256];
            if (tcgetattr(0, saved) != 0)
                return new RawMode(null);
            var raw = (byte[])saved.Clone();
            cfmakeraw(raw);
            tcsetattr(0, 0, raw);
            return new RawMode(saved);
        }

        public void Dispose()
        {
            if (_saved is not null && Interlocked.Exchange(ref _restored, 1) == 0)
                tcsetattr(0, 0, _saved);
        }

        [LibraryImport("libc")]
        private static partial int tcgetattr(int fd, [Out] byte[] termios);

        [LibraryImport("libc")]
        private static partial int tcsetattr(int fd, int actions, byte[] termios);

        [LibraryImport("libc")]
        private static partial void cfmakeraw([In, Out] byte[] termios);
    }
}
