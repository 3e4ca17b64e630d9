using System.CommandLine;
using Switchboard.Cli.Commands;

var root = new RootCommand("Switchboard tunnel agent: expose a local server through a Switchboard gateway.");
root.Subcommands.Add(TunnelCommand.Create());
return await root.Parse(args).InvokeAsync();
