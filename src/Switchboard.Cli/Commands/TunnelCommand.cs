using System.CommandLine;
using System.Globalization;
using System.Runtime.InteropServices;
using Switchboard.Client.Tunnels;
using Switchboard.Protocol;
using Switchboard.Protocol.Tunnels;

namespace Switchboard.Cli.Commands;

/// <summary><c>switchboard tunnel http PORT</c>: expose a local HTTP server through the gateway.</summary>
internal static class TunnelCommand
{
    public static Command Create()
    {
        var target = new Argument<string>("target") { Description = "Local port (3000), host:port, or URL (http://127.0.0.1:3000)." };
        var server = new Option<string>("--server")
        {
            Description = "Gateway URL (env SWITCHBOARD_SERVER).",
            DefaultValueFactory = _ => Environment.GetEnvironmentVariable("SWITCHBOARD_SERVER") is { Length: > 0 } s ? s : "http://127.0.0.1:8080",
        };
        var token = new Option<string>("--token")
        {
            Description = "Agent token (switchboard tokens create --kind agent) or JWT with a tunnels grant (env SWITCHBOARD_TOKEN).",
            DefaultValueFactory = _ => Environment.GetEnvironmentVariable("SWITCHBOARD_TOKEN") ?? "",
        };
        var subdomain = new Option<string?>("--subdomain") { Description = "Name to reserve (default: a random one)." };
        var hostHeader = new Option<string>("--host-header") { Description = "rewrite (Host = local target, default) or preserve (public Host).", DefaultValueFactory = _ => "rewrite" };
        hostHeader.AcceptOnlyFromAmong("rewrite", "preserve");
        var basicAuth = new Option<string?>("--basic-auth") { Description = "user:pass that public clients must present (checked by the gateway)." };
        var allowCidr = new Option<string[]>("--allow-cidr")
        {
            Description = "Client address ranges admitted by the gateway, e.g. 10.0.0.0/8 (repeatable).",
            AllowMultipleArgumentsPerToken = true,
        };
        var buffered = new Option<bool>("--buffered") { Description = "Send whole responses with Content-Length instead of streaming." };
        var noZeroCopy = new Option<bool>("--no-zero-copy") { Description = "Copy large response bodies instead of splicing them between sockets (Linux; docs/tunnels.md, \"Zero copy\")." };
        var http = new Command("http", "Forward public HTTP (and WebSocket) traffic to a local server.")
        {
            target, server, token, subdomain, hostHeader, basicAuth, allowCidr, buffered, noZeroCopy,
        };
        http.SetAction(async (parse, cancellationToken) =>
        {
            Uri local;
            try
            {
                local = ParseTarget(parse.GetValue(target)!);
            }
            catch (FormatException ex)
            {
                Console.Error.WriteLine("error: " + ex.Message);
                return 2;
            }
            var basic = parse.GetValue(basicAuth);
            if (basic is not null && !basic.Contains(':'))
            {
                Console.Error.WriteLine("error: --basic-auth must be user:pass");
                return 2;
            }
            var options = new TunnelAgentOptions
            {
                Server = new Uri(parse.GetValue(server)!.TrimEnd('/') + "/"),
                LocalTarget = local,
                Token = parse.GetValue(token) ?? "",
                Subdomain = parse.GetValue(subdomain),
                HostHeader = parse.GetValue(hostHeader) == "preserve" ? HostHeaderMode.Preserve : HostHeaderMode.Rewrite,
                BasicAuth = basic,
                AllowCidrs = [.. parse.GetValue(allowCidr) ?? []],
                Buffered = parse.GetValue(buffered),
                ZeroCopy = !parse.GetValue(noZeroCopy),
            };
            return await RunAsync(options, cancellationToken);
        });
        return new Command("tunnel", "Expose a local server through the gateway.") { http };
    }

    internal static Uri ParseTarget(string text)
    {
        if (int.TryParse(text, NumberStyles.None, CultureInfo.InvariantCulture, out var port) && port is > 0 and < 65536)
            return new Uri($"http://127.0.0.1:{port}");
        if (!text.Contains("://", StringComparison.Ordinal))
            text = "http://" + text;
        if (Uri.TryCreate(text, UriKind.Absolute, out var uri) && uri.Scheme is "http" or "https")
            return uri;
        throw new FormatException($"'{text}' is not a port, host:port or http(s) URL");
    }

    private static async Task<int> RunAsync(TunnelAgentOptions options, CancellationToken cancellationToken)
    {
        // Ctrl-C and SIGTERM stop the agent gracefully: the tunnel is closed with a close frame ("agent stopped"), so the
        // gateway drops it at once and answers 404, and the process exits with 0.
        using var stop = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
        void OnSignal(PosixSignalContext context)
        {
            context.Cancel = true;
            stop.Cancel();
        }
        using var sigint = PosixSignalRegistration.Create(PosixSignal.SIGINT, OnSignal);
        using var sigterm = PosixSignalRegistration.Create(PosixSignal.SIGTERM, OnSignal);
        cancellationToken = stop.Token;
        await using var agent = new TunnelAgent(options);
        var first = true;
        agent.Connected += ack =>
        {
            if (first)
            {
                Console.WriteLine($"Forwarding  {ack.PublicUrl.TrimEnd('/')}  ->  {options.LocalTarget.ToString().TrimEnd('/')}");
                Console.WriteLine($"Forwarding  {ack.PathUrl}  ->  {options.LocalTarget.ToString().TrimEnd('/')}/");
                Console.WriteLine("Press Ctrl-C to stop.");
                first = false;
            }
            else
                Console.WriteLine($"Reconnected as {ack.Name}");
        };
        agent.Disconnected += (reason, delay) => Console.Error.WriteLine($"Disconnected: {reason}; retrying in {delay.TotalSeconds:0.0} s");
        agent.RequestCompleted += r => Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
            $"{DateTime.Now:HH:mm:ss}  {r.Method,-7} {Truncate(r.Path, 60),-60} {(r.Status == 0 ? "ERR" : r.Status.ToString(CultureInfo.InvariantCulture)),4} {r.Duration.TotalMilliseconds,8:0.0} ms {Size(r.ResponseBytes),9}{(r.Error is null ? "" : "  " + r.Error)}"));
        try
        {
            await agent.RunAsync(cancellationToken);
            return 0;
        }
        catch (TunnelRefusedException ex)
        {
            Console.Error.WriteLine($"error: the gateway refused the tunnel ({ex.Code}): {ex.Message}");
            return ex.Code == CloseCodes.Unauthorized ? 3 : 4;
        }
        catch (OperationCanceledException)
        {
            return 0;
        }
    }

    private static string Truncate(string s, int n) => s.Length <= n ? s : s[..(n - 1)] + "…";

    private static string Size(long bytes) => bytes switch
    {
        < 1024 => $"{bytes} B",
        < 1024 * 1024 => string.Create(CultureInfo.InvariantCulture, $"{bytes / 1024.0:0.0} KB"),
        _ => string.Create(CultureInfo.InvariantCulture, $"{bytes / 1024.0 / 1024:0.0} MB"),
    };
}
