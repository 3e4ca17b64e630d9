using Microsoft.AspNetCore.Http;
using Switchboard.Protocol;

namespace Switchboard.Server.Http;

/// <summary>Uniform JSON error bodies: <c>{"error": code, "message": text}</c>.</summary>
public static class ApiResults
{
    public static IResult Problem(int status, string error, string message) =>
        Results.Json(new ProblemBody(error, message), ProtocolJsonContext.Default.ProblemBody, statusCode: status);

    public static IResult Unauthorized(string message = "missing or invalid credentials") => Problem(StatusCodes.Status401Unauthorized, "unauthorized", message);

    public static IResult Forbidden(string message = "the credentials do not grant access") => Problem(StatusCodes.Status403Forbidden, "forbidden", message);

    public static IResult NotFound(string message) => Problem(StatusCodes.Status404NotFound, "not_found", message);

    public static IResult BadRequest(string message) => Problem(StatusCodes.Status400BadRequest, "bad_request", message);

    public static Task WriteProblemAsync(HttpContext context, int status, string error, string message)
    {
        context.Response.StatusCode = status;
        return context.Response.WriteAsJsonAsync(new ProblemBody(error, message), ProtocolJsonContext.Default.ProblemBody, contentType: null, context.RequestAborted);
    }
}
