using Microsoft.AspNetCore.Builder;

namespace Switchboard.Server.Tests.Infrastructure;

internal static class WebApps
{
    /// <summary>Stops a test's helper app (bounded at 5 s) and disposes it either way.</summary>
    public static async ValueTask StopAndDisposeAsync(this WebApplication app)
    {
        using var timeout = new CancellationTokenSource(TimeSpan.FromSeconds(5));
        try
        {
            await app.StopAsync(timeout.Token);
        }
        finally
        {
            await app.DisposeAsync();
        }
    }
}
