using System.CommandLine;
using Switchboard.Server.Tunnels;
using Switchboard.Storage.Sqlite;
using Switchboard.Storage.Sqlite.Tunnels;

namespace Switchboard.Cli.Commands;

/// <summary><c>switchboard tokens create|ls|revoke</c>: agent tokens, stored as SHA-256 hashes only.</summary>
internal static class TokensCommand
{
    public static Command Create()
    {
        var kind = new Option<string>("--kind") { Description = "Token kind (agent).", DefaultValueFactory = _ => "agent" };
        kind.AcceptOnlyFromAmong("agent");
        var label = new Option<string?>("--label") { Description = "A note to recognise the token by in 'tokens ls'." };
        var dataDir = CommonOptions.DataDir();
        var create = new Command("create", "Create an agent token. It is printed once; the store keeps only its hash.") { kind, label, dataDir };
        create.SetAction(async (parse, ct) =>
        {
            await using var db = await OpenAsync(parse.GetValue(dataDir)!, ct);
            var (secret, record) = TunnelHub.NewAgentToken(parse.GetValue(label), DateTimeOffset.UtcNow);
            await new SqliteTunnelRegistry(db).CreateTokenAsync(record, ct);
            Console.WriteLine(secret);
            Console.Error.WriteLine($"created agent token {record.Id}; it is shown only now: store it safely.");
            return 0;
        });

        var lsDir = CommonOptions.DataDir();
        var ls = new Command("ls", "List agent tokens (ids and labels, never secrets).") { lsDir };
        ls.SetAction(async (parse, ct) =>
        {
            await using var db = await OpenAsync(parse.GetValue(lsDir)!, ct);
            var tokens = await new SqliteTunnelRegistry(db).ListTokensAsync(ct);
            Console.WriteLine($"{"ID",-14} {"CREATED",-20} {"STATUS",-8} LABEL");
            foreach (var t in tokens)
                Console.WriteLine($"{t.Id,-14} {t.CreatedAt.UtcDateTime:yyyy-MM-dd HH:mm:ss}  {(t.RevokedAt is null ? "active" : "revoked"),-8} {t.Label}");
            return 0;
        });

        var id = new Argument<string>("id") { Description = "Token id from 'tokens ls'." };
        var revokeDir = CommonOptions.DataDir();
        var revoke = new Command("revoke", "Revoke an agent token; agents using it can no longer connect.") { id, revokeDir };
        revoke.SetAction(async (parse, ct) =>
        {
            await using var db = await OpenAsync(parse.GetValue(revokeDir)!, ct);
            if (await new SqliteTunnelRegistry(db).RevokeTokenAsync(parse.GetValue(id)!, DateTimeOffset.UtcNow, ct))
            {
                Console.WriteLine("revoked");
                return 0;
            }
            Console.Error.WriteLine("error: no active token with that id");
            return 1;
        });
        return new Command("tokens", "Manage agent tokens.") { create, ls, revoke };
    }

    private static async Task<SqliteDatabase> OpenAsync(string dataDir, CancellationToken cancellationToken)
    {
        var db = new SqliteDatabase(Path.Combine(Path.GetFullPath(dataDir), "switchboard.db"));
        await db.MigrateAsync(SqliteTunnelRegistry.Migrations, cancellationToken);
        return db;
    }
}
