using System.CommandLine;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting;
using Microsoft.Extensions.Configuration;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;
using Switchboard.Server;
using Switchboard.Server.Auth;
using Switchboard.Storage.Sqlite;

namespace Switchboard.Cli.Commands;

internal static class ServeCommand
{
    public static Command Create()
    {
        var urls = new Option<string>("--urls")
        {
            Description = "Addresses to listen on, separated by ';' (env SWITCHBOARD_URLS).",
            DefaultValueFactory = _ => Env("SWITCHBOARD_URLS") ?? "http://127.0.0.1:8080",
        };
        var dataDir = CommonOptions.DataDir();
        var database = new Option<string?>("--database")
        {
            Description = "PostgreSQL connection string for several nodes (env SWITCHBOARD_DATABASE).",
            DefaultValueFactory = _ => Env("SWITCHBOARD_DATABASE"),
        };
        var tunnelDomain = new Option<string>("--tunnel-domain")
        {
            Description = "Domain under which tunnels get subdomains (env SWITCHBOARD_TUNNEL_DOMAIN).",
            DefaultValueFactory = _ => Env("SWITCHBOARD_TUNNEL_DOMAIN") ?? "localhost",
        };
        var command = new Command("serve", "Start the gateway (embedded SQLite store and in-process bus unless --database is given).")
        {
            urls, dataDir, database, tunnelDomain,
        };
        command.SetAction(async (parse, cancellationToken) =>
        {
            var db = parse.GetValue(database);
            if (!string.IsNullOrWhiteSpace(db))
            {
                await Console.Error.WriteLineAsync("error: --database (PostgreSQL) is not supported by this build yet; run without it to use the embedded SQLite store.");
                return 2;
            }
            var dir = Path.GetFullPath(parse.GetValue(dataDir)!);
            Secrets secrets;
            try
            {
                secrets = Secrets.LoadOrCreate(dir, create: true);
            }
            catch (Exception ex) when (ex is IOException or UnauthorizedAccessException)
            {
                await Console.Error.WriteLineAsync($"error: cannot use data dir {dir}: {ex.Message}");
                return 1;
            }
            return await RunAsync(parse.GetValue(urls)!, dir, parse.GetValue(tunnelDomain)!, secrets, cancellationToken);
        });
        return command;
    }

    private static string? Env(string name) => Environment.GetEnvironmentVariable(name) is { Length: > 0 } v ? v : null;

    private static async Task<int> RunAsync(string urls, string dataDir, string tunnelDomain, Secrets secrets, CancellationToken cancellationToken)
    {
        var builder = WebApplication.CreateSlimBuilder();
        builder.Configuration.AddEnvironmentVariables();
        builder.WebHost.UseUrls(urls.Split(';', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries));
        builder.Logging.AddSimpleConsole(o => o.SingleLine = true);
        builder.Logging.AddFilter("Microsoft.AspNetCore", LogLevel.Warning);
        builder.Logging.AddFilter("Microsoft.Hosting.Lifetime", LogLevel.Warning);
        builder.ConfigureSwitchboardHost();
        builder.Services.AddSwitchboard(o =>
        {
            o.Auth.JwtSecret = secrets.JwtSecret;
            o.Auth.ApiKey = secrets.ApiKey;
            o.Auth.GitHubWebhookSecret = Env("SWITCHBOARD_GITHUB_WEBHOOK_SECRET") ?? o.Auth.GitHubWebhookSecret;
            o.TunnelDomain = tunnelDomain;
        });
        builder.Services.AddSwitchboardSqlite(dataDir);
        await using var app = builder.Build();
        app.MapSwitchboard();
        try
        {
            await app.StartAsync(cancellationToken);
        }
        catch (Microsoft.Extensions.Options.OptionsValidationException ex)
        {
            await Console.Error.WriteLineAsync("error: invalid configuration:\n  " + string.Join("\n  ", ex.Failures));
            return 2;
        }
        catch (IOException ex)
        {
            await Console.Error.WriteLineAsync($"error: cannot listen on {urls}: {ex.Message}");
            return 1;
        }
        var tokens = app.Services.GetRequiredService<TokenService>();
        PrintBanner(app.Urls, dataDir, secrets, tokens);
        await app.WaitForShutdownAsync(cancellationToken);
        return 0;
    }

    private static void PrintBanner(ICollection<string> urls, string dataDir, Secrets secrets, TokenService tokens)
    {
        var o = Console.Out;
        o.WriteLine();
        o.WriteLine("Switchboard is running.");
        foreach (var u in urls)
        {
            o.WriteLine($"  Listening   {u}");
            o.WriteLine($"  Channels    {u.Replace("http", "ws", StringComparison.Ordinal)}/api/v1/ws");
        }
        o.WriteLine($"  Data        {Path.Combine(dataDir, "switchboard.db")}");
        if (secrets.Generated)
        {
            // First start only: show the generated credentials once. Later starts print where they are, never the values.
            o.WriteLine();
            o.WriteLine("Generated credentials (shown once; stored with mode 0600):");
            o.WriteLine($"  API key     {secrets.ApiKey}");
            o.WriteLine($"              ({secrets.ApiKeyFile ?? "from SWITCHBOARD_API_KEY"})");
            o.WriteLine($"  JWT secret  {secrets.JwtSecretFile ?? "from SWITCHBOARD_JWT_SECRET"}");
            var dev = tokens.Create("dev", TimeSpan.FromHours(12), ["*"], ["*"], ["*"], ["*"], ["*"]);
            o.WriteLine($"  Dev token   {dev}");
            o.WriteLine("              (subject 'dev', every grant, valid 12 h)");
        }
        else
        {
            o.WriteLine($"  API key     {secrets.ApiKeyFile ?? "from SWITCHBOARD_API_KEY"}");
            o.WriteLine($"  JWT secret  {secrets.JwtSecretFile ?? "from SWITCHBOARD_JWT_SECRET"}");
        }
        o.WriteLine();
        o.WriteLine("Mint a token:  switchboard token --sub alice --channels 'list:*' --data-dir " + dataDir);
        o.WriteLine();
    }
}
