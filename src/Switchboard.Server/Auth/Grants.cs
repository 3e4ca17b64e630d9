namespace Switchboard.Server.Auth;

/// <summary>
/// What an authenticated caller may do, read from JWT claims (see docs/protocol.md, "Tokens"):
/// <c>sub</c> (subject), <c>channels</c> (subscribe patterns), <c>publish</c> (publish patterns),
/// <c>rooms</c>, <c>envs</c>, <c>tunnels</c> (name patterns). The API key maps to <see cref="Server"/>, which may do everything.
/// </summary>
public sealed record Grants(
    string Subject,
    IReadOnlyList<string> Channels,
    IReadOnlyList<string> Publish,
    IReadOnlyList<string> Rooms,
    IReadOnlyList<string> Environments,
    IReadOnlyList<string> Tunnels,
    DateTimeOffset? ExpiresAt,
    bool IsServer = false)
{
    /// <summary>The grants of a caller holding the API key.</summary>
    public static Grants Server { get; } = new("server", ["*"], ["*"], ["*"], ["*"], ["*"], null, IsServer: true);

    public bool CanSubscribe(string channel) => Pattern.AnyMatches(Channels, channel);
    public bool CanPublish(string channel) => Pattern.AnyMatches(Publish, channel);
    public bool CanUseRoom(string roomId) => Pattern.AnyMatches(Rooms, roomId);
    public bool CanUseEnvironment(string env) => Pattern.AnyMatches(Environments, env);
    public bool CanUseTunnel(string name) => Pattern.AnyMatches(Tunnels, name);
}
