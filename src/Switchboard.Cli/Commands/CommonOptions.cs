using System.CommandLine;
using System.Globalization;

namespace Switchboard.Cli.Commands;

internal static class CommonOptions
{
    public static Option<string> DataDir() => new("--data-dir")
    {
        Description = "Directory for the SQLite file and generated secrets (env SWITCHBOARD_DATA_DIR).",
        DefaultValueFactory = _ => Environment.GetEnvironmentVariable("SWITCHBOARD_DATA_DIR") is { Length: > 0 } d ? d : "./data",
    };

    /// <summary>The PostgreSQL connection string of a cluster (env <c>SWITCHBOARD_DATABASE</c>); none means the SQLite file of <c>--data-dir</c>.</summary>
    public static Option<string?> Database() => new("--database")
    {
        Description = "PostgreSQL connection string for several nodes (env SWITCHBOARD_DATABASE); default: the SQLite file in --data-dir.",
        DefaultValueFactory = _ => Environment.GetEnvironmentVariable("SWITCHBOARD_DATABASE") is { Length: > 0 } d ? d : null,
    };

    /// <summary>Parses 90s, 30m, 1h, 7d, or a TimeSpan (01:00:00).</summary>
    public static TimeSpan ParseDuration(string text)
    {
        text = text.Trim();
        if (text.Length >= 2 && double.TryParse(text[..^1], NumberStyles.Float, CultureInfo.InvariantCulture, out var n) && n > 0)
        {
            switch (char.ToLowerInvariant(text[^1]))
            {
                case 's': return TimeSpan.FromSeconds(n);
                case 'm': return TimeSpan.FromMinutes(n);
                case 'h': return TimeSpan.FromHours(n);
                case 'd': return TimeSpan.FromDays(n);
            }
        }
        if (TimeSpan.TryParse(text, CultureInfo.InvariantCulture, out var ts) && ts > TimeSpan.Zero)
            return ts;
        throw new FormatException($"'{text}' is not a duration (use 90s, 30m, 1h, 7d)");
    }
}
