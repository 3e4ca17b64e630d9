using System.Data.Common;
using Microsoft.AspNetCore.Http;
using Microsoft.Extensions.Logging;

namespace Switchboard.Server.Http;

/// <summary>
/// Endpoint filter for REST endpoints that read or write the store: when the database cannot be reached or fails
/// (PostgreSQL restarting, a pool timeout, SQLite busy), the caller gets <c>503 store_unavailable</c> with
/// <c>Retry-After: 1</c> instead of a 500. A write that failed this way may or may not have been stored; publish
/// responses that did not arrive are documented as "retry, and tolerate a duplicate".
/// </summary>
public sealed partial class StoreUnavailableFilter(ILogger<StoreUnavailableFilter> logger) : IEndpointFilter
{
    public async ValueTask<object?> InvokeAsync(EndpointFilterInvocationContext context, EndpointFilterDelegate next)
    {
        try
        {
            return await next(context);
        }
        catch (DbException ex) when (!context.HttpContext.Response.HasStarted)
        {
            Log.StoreFailed(logger, ex, context.HttpContext.Request.Method, context.HttpContext.Request.Path);
            context.HttpContext.Response.Headers.RetryAfter = "1";
            return ApiResults.Problem(503, "store_unavailable", "the store is unavailable; retry shortly");
        }
    }

    private static partial class Log
    {
        [LoggerMessage(1301, LogLevel.Warning, "Store failed during {Method} {Path}; answered 503.")]
        public static partial void StoreFailed(ILogger logger, Exception exception, string method, string path);
    }
}
