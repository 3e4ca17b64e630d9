using System.CommandLine;
using Switchboard.Server.Tunnels;
using Switchboard.Storage.Postgres;
using Switchboard.Storage.Postgres.Tunnels;
using Switchboard.Storage.Sqlite;
using Switchboard.Storage.Sqlite.Tunnels;

namespace Switchboard.Cli.Commands;

/// <summary>
/// <c>switchboard tokens create|ls|revoke</c>: agent tokens, stored as SHA-256 hashes only, in the same store the gateway uses:
/// the SQLite file in <c>--data-dir</c>, or PostgreSQL with <c>--database</c> (env <c>SWITCHBOARD_DATABASE</c>) for a cluster.
/// </summary>
internal static class TokensCommand
{
    public static Command Create()
    {
        var kind = new Option<string>("--kind") { Description = "Token kind (agent).", DefaultValueFactory = _ => "agent" };
        kind.AcceptOnlyFromAmong("agent");
        var label = new Option<string?>("--label") { Description = "A note to recognise the token by in 'tokens ls'." };
        var dataDir = CommonOptions.DataDir();
        var database = CommonOptions.Database();
        var create = new Command("create", "Create an agent token. It is printed once; the store keeps only its hash.") { kind, label, dataDir, database };
        create.SetAction(async (parse, ct) => await RunAsync(parse, dataDir, database, async registry =>
        {
            var (secret, record) = TunnelHub.NewAgentToken(parse.GetValue(label), DateTimeOffset.UtcNow);
            await registry.CreateTokenAsync(record, ct);
            Console.WriteLine(secret);
            Console.Error.WriteLine($"created agent token {record.Id}; it is shown only now: store it safely.");
            return 0;
        }, ct));

        var lsDir = CommonOptions.DataDir();
        var lsDatabase = CommonOptions.Database();
        var ls = new Command("ls", "List agent tokens (ids and labels, never secrets).") { lsDir, lsDatabase };
        ls.SetAction(async (parse, ct) => await RunAsync(parse, lsDir, lsDatabase, async registry =>
        {
            var tokens = await registry.ListTokensAsync(ct);
            Console.WriteLine($"{"ID",-14} {"CREATED",-20} {"STATUS",-8} LABEL");
            foreach (var t in tokens)
                Console.WriteLine($"{t.Id,-14} {t.CreatedAt.UtcDateTime:yyyy-MM-dd HH:mm:ss}  {(t.RevokedAt is null ? "active" : "revoked"),-8} {t.Label}");
            return 0;
        }, ct));

        var id = new Argument<string>("id") { Description = "Token id from 'tokens ls'." };
        var revokeDir = CommonOptions.DataDir();
        var revokeDatabase = CommonOptions.Database();
        var revoke = new Command("revoke", "Revoke an agent token; agents using it can no longer connect.") { id, revokeDir, revokeDatabase };
        revoke.SetAction(async (parse, ct) => await RunAsync(parse, revokeDir, revokeDatabase, async registry =>
        {
            if (await registry.RevokeTokenAsync(parse.GetValue(id)!, DateTimeOffset.UtcNow, ct))
            {
                Console.WriteLine("revoked");
                return 0;
            }
            Console.Error.WriteLine("error: no active token with that id");
            return 1;
        }, ct));
        return new Command("tokens", "Manage agent tokens (in the SQLite file of --data-dir, or in PostgreSQL with --database).") { create, ls, revoke };
    }

    /// <summary>Opens the store the gateway would use (PostgreSQL when a connection string is given) and runs <paramref name="body"/>.</summary>
    private static async Task<int> RunAsync(ParseResult parse, Option<string> dataDir, Option<string?> database, Func<ITunnelRegistry, Task<int>> body,
        CancellationToken cancellationToken)
    {
        if (parse.GetValue(database) is { Length: > 0 } connectionString)
        {
            PostgresDatabase pg;
            try
            {
                pg = new PostgresDatabase(connectionString);
            }
            catch (ArgumentException ex)
            {
                await Console.Error.WriteLineAsync($"error: --database is not a valid PostgreSQL connection string: {ex.Message}");
                return 1;
            }
            await using (pg)
            {
                try
                {
                    await pg.MigrateAsync(PostgresTunnelRegistry.Migrations, cancellationToken);
                }
                catch (Exception ex) when (ex is Npgsql.NpgsqlException or TimeoutException)
                {
                    await Console.Error.WriteLineAsync($"error: cannot use the database: {ex.Message}");
                    return 1;
                }
                return await body(new PostgresTunnelRegistry(pg));
            }
        }
        await using var db = new SqliteDatabase(Path.Combine(Path.GetFullPath(parse.GetValue(dataDir)!), "switchboard.db"));
        await db.MigrateAsync(SqliteTunnelRegistry.Migrations, cancellationToken);
        return await body(new SqliteTunnelRegistry(db));
    }
}
