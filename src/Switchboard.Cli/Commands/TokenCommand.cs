using System.CommandLine;
using Microsoft.Extensions.Options;
using Switchboard.Server;
using Switchboard.Server.Auth;

namespace Switchboard.Cli.Commands;

internal static class TokenCommand
{
    public static Command Create()
    {
        var sub = new Option<string>("--sub") { Description = "Subject (user id) of the token.", Required = true };
        var channels = List("--channels", "Channel patterns the token may subscribe to, e.g. 'list:*'.");
        var publish = List("--publish", "Channel patterns the token may publish to.");
        var rooms = List("--rooms", "Room id patterns.");
        var envs = List("--envs", "Environment patterns (id or name).");
        var tunnels = List("--tunnels", "Tunnel name patterns the token may register.");
        var ttl = new Option<string>("--ttl") { Description = "Lifetime: 90s, 30m, 1h, 7d.", DefaultValueFactory = _ => "1h" };
        var dataDir = CommonOptions.DataDir();
        var command = new Command("token", "Print a JWT signed with the gateway's secret (from SWITCHBOARD_JWT_SECRET or the data dir).")
        {
            sub, channels, publish, rooms, envs, tunnels, ttl, dataDir,
        };
        command.SetAction(parse =>
        {
            TimeSpan lifetime;
            try
            {
                lifetime = CommonOptions.ParseDuration(parse.GetValue(ttl)!);
            }
            catch (FormatException ex)
            {
                Console.Error.WriteLine("error: --ttl: " + ex.Message);
                return 2;
            }
            Secrets secrets;
            try
            {
                secrets = Secrets.LoadOrCreate(Path.GetFullPath(parse.GetValue(dataDir)!), create: false);
            }
            catch (InvalidOperationException ex)
            {
                Console.Error.WriteLine("error: " + ex.Message);
                return 1;
            }
            var options = Options.Create(new SwitchboardOptions());
            options.Value.Auth.JwtSecret = secrets.JwtSecret;
            var service = new TokenService(options, TimeProvider.System);
            Console.WriteLine(service.Create(parse.GetValue(sub)!, lifetime, parse.GetValue(channels), parse.GetValue(publish),
                parse.GetValue(rooms), parse.GetValue(envs), parse.GetValue(tunnels)));
            return 0;
        });
        return command;
    }

    private static Option<string[]> List(string name, string description) => new(name)
    {
        Description = description + " Repeat or separate with commas.",
        AllowMultipleArgumentsPerToken = true,
        CustomParser = r => r.Tokens.SelectMany(t => t.Value.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries)).ToArray(),
    };
}
