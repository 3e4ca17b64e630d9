using System.Security.Cryptography;
using System.Text;
using Microsoft.AspNetCore.Http;
using Microsoft.Extensions.Options;

namespace Switchboard.Server.Auth;

/// <summary>Reads credentials from a request: JWT from <c>?token=</c>, <c>Authorization: Bearer</c> or a cookie; the API key from <c>Authorization: Bearer</c>.</summary>
public sealed class RequestAuth(TokenService tokens, IOptions<SwitchboardOptions> options)
{
    private readonly byte[] _apiKeyHash = SHA256.HashData(Encoding.UTF8.GetBytes(options.Value.Auth.ApiKey));
    private readonly string _cookieName = options.Value.Auth.CookieName;

    public TokenService Tokens => tokens;

    /// <summary>The bearer credential, or null.</summary>
    public static string? BearerToken(HttpRequest request) => BearerToken(request.Headers.Authorization.ToString());

    /// <summary>The token from the query string, the Authorization header or the cookie, in that order.</summary>
    public string? FindToken(HttpRequest request)
    {
        if (request.Query.TryGetValue("token", out var q) && !string.IsNullOrEmpty(q))
            return q.ToString();
        return BearerToken(request) ?? (request.Cookies.TryGetValue(_cookieName, out var c) ? c : null);
    }

    /// <summary>
    /// The same lookup, in the same order, for a request head read without the HTTP pipeline: the raw query string
    /// (with its <c>?</c>), the <c>Authorization</c> value and the <c>Cookie</c> header lines.
    /// </summary>
    public string? FindToken(string queryString, string? authorization, Microsoft.Extensions.Primitives.StringValues cookieHeaders) =>
        QueryToken(queryString) ?? BearerToken(authorization) ?? CookieToken(cookieHeaders);

    // Same decoding and key comparison as HttpRequest.Query.
    private static string? QueryToken(string queryString) =>
        queryString.Length > 1 && Microsoft.AspNetCore.WebUtilities.QueryHelpers.ParseNullableQuery(queryString) is { } values &&
        values.TryGetValue("token", out var token) && !string.IsNullOrEmpty(token)
            ? token.ToString()
            : null;

    /// <summary>Constant-time comparison of a presented key with the configured API key (hashing first hides the length).</summary>
    public bool IsApiKey(string? presented)
    {
        if (string.IsNullOrEmpty(presented))
            return false;
        var hash = SHA256.HashData(Encoding.UTF8.GetBytes(presented));
        return CryptographicOperations.FixedTimeEquals(hash, _apiKeyHash);
    }

    /// <summary>
    /// Authenticates a state-changing HTTP request from the <c>Authorization</c> header only: never from a cookie or the
    /// query string, so a cross-site form cannot act with a browser's ambient credentials.
    /// </summary>
    public async ValueTask<TokenValidation> AuthenticateHeaderAsync(HttpRequest request)
    {
        var bearer = BearerToken(request);
        if (bearer is not null && IsApiKey(bearer))
            return new(Grants.Server, null);
        return bearer is null
            ? new(null, "this endpoint needs 'Authorization: Bearer <API key or token>'")
            : await tokens.ValidateAsync(bearer);
    }

    /// <summary>
    /// Authenticates an HTTP or upgrade request: the API key (as bearer) yields <see cref="Grants.Server"/>, else a JWT is validated.
    /// </summary>
    public ValueTask<TokenValidation> AuthenticateAsync(HttpRequest request) => AuthenticateAsync(BearerToken(request), FindToken(request));

    /// <summary>The same for credentials already read from a request: the bearer value and the token found by <see cref="FindToken"/>.</summary>
    public async ValueTask<TokenValidation> AuthenticateAsync(string? bearer, string? token)
    {
        if (bearer is not null && IsApiKey(bearer))
            return new(Grants.Server, null);
        return await tokens.ValidateAsync(token);
    }

    /// <summary>The bearer credential of an <c>Authorization</c> header value, or null.</summary>
    public static string? BearerToken(string? authorization) =>
        authorization is not null && authorization.StartsWith("Bearer ", StringComparison.OrdinalIgnoreCase) ? authorization[7..].Trim() : null;

    /// <summary>
    /// The token cookie from <c>Cookie</c> header values, parsed by ASP.NET Core's own cookie parser, so the result is
    /// exactly what <see cref="FindToken"/> reads from <c>request.Cookies</c> (name matching, duplicates, quoting).
    /// </summary>
    private string? CookieToken(Microsoft.Extensions.Primitives.StringValues cookieHeaders)
    {
        if (cookieHeaders.Count == 0)
            return null;
        var features = new Microsoft.AspNetCore.Http.Features.FeatureCollection();
        features.Set<Microsoft.AspNetCore.Http.Features.IHttpRequestFeature>(new Microsoft.AspNetCore.Http.Features.HttpRequestFeature
        {
            Headers = new HeaderDictionary { [Microsoft.Net.Http.Headers.HeaderNames.Cookie] = cookieHeaders },
        });
        return new Microsoft.AspNetCore.Http.Features.RequestCookiesFeature(features).Cookies.TryGetValue(_cookieName, out var c) ? c : null;
    }
}
