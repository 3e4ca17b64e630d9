using Microsoft.AspNetCore.Http;
using Switchboard.Server.Auth;

namespace Switchboard.Server.Http;

/// <summary>Endpoint filter that admits only callers presenting the API key as <c>Authorization: Bearer</c>.</summary>
public sealed class ApiKeyFilter(RequestAuth auth) : IEndpointFilter
{
    public ValueTask<object?> InvokeAsync(EndpointFilterInvocationContext context, EndpointFilterDelegate next)
    {
        if (!auth.IsApiKey(RequestAuth.BearerToken(context.HttpContext.Request)))
        {
            context.HttpContext.Response.Headers.WWWAuthenticate = "Bearer";
            return ValueTask.FromResult<object?>(ApiResults.Unauthorized("this endpoint needs the API key as 'Authorization: Bearer <key>'"));
        }
        return next(context);
    }
}
