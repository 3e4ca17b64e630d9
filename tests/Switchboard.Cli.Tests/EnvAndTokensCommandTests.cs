using System.Text.RegularExpressions;
using Npgsql;

namespace Switchboard.Cli.Tests;

/// <summary>The operator workflow from a terminal: environments and agent tokens through the real CLI against a real server.</summary>
public sealed partial class EnvAndTokensCommandTests : CliWorkingDirectory
{
    private Task<(int ExitCode, string Stdout, string Stderr)> Run(params string[] args) => CliProcess.RunAsync(WorkDir, null, args);

    [Fact]
    public async Task Env_create_ls_logs_and_rm_work_from_the_cli_and_bad_flags_are_explained()
    {
        await using var serve = CliProcess.Start(WorkDir, null, "serve", "--urls", "http://127.0.0.1:0");
        var url = await serve.WaitForListeningUrlAsync();

        var created = await Run("env", "create", "demo", "--server", url, "-e", "GREETING=hello", "--",
            "sh", "-c", "echo \"$GREETING one\"; echo two >&2; echo three; sleep 60");
        Assert.True(created.ExitCode == 0, created.Stderr);
        Assert.Matches(@"^demo\tenv_[0-9a-f]{16}\trunning", created.Stdout);

        var ls = await Run("env", "ls", "--server", url);
        Assert.Equal(0, ls.ExitCode);
        Assert.Contains("demo\tenv_", ls.Stdout);
        Assert.Contains("sh -c", ls.Stdout);

        // History without -f prints what is there and exits; wait until all three lines have been produced.
        var logs = (ExitCode: -1, Stdout: "", Stderr: "");
        for (var i = 0; i < 100; i++)
        {
            logs = await Run("logs", "demo", "--server", url, "--seq");
            if (logs.Stdout.Contains("three", StringComparison.Ordinal))
                break;
            await Task.Delay(100);
        }
        Assert.Equal(0, logs.ExitCode);
        // Like docker logs: the process's stdout lines on stdout, its stderr lines on stderr.
        var lines = logs.Stdout.Split('\n', StringSplitOptions.RemoveEmptyEntries);
        Assert.Equal(2, lines.Length);
        Assert.Contains("hello one", lines[0]);
        Assert.Contains("three", lines[1]);
        Assert.Contains("two", logs.Stderr);

        var errors = await Run("logs", "demo", "--server", url, "--stderr");
        Assert.Equal(0, errors.ExitCode);
        Assert.Equal("", errors.Stdout.Trim());
        Assert.Equal("two", errors.Stderr.Trim());

        var noImage = await Run("env", "create", "box", "--server", url, "--driver", "docker");
        Assert.Equal(1, noImage.ExitCode);
        Assert.Contains("--driver docker needs --image", noImage.Stderr);
        var noCommand = await Run("env", "create", "empty", "--server", url);
        Assert.Equal(1, noCommand.ExitCode);
        Assert.Contains("give the command to run after --", noCommand.Stderr);
        var badName = await Run("env", "create", "-bad name", "--server", url, "--", "true");
        Assert.NotEqual(0, badName.ExitCode);

        Assert.Equal(0, (await Run("env", "rm", "demo", "--server", url)).ExitCode);
        var after = await Run("env", "ls", "--server", url);
        Assert.DoesNotContain("demo", after.Stdout);
        var gone = await Run("logs", "demo", "--server", url);
        Assert.Equal(1, gone.ExitCode);
    }

    [Fact]
    public async Task Agent_tokens_are_created_listed_without_secrets_and_revoked_in_sqlite_and_postgres()
    {
        await CheckTokensAsync([]);

        var admin = Environment.GetEnvironmentVariable("SWITCHBOARD_TEST_POSTGRES")
            ?? throw new InvalidOperationException("SWITCHBOARD_TEST_POSTGRES is not set: run ./test.sh (it starts PostgreSQL).");
        var name = "sbcli_" + Guid.NewGuid().ToString("N")[..12];
        await using (var connection = new NpgsqlConnection(admin))
        {
            await connection.OpenAsync();
            await using var create = new NpgsqlCommand($"CREATE DATABASE {name} TEMPLATE template0", connection);
            await create.ExecuteNonQueryAsync();
        }
        try
        {
            await CheckTokensAsync(["--database", new NpgsqlConnectionStringBuilder(admin) { Database = name }.ConnectionString]);
        }
        finally
        {
            NpgsqlConnection.ClearAllPools();
            await using var connection = new NpgsqlConnection(admin);
            await connection.OpenAsync();
            await using var drop = new NpgsqlCommand($"DROP DATABASE IF EXISTS {name} WITH (FORCE)", connection);
            await drop.ExecuteNonQueryAsync();
        }

        var bad = await Run("tokens", "ls", "--database", "Host=127.0.0.1;Port=1;Database=nowhere;Timeout=2");
        Assert.Equal(1, bad.ExitCode);
        Assert.Contains("cannot use the database", bad.Stderr);
    }

    private async Task CheckTokensAsync(string[] store)
    {
        var created = await Run(["tokens", "create", "--label", "laptop", .. store]);
        Assert.True(created.ExitCode == 0, created.Stderr);
        var secret = created.Stdout.Trim();
        Assert.True(secret.Length >= 32, secret);
        var id = Regex.Match(created.Stderr, @"created agent token (\S+);").Groups[1].Value;
        Assert.NotEmpty(id);

        var ls = await Run(["tokens", "ls", .. store]);
        Assert.Equal(0, ls.ExitCode);
        Assert.Contains(id, ls.Stdout);
        Assert.Contains("laptop", ls.Stdout);
        Assert.Contains("active", ls.Stdout);
        Assert.DoesNotContain(secret, ls.Stdout);

        Assert.Equal(0, (await Run(["tokens", "revoke", id, .. store])).ExitCode);
        Assert.Contains("revoked", (await Run(["tokens", "ls", .. store])).Stdout);
        var again = await Run(["tokens", "revoke", id, .. store]);
        Assert.Equal(1, again.ExitCode);
        Assert.Contains("no active token", again.Stderr);
    }
}
