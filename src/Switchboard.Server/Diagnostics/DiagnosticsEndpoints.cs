using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Routing;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Options;
using Switchboard.Server.Connections;
using Switchboard.Server.Http;

namespace Switchboard.Server.Diagnostics;

public static class DiagnosticsEndpoints
{
    public static IEndpointRouteBuilder MapDiagnostics(this IEndpointRouteBuilder app)
    {
        // Liveness/readiness: 200 while serving, 503 once shutdown began (so a load balancer drains this node).
        app.MapGet("/healthz", (ConnectionManager manager) => manager.IsShuttingDown
            ? Results.Text("shutting down\n", statusCode: 503)
            : Results.Text("ok\n"));

        // Prometheus text format. Needs the API key unless Switchboard:PublicMetrics is true.
        app.MapGet("/metrics", (HttpContext context, PrometheusExporter exporter, Auth.RequestAuth auth, IOptions<SwitchboardOptions> options) =>
        {
            if (!options.Value.PublicMetrics && !auth.IsApiKey(Auth.RequestAuth.BearerToken(context.Request)))
                return ApiResults.Unauthorized("/metrics needs the API key as 'Authorization: Bearer <key>' (or set Switchboard:PublicMetrics)");
            return Results.Text(exporter.Collect(), "text/plain; version=0.0.4; charset=utf-8");
        });
        return app;
    }
}
