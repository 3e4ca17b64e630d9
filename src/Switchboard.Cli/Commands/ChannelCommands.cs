using System.CommandLine;
using System.Net.Http.Headers;
using System.Text;
using System.Text.Json;
using Switchboard.Client.Channels;
using Switchboard.Protocol;

namespace Switchboard.Cli.Commands;

/// <summary><c>switchboard publish</c> and <c>switchboard subscribe</c>: channels from the shell.</summary>
internal static class ChannelCommands
{
    public static Option<string> Server() => new("--server")
    {
        Description = "Gateway address (env SWITCHBOARD_SERVER).",
        DefaultValueFactory = _ => Environment.GetEnvironmentVariable("SWITCHBOARD_SERVER") is { Length: > 0 } s ? s : "http://127.0.0.1:8080",
    };

    public static Command Publish()
    {
        var channel = new Argument<string>("channel") { Description = "Channel name, e.g. list:42." };
        var data = new Argument<string>("data") { Description = "JSON value to publish (a bare word is sent as a string)." };
        var server = Server();
        var dataDir = CommonOptions.DataDir();
        var exclude = new Option<string?>("--exclude-connection") { Description = "Connection id that should not receive it." };
        var command = new Command("publish", "Publish a message to a channel with the API key (SWITCHBOARD_API_KEY or the data dir).")
        {
            channel, data, server, dataDir, exclude,
        };
        command.SetAction(async (parse, cancellationToken) =>
        {
            Secrets secrets;
            try
            {
                secrets = Secrets.LoadOrCreate(Path.GetFullPath(parse.GetValue(dataDir)!), create: false);
            }
            catch (InvalidOperationException ex)
            {
                await Console.Error.WriteLineAsync("error: " + ex.Message);
                return 1;
            }
            var raw = parse.GetValue(data)!;
            JsonElement value;
            try
            {
                value = JsonDocument.Parse(raw).RootElement;
            }
            catch (JsonException)
            {
                value = JsonSerializer.SerializeToElement(raw, ProtocolJsonContext.Default.String);
            }
            var body = JsonSerializer.Serialize(new PublishRequest { Data = value, ExcludeConnection = parse.GetValue(exclude) }, ProtocolJsonContext.Default.PublishRequest);
            using var http = new HttpClient { BaseAddress = new Uri(parse.GetValue(server)!) };
            http.DefaultRequestHeaders.Authorization = new AuthenticationHeaderValue("Bearer", secrets.ApiKey);
            try
            {
                using var response = await http.PostAsync($"api/v1/channels/{Uri.EscapeDataString(parse.GetValue(channel)!)}/messages",
                    new StringContent(body, Encoding.UTF8, "application/json"), cancellationToken);
                var text = await response.Content.ReadAsStringAsync(cancellationToken);
                if (!response.IsSuccessStatusCode)
                {
                    await Console.Error.WriteLineAsync($"error: {(int)response.StatusCode} {text}");
                    return 1;
                }
                Console.WriteLine(text);
                return 0;
            }
            catch (HttpRequestException ex)
            {
                await Console.Error.WriteLineAsync($"error: cannot reach {parse.GetValue(server)}: {ex.Message}");
                return 1;
            }
        });
        return command;
    }

    public static Command Subscribe()
    {
        var channel = new Argument<string>("channel") { Description = "Channel name." };
        var server = Server();
        var token = new Option<string?>("--token") { Description = "JWT (env SWITCHBOARD_TOKEN).", DefaultValueFactory = _ => Environment.GetEnvironmentVariable("SWITCHBOARD_TOKEN") };
        var since = new Option<long?>("--since") { Description = "Resume after this offset (needs --epoch)." };
        var epoch = new Option<string?>("--epoch") { Description = "Epoch of --since." };
        var command = new Command("subscribe", "Print a channel's messages as JSON lines, reconnecting and recovering on drops.")
        {
            channel, server, token, since, epoch,
        };
        command.SetAction(async (parse, cancellationToken) =>
        {
            var jwt = parse.GetValue(token);
            if (string.IsNullOrEmpty(jwt))
            {
                await Console.Error.WriteLineAsync("error: --token (or SWITCHBOARD_TOKEN) is required; mint one with 'switchboard token'");
                return 2;
            }
            await using var client = new ChannelClient(new Uri(parse.GetValue(server)!), _ => ValueTask.FromResult(jwt));
            try
            {
                await client.ConnectAsync(cancellationToken);
            }
            catch (Exception ex) when (ex is System.Net.WebSockets.WebSocketException or HttpRequestException)
            {
                await Console.Error.WriteLineAsync("error: " + ex.Message);
                return 1;
            }
            var position = parse.GetValue(since) is { } s && parse.GetValue(epoch) is { } e ? new StreamPosition(s, e) : null;
            var reader = client.Subscribe(parse.GetValue(channel)!, position);
            try
            {
                await foreach (var m in reader.ReadAllAsync(cancellationToken))
                {
                    Console.WriteLine(m.IsReset
                        ? $"{{\"reset\":true,\"offset\":{m.Offset},\"epoch\":\"{m.Epoch}\"}}"
                        : $"{{\"offset\":{m.Offset},\"data\":{m.Data.GetRawText()}}}");
                }
            }
            catch (OperationCanceledException)
            {
            }
            if (client.LastCloseCode != 0 && !CloseCodes.ShouldReconnect(client.LastCloseCode))
            {
                await Console.Error.WriteLineAsync($"closed by the server with {client.LastCloseCode}");
                return 1;
            }
            return 0;
        });
        return command;
    }
}
