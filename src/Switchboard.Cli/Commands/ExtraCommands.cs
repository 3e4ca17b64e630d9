using System.CommandLine;

namespace Switchboard.Cli.Commands;

/// <summary>Commands contributed by features (tunnel, tokens, env, logs, exec, status).</summary>
internal static class ExtraCommands
{
    public static IEnumerable<Command> Create()
    {
        yield return TunnelCommand.Create();
        yield return TokensCommand.Create();
        yield return EnvCommands.Env();
        yield return EnvCommands.Logs();
        yield return EnvCommands.Exec();
        yield return EnvCommands.Status();
    }
}
