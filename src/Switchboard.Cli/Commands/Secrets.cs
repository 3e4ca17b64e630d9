using System.Security.Cryptography;

namespace Switchboard.Cli.Commands;

/// <summary>
/// The JWT secret and API key: from SWITCHBOARD_JWT_SECRET / SWITCHBOARD_API_KEY when set, else from files in the
/// data dir, generated from a CSPRNG on first start with mode 0600.
/// </summary>
internal sealed record Secrets(string JwtSecret, string ApiKey, string? JwtSecretFile, string? ApiKeyFile, bool Generated)
{
    public const string JwtFileName = "jwt-secret";
    public const string ApiKeyFileName = "api-key";

    public static Secrets LoadOrCreate(string dataDir, bool create)
    {
        var generated = false;
        var jwt = Environment.GetEnvironmentVariable("SWITCHBOARD_JWT_SECRET");
        string? jwtFile = null;
        if (string.IsNullOrEmpty(jwt))
        {
            jwtFile = Path.Combine(dataDir, JwtFileName);
            jwt = ReadOrCreate(jwtFile, create, ref generated);
        }
        var key = Environment.GetEnvironmentVariable("SWITCHBOARD_API_KEY");
        string? keyFile = null;
        if (string.IsNullOrEmpty(key))
        {
            keyFile = Path.Combine(dataDir, ApiKeyFileName);
            key = ReadOrCreate(keyFile, create, ref generated);
        }
        return new Secrets(jwt, key, jwtFile, keyFile, generated);
    }

    private static string ReadOrCreate(string path, bool create, ref bool generated)
    {
        if (File.Exists(path))
            return File.ReadAllText(path).Trim();
        if (!create)
            throw new InvalidOperationException($"no secret at {path}: start 'switchboard serve' once with this data dir, or set the SWITCHBOARD_* variable");
        Directory.CreateDirectory(Path.GetDirectoryName(path)!);
        var value = "sb_" + Convert.ToBase64String(RandomNumberGenerator.GetBytes(32)).Replace('+', '-').Replace('/', '_').TrimEnd('=');
        var options = new FileStreamOptions { Mode = FileMode.CreateNew, Access = FileAccess.Write };
        if (!OperatingSystem.IsWindows())
            options.UnixCreateMode = UnixFileMode.UserRead | UnixFileMode.UserWrite;
        using (var stream = new FileStream(path, options))
        using (var writer = new StreamWriter(stream))
            writer.Write(value);
        generated = true;
        return value;
    }
}
