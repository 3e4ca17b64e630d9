using System.CommandLine;
using System.Security.Cryptography;
using System.Security.Cryptography.X509Certificates;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting;
using Microsoft.Extensions.Configuration;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;
using Switchboard.Server;
using Switchboard.Server.Auth;
using Switchboard.Server.Nodes;
using Switchboard.Storage.Postgres;
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
        var database = CommonOptions.Database();
        var nodeId = new Option<string?>("--node-id")
        {
            Description = "Stable id of this node in a cluster: letters, digits, '.', '_', '-' (env SWITCHBOARD_NODE_ID; default random per start).",
            DefaultValueFactory = _ => Env("SWITCHBOARD_NODE_ID"),
        };
        var advertiseUrl = new Option<string?>("--advertise-url")
        {
            Description = "Base URL other nodes reach this node at, e.g. http://10.0.0.5:8080 (env SWITCHBOARD_ADVERTISE_URL; default: first listen address).",
            DefaultValueFactory = _ => Env("SWITCHBOARD_ADVERTISE_URL"),
        };
        var tunnelDomain = new Option<string>("--tunnel-domain")
        {
            Description = "Domain under which tunnels get subdomains (env SWITCHBOARD_TUNNEL_DOMAIN).",
            DefaultValueFactory = _ => Env("SWITCHBOARD_TUNNEL_DOMAIN") ?? "localhost",
        };
        var tlsCert = new Option<string?>("--tls-cert")
        {
            Description = "PEM certificate (chain) for the https:// addresses of --urls (env SWITCHBOARD_TLS_CERT).",
            DefaultValueFactory = _ => Env("SWITCHBOARD_TLS_CERT"),
        };
        var tlsKey = new Option<string?>("--tls-key")
        {
            Description = "PEM private key of --tls-cert (env SWITCHBOARD_TLS_KEY; default: the key inside the --tls-cert file).",
            DefaultValueFactory = _ => Env("SWITCHBOARD_TLS_KEY"),
        };
        var command = new Command("serve", "Start the gateway (embedded SQLite store and in-process bus unless --database is given).")
        {
            urls, dataDir, database, nodeId, advertiseUrl, tunnelDomain, tlsCert, tlsKey,
        };
        command.SetAction(async (parse, cancellationToken) =>
        {
            var node = new NodeSettings(parse.GetValue(database), parse.GetValue(nodeId), parse.GetValue(advertiseUrl));
            if (node.Validate() is { } invalid)
            {
                await Console.Error.WriteLineAsync("error: " + invalid);
                return 2;
            }
            var listen = parse.GetValue(urls)!;
            var (certificate, tlsError) = LoadCertificate(listen, parse.GetValue(tlsCert), parse.GetValue(tlsKey));
            if (tlsError is not null)
            {
                await Console.Error.WriteLineAsync("error: " + tlsError);
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
            return await RunAsync(listen, dir, parse.GetValue(tunnelDomain)!, secrets, node, certificate, cancellationToken);
        });
        return command;
    }

    private static string? Env(string name) => Environment.GetEnvironmentVariable(name) is { Length: > 0 } v ? v : null;

    // An https:// address needs a certificate, and a certificate is for https:// addresses: either mismatch is a
    // mistake worth stopping for rather than a server that silently serves something else.
    private static (X509Certificate2? Certificate, string? Error) LoadCertificate(string urls, string? certPath, string? keyPath)
    {
        var https = urls.Split(';', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries)
            .Any(u => u.StartsWith("https://", StringComparison.OrdinalIgnoreCase));
        if (certPath is null)
        {
            return keyPath is not null ? (null, "--tls-key needs --tls-cert")
                : https ? (null, "an https:// address in --urls needs --tls-cert (and --tls-key unless the key is in the same PEM file)")
                : (null, null);
        }
        if (!https)
            return (null, "--tls-cert is given but no --urls address is https://");
        try
        {
            var certificate = X509Certificate2.CreateFromPemFile(certPath, keyPath);
            return certificate.HasPrivateKey ? (certificate, null) : (null, $"{certPath}: no private key (give it with --tls-key)");
        }
        catch (Exception ex) when (ex is IOException or UnauthorizedAccessException or CryptographicException or ArgumentException)
        {
            return (null, $"cannot load the TLS certificate {certPath}{(keyPath is null ? "" : " with key " + keyPath)}: {ex.Message}");
        }
    }

    /// <summary>Where the node keeps its state and how it is known to the other nodes.</summary>
    private sealed record NodeSettings(string? Database, string? NodeId, string? AdvertiseUrl)
    {
        public bool UsesPostgres => !string.IsNullOrWhiteSpace(Database);

        public string? Validate()
        {
            if (UsesPostgres)
            {
                try
                {
                    _ = new Npgsql.NpgsqlConnectionStringBuilder(Database);
                }
                catch (ArgumentException ex)
                {
                    return $"--database is not a valid PostgreSQL connection string: {ex.Message}";
                }
            }
            if (NodeId is not null && (NodeId.Length is 0 or > 64 || !NodeId.All(c => char.IsAsciiLetterOrDigit(c) || c is '.' or '_' or '-')))
                return "--node-id must be 1-64 characters of letters, digits, '.', '_' or '-'";
            if (AdvertiseUrl is not null && (!Uri.TryCreate(AdvertiseUrl, UriKind.Absolute, out var u) || (u.Scheme != "http" && u.Scheme != "https")))
                return "--advertise-url must be an absolute http(s) URL";
            return null;
        }

        /// <summary>The connection string without its password, for the banner.</summary>
        public string Describe()
        {
            var b = new Npgsql.NpgsqlConnectionStringBuilder(Database) { Password = null };
            return $"PostgreSQL {b.Host}:{b.Port}/{b.Database}";
        }
    }

    private static async Task<int> RunAsync(string urls, string dataDir, string tunnelDomain, Secrets secrets, NodeSettings node, X509Certificate2? certificate,
        CancellationToken cancellationToken)
    {
        // No file watching for configuration reloads: settings come from flags and environment variables, and the
        // default watcher (recursive, on the working directory) would see every write to a data dir inside it and use
        // one inotify watch per subdirectory of wherever the server was started.
        var builder = WebApplication.CreateSlimBuilder(new WebApplicationOptions { Args = ["--hostBuilder:reloadConfigOnChange=false"] });
        builder.Configuration.AddEnvironmentVariables();
        builder.WebHost.UseUrls(urls.Split(';', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries));
        builder.Logging.AddSimpleConsole(o => o.SingleLine = true);
        builder.Logging.AddFilter("Microsoft.AspNetCore", LogLevel.Warning);
        builder.Logging.AddFilter("Microsoft.Hosting.Lifetime", LogLevel.Warning);
        builder.ConfigureSwitchboardHost();
        if (certificate is not null)
            builder.ConfigureSwitchboardTls(certificate);
        builder.Services.AddSwitchboard(o =>
        {
            o.Auth.JwtSecret = secrets.JwtSecret;
            o.Auth.ApiKey = secrets.ApiKey;
            o.Auth.GitHubWebhookSecret = Env("SWITCHBOARD_GITHUB_WEBHOOK_SECRET") ?? o.Auth.GitHubWebhookSecret;
            o.TunnelDomain = tunnelDomain;
            if (node.NodeId is not null)
                o.NodeId = node.NodeId;
        });
        if (node.AdvertiseUrl is not null)
            builder.Services.Configure<NodeOptions>(o => o.AdvertiseUrl = node.AdvertiseUrl);
        if (node.UsesPostgres)
            builder.Services.AddSwitchboardPostgres(node.Database!);
        else
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
        catch (Npgsql.NpgsqlException ex)
        {
            await Console.Error.WriteLineAsync($"error: cannot use the database ({node.Describe()}): {ex.Message}");
            return 1;
        }
        var tokens = app.Services.GetRequiredService<TokenService>();
        var storage = node.UsesPostgres ? node.Describe() : Path.Combine(dataDir, "switchboard.db");
        PrintBanner(app.Urls, storage, dataDir, secrets, tokens, app.Services.GetRequiredService<INodeRegistry>().NodeId);
        await app.WaitForShutdownAsync(cancellationToken);
        return 0;
    }

    private static void PrintBanner(ICollection<string> urls, string storage, string dataDir, Secrets secrets, TokenService tokens, string nodeId)
    {
        var o = Console.Out;
        o.WriteLine();
        o.WriteLine("Switchboard is running.");
        foreach (var u in urls)
        {
            o.WriteLine($"  Listening   {u}");
            o.WriteLine($"  Channels    {u.Replace("http", "ws", StringComparison.Ordinal)}/api/v1/ws");
        }
        o.WriteLine($"  Data        {storage}");
        o.WriteLine($"  Node        {nodeId}");
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
