using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Options;

namespace Switchboard.Server.Connections;

/// <summary>
/// One timer for all connections (as Kestrel's heartbeat): sends pings when due and closes stale connections.
/// Ticks at a quarter of the heartbeat interval, at most once a second, so the timeout is honoured within that slack.
/// </summary>
internal sealed class HeartbeatService(ConnectionManager manager, IOptions<SwitchboardOptions> options, TimeProvider time) : BackgroundService
{
    protected override async Task ExecuteAsync(CancellationToken stoppingToken)
    {
        var hb = options.Value.Heartbeat;
        var period = TimeSpan.FromTicks(Math.Clamp(hb.Interval.Ticks / 4, TimeSpan.FromMilliseconds(10).Ticks, TimeSpan.FromSeconds(1).Ticks));
        using var timer = new PeriodicTimer(period, time);
        try
        {
            while (await timer.WaitForNextTickAsync(stoppingToken))
                manager.HeartbeatTick();
        }
        catch (OperationCanceledException)
        {
        }
    }
}
