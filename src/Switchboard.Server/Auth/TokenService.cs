using System.Security.Claims;
using System.Text;
using System.Text.Json;
using Microsoft.Extensions.Options;
using Microsoft.IdentityModel.JsonWebTokens;
using Microsoft.IdentityModel.Tokens;

namespace Switchboard.Server.Auth;

/// <summary>Outcome of validating a token: the grants, or why it was refused.</summary>
public readonly record struct TokenValidation(Grants? Grants, string? Error)
{
    public bool IsValid => Grants is not null;
}

/// <summary>Creates and validates HS256 JWTs: signature, exp, nbf, iss and aud are all checked.</summary>
public sealed class TokenService
{
    public const string ChannelsClaim = "channels";
    public const string PublishClaim = "publish";
    public const string RoomsClaim = "rooms";
    public const string EnvironmentsClaim = "envs";
    public const string TunnelsClaim = "tunnels";

    private const int ValidatedCacheLimit = 10_000;
    private readonly System.Collections.Concurrent.ConcurrentDictionary<string, Grants> _validated = new(StringComparer.Ordinal);
    private readonly JsonWebTokenHandler _handler = new() { MapInboundClaims = false };
    private readonly SymmetricSecurityKey _key;
    private readonly AuthOptions _options;
    private readonly TimeProvider _time;
    private readonly TokenValidationParameters _parameters;

    public TokenService(IOptions<SwitchboardOptions> options, TimeProvider time)
    {
        _options = options.Value.Auth;
        _time = time;
        _key = new SymmetricSecurityKey(Encoding.UTF8.GetBytes(_options.JwtSecret));
        _parameters = new TokenValidationParameters
        {
            IssuerSigningKey = _key,
            ValidateIssuerSigningKey = true,
            ValidAlgorithms = [SecurityAlgorithms.HmacSha256],
            ValidIssuer = _options.Issuer,
            ValidateIssuer = true,
            ValidAudience = _options.Audience,
            ValidateAudience = true,
            ValidateLifetime = true,
            RequireExpirationTime = true,
            RequireSignedTokens = true,
            ClockSkew = _options.ClockSkew,
            LifetimeValidator = ValidateLifetime,
        };
    }

    /// <summary>Mints a token. Patterns accept <c>*</c> wildcards.</summary>
    public string Create(string subject, TimeSpan lifetime, IEnumerable<string>? channels = null, IEnumerable<string>? publish = null,
        IEnumerable<string>? rooms = null, IEnumerable<string>? environments = null, IEnumerable<string>? tunnels = null, DateTimeOffset? notBefore = null)
    {
        var now = _time.GetUtcNow();
        var claims = new Dictionary<string, object>
        {
            [JwtRegisteredClaimNames.Sub] = subject,
        };
        Add(claims, ChannelsClaim, channels);
        Add(claims, PublishClaim, publish);
        Add(claims, RoomsClaim, rooms);
        Add(claims, EnvironmentsClaim, environments);
        Add(claims, TunnelsClaim, tunnels);
        var descriptor = new SecurityTokenDescriptor
        {
            Issuer = _options.Issuer,
            Audience = _options.Audience,
            IssuedAt = now.UtcDateTime,
            NotBefore = (notBefore ?? now).UtcDateTime,
            Expires = now.Add(lifetime).UtcDateTime,
            Claims = claims,
            SigningCredentials = new SigningCredentials(_key, SecurityAlgorithms.HmacSha256),
        };
        return _handler.CreateToken(descriptor);
    }

    private static void Add(Dictionary<string, object> claims, string name, IEnumerable<string>? values)
    {
        if (values is null)
            return;
        var list = values.Where(v => !string.IsNullOrWhiteSpace(v)).ToArray();
        if (list.Length > 0)
            claims[name] = list;
    }

    public async ValueTask<TokenValidation> ValidateAsync(string? token)
    {
        if (string.IsNullOrWhiteSpace(token))
            return new(null, "missing token");
        if (token.Length > 16 * 1024)
            return new(null, "token too long");
        // Validated tokens are remembered until they expire: a reconnect storm (or many sockets of one service account)
        // costs one signature check per token, and connections with the same token share one Grants instance.
        if (_validated.TryGetValue(token, out var known))
        {
            if (known.ExpiresAt is { } exp && exp + _options.ClockSkew >= _time.GetUtcNow())
                return new(known, null);
            _validated.TryRemove(token, out _);
        }
        TokenValidationResult result;
        try
        {
            result = await _handler.ValidateTokenAsync(token, _parameters);
        }
        catch (ArgumentException)
        {
            return new(null, "malformed token");
        }
        if (!result.IsValid)
        {
            return new(null, result.Exception switch
            {
                SecurityTokenExpiredException => "token expired",
                SecurityTokenNotYetValidException => "token not yet valid",
                SecurityTokenInvalidAudienceException => "token audience is not accepted",
                SecurityTokenInvalidIssuerException => "token issuer is not accepted",
                SecurityTokenSignatureKeyNotFoundException or SecurityTokenInvalidSignatureException => "token signature is invalid",
                _ => "token is invalid",
            });
        }
        var jwt = (JsonWebToken)result.SecurityToken;
        var subject = jwt.Subject;
        if (string.IsNullOrEmpty(subject))
            return new(null, "token has no subject");
        var grants = new Grants(
            subject,
            ReadList(jwt, ChannelsClaim),
            ReadList(jwt, PublishClaim),
            ReadList(jwt, RoomsClaim),
            ReadList(jwt, EnvironmentsClaim),
            ReadList(jwt, TunnelsClaim),
            new DateTimeOffset(jwt.ValidTo, TimeSpan.Zero));
        if (_validated.Count >= ValidatedCacheLimit)
            _validated.Clear(); // bounded: a flood of distinct tokens only costs re-validation
        _validated[token] = grants;
        return new(grants, null);
    }

    private bool ValidateLifetime(DateTime? notBefore, DateTime? expires, SecurityToken token, TokenValidationParameters p)
    {
        var now = _time.GetUtcNow().UtcDateTime;
        if (expires is null)
            throw new SecurityTokenNoExpirationException("token has no exp");
        if (notBefore is { } nbf && nbf > now + p.ClockSkew)
            throw new SecurityTokenNotYetValidException("token not yet valid") { NotBefore = nbf };
        if (expires.Value < now - p.ClockSkew)
            throw new SecurityTokenExpiredException("token expired") { Expires = expires.Value };
        return true;
    }

    private static string[] ReadList(JsonWebToken jwt, string name)
    {
        if (!jwt.TryGetPayloadValue<JsonElement>(name, out var element))
        {
            // Single string value.
            return jwt.TryGetPayloadValue<string>(name, out var single) && !string.IsNullOrEmpty(single) ? [single] : [];
        }
        return element.ValueKind switch
        {
            JsonValueKind.Array => element.EnumerateArray().Where(e => e.ValueKind == JsonValueKind.String).Select(e => e.GetString()!).ToArray(),
            JsonValueKind.String => [element.GetString()!],
            _ => [],
        };
    }
}
