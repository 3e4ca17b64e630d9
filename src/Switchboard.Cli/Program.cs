using System.CommandLine;
using Switchboard.Cli.Commands;

AgentHandoff.TryExec(args);
var root = new RootCommand("Switchboard: self-hosted real-time gateway (tunnels, rooms, channels, environments).");
root.Subcommands.Add(ServeCommand.Create());
root.Subcommands.Add(TokenCommand.Create());
root.Subcommands.Add(ChannelCommands.Publish());
root.Subcommands.Add(ChannelCommands.Subscribe());
foreach (var command in ExtraCommands.Create())
    root.Subcommands.Add(command);
return await root.Parse(args).InvokeAsync();
