using System.Collections.Concurrent;
using System.Net;
using System.Net.WebSockets;
using System.Security.Cryptography;
using System.Text;
using Microsoft.AspNetCore.Http;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Options;
using Switchboard.Protocol;
using Switchboard.Protocol.Tunnels;
using Switchboard.Server.Auth;
using Switchboard.Server.Connections;

namespace Switchboard.Server.Tunnels;

/// <summary>The live tunnels of this node, the handshake that admits an agent, and the registry records.</summary>
public sealed partial class TunnelHub(
    ITunnelRegistry registry,
    TokenService tokens,
    IOptions<SwitchboardOptions> options,
    IOptions<TunnelOptions> tunnelOptions,
    TimeProvider time,
    ILogger<TunnelHub> logger)
{
    /// <summary>Prefix of agent tokens (the rest is 32 random bytes, base64url).</summary>
    public const string AgentTokenPrefix = "sbat_";

    private const string Alphabet = "abcdefghijklmnopqrstuvwxyz0123456789";
    private readonly ConcurrentDictionary<string, TunnelSession> _live = new(StringComparer.OrdinalIgnoreCase);
    private readonly Lock _registerLock = new();

    public TunnelSession? Find(string name) => _live.TryGetValue(name, out var s) ? s : null;

    public IEnumerable<TunnelSession> Sessions => _live.Values;

    public string Domain => options.Value.TunnelDomain;

    /// <summary>Names: DNS labels, lower case, 1-63 characters.</summary>
    public static bool IsValidName(string name)
    {
        if (name.Length is < 1 or > 63 || name[0] == '-' || name[^1] == '-')
            return false;
        foreach (var c in name)
        {
            if (!(c is >= 'a' and <= 'z' or >= '0' and <= '9' or '-'))
                return false;
        }
        return true;
    }

    /// <summary>A random name from the CSPRNG (10 characters of [a-z0-9], about 51 bits).</summary>
    public static string RandomName(string prefix = "") => prefix + RandomNumberGenerator.GetString(Alphabet, 10);

    /// <summary>Creates an agent token; returns the secret (shown once) and its record (hash only).</summary>
    public static (string Secret, AgentTokenRecord Record) NewAgentToken(string? label, DateTimeOffset now)
    {
        var secret = AgentTokenPrefix + Convert.ToBase64String(RandomNumberGenerator.GetBytes(32)).Replace('+', '-').Replace('/', '_').TrimEnd('=');
        var id = Convert.ToHexStringLower(RandomNumberGenerator.GetBytes(6));
        return (secret, new AgentTokenRecord(id, SHA256.HashData(Encoding.UTF8.GetBytes(secret)), label, now, null));
    }

    /// <summary>
    /// Handles the agent's first frame. On success registers and returns the session (hello-ack sent); on failure
    /// sends an error frame, closes the connection with the matching code and returns null.
    /// </summary>
    internal async Task<TunnelSession?> HandshakeAsync(WsConnection connection, ReadOnlyMemory<byte> frame, WebSocketMessageType type,
        HttpRequest request, CancellationToken cancellationToken)
    {
        if (type != WebSocketMessageType.Binary || frame.Length < TunnelProtocol.HeaderSize || TunnelProtocol.TypeOf(frame.Span) != TunnelFrameType.Hello)
            return Refuse(connection, CloseCodes.PolicyViolation, "the first frame must be a tunnel hello");
        TunnelHello hello;
        try
        {
            hello = TunnelHello.Decode(TunnelProtocol.PayloadOf(frame.Span));
        }
        catch (FormatException ex)
        {
            return Refuse(connection, CloseCodes.PolicyViolation, "malformed hello: " + ex.Message);
        }
        if (hello.Version != TunnelProtocol.Version)
            return Refuse(connection, CloseCodes.PolicyViolation, $"unsupported tunnel protocol version {hello.Version}; this gateway speaks {TunnelProtocol.Version}");

        // Who is this? An agent token, or a JWT whose tunnels claim allows the name.
        string owner;
        Grants? grants = null;
        if (hello.Token.StartsWith(AgentTokenPrefix, StringComparison.Ordinal))
        {
            var hash = SHA256.HashData(Encoding.UTF8.GetBytes(hello.Token));
            var record = await registry.FindTokenAsync(hash, cancellationToken);
            if (record is null || record.RevokedAt is not null || !CryptographicOperations.FixedTimeEquals(record.Hash, hash))
                return Refuse(connection, CloseCodes.Unauthorized, "invalid or revoked agent token");
            owner = "token:" + record.Id;
        }
        else
        {
            var validation = await tokens.ValidateAsync(string.IsNullOrEmpty(hello.Token) ? null : hello.Token);
            if (validation.Grants is null)
                return Refuse(connection, CloseCodes.Unauthorized, "invalid token: " + (validation.Error ?? "missing"));
            grants = validation.Grants;
            owner = "user:" + grants.Subject;
        }

        var allow = new List<IPNetwork>();
        foreach (var cidr in hello.AllowCidrs)
        {
            if (!IPNetwork.TryParse(cidr, out var net))
                return Refuse(connection, CloseCodes.PolicyViolation, $"invalid CIDR '{cidr}'");
            allow.Add(net);
        }

        var now = time.GetUtcNow();
        string name;
        if (hello.Subdomain is { } wanted)
        {
            name = wanted.ToLowerInvariant();
            if (!IsValidName(name))
                return Refuse(connection, CloseCodes.PolicyViolation, $"invalid subdomain '{wanted}': use a-z, 0-9 and '-', at most 63 characters");
            if (grants is not null && !grants.CanUseTunnel(name))
                return Refuse(connection, CloseCodes.Forbidden, $"the token does not grant tunnel '{name}'");
            var holder = await registry.ReserveAsync(name, owner, now, cancellationToken);
            if (holder != owner)
                return Refuse(connection, CloseCodes.Forbidden, $"subdomain '{name}' is reserved by another token");
        }
        else
        {
            var prefix = RandomPrefix(grants);
            if (prefix is null)
                return Refuse(connection, CloseCodes.Forbidden, "the token grants no pattern a random name can match; pass a subdomain");
            while (true)
            {
                name = RandomName(prefix);
                if (await registry.ReserveAsync(name, owner, now, cancellationToken) == owner)
                    break;
            }
        }

        var session = new TunnelSession(connection, name, owner, hello, [.. allow], tunnelOptions.Value);
        var scheme = request.Scheme;
        var port = request.Host.Port is { } p ? ":" + p : "";
        var publicUrl = $"{scheme}://{name}.{Domain}{port}/";
        var pathUrl = $"{scheme}://{request.Host}/t/{name}/";
        var t = tunnelOptions.Value;
        TunnelSession? replaced = null;
        lock (_registerLock)
        {
            if (_live.TryGetValue(name, out var existing))
            {
                if (existing.Owner != owner)
                    return Refuse(connection, CloseCodes.Forbidden, $"subdomain '{name}' is in use");
                replaced = existing;
            }
            // The ack is queued before the session becomes visible: a public request that finds the session a moment
            // later queues its request frames behind the ack, so the agent never sees a request before its ack (it would
            // refuse such a gateway).
            connection.TrySend(OutboundFrame.Binary(new TunnelHelloAck(TunnelProtocol.Version, name, publicUrl, pathUrl, t.StreamWindowBytes, t.MaxRequestBodyBytes,
                t.DataPathMinBytes > 0 ? TunnelProtocol.DataPathPrefix : "", t.DataPathMinBytes > 0 ? session.DataKey : "", t.DataPathMinBytes).Encode()));
            _live[name] = session;
        }
        if (replaced is not null)
        {
            // The same owner reconnected before its old connection was noticed as dead: the new one wins.
            replaced.Connection.Close(CloseCodes.ResourceClosed, "replaced by a newer connection for this tunnel", drain: false);
            replaced.Terminate();
        }
        // Other nodes route by this registration; until it is written they answer 404 for a moment, as for any new tunnel.
        await registry.RegisterAsync(new TunnelRegistration(name, options.Value.NodeId, connection.Id, owner, now), cancellationToken);
        Log.Registered(logger, name, owner, connection.Id);
        return session;
    }

    /// <summary>Removes a session whose connection ended and fails its in-flight streams.</summary>
    internal async Task RemoveAsync(TunnelSession session)
    {
        session.Terminate();
        bool removed;
        lock (_registerLock)
            removed = _live.TryRemove(new KeyValuePair<string, TunnelSession>(session.Name, session));
        if (removed)
        {
            try
            {
                await registry.UnregisterAsync(session.Name, session.Connection.Id, CancellationToken.None);
            }
            catch (Exception ex) when (ex is not OutOfMemoryException)
            {
                Log.UnregisterFailed(logger, ex, session.Name);
            }
            Log.Disconnected(logger, session.Name, session.Connection.CloseCode);
        }
    }

    private static string? RandomPrefix(Grants? grants)
    {
        if (grants is null || grants.CanUseTunnel(RandomName()))
            return "";
        foreach (var pattern in grants.Tunnels)
        {
            if (pattern.EndsWith('*') && pattern.IndexOf('*') == pattern.Length - 1 && IsValidName(pattern[..^1] + "a"))
                return pattern[..^1];
        }
        return null;
    }

    private static TunnelSession? Refuse(WsConnection connection, int code, string message)
    {
        connection.TrySend(OutboundFrame.Binary(TunnelProtocol.Error(code, message)));
        connection.Close(code, message, drain: true);
        return null;
    }

    private static partial class Log
    {
        [LoggerMessage(3001, LogLevel.Information, "Tunnel '{Name}' registered by {Owner} on connection {ConnectionId}.")]
        public static partial void Registered(ILogger logger, string name, string owner, string connectionId);

        [LoggerMessage(3002, LogLevel.Information, "Tunnel '{Name}' disconnected ({CloseCode}).")]
        public static partial void Disconnected(ILogger logger, string name, int closeCode);

        [LoggerMessage(3003, LogLevel.Warning, "Could not remove the registration of tunnel '{Name}'.")]
        public static partial void UnregisterFailed(ILogger logger, Exception exception, string name);
    }
}
