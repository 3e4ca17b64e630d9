using System.Net;
using System.Threading.RateLimiting;
using Microsoft.Extensions.Options;

namespace Switchboard.Server.Limits;

/// <summary>New-connection rate per client IP (token bucket). Above it, upgrades and SSE streams get HTTP 429 with Retry-After.</summary>
public sealed class ConnectionRateLimiter : IDisposable
{
    private readonly PartitionedRateLimiter<IPAddress> _limiter;

    public ConnectionRateLimiter(IOptions<SwitchboardOptions> options)
    {
        var limits = options.Value.Limits;
        _limiter = PartitionedRateLimiter.Create<IPAddress, IPAddress>(ip => RateLimitPartition.GetTokenBucketLimiter(ip, _ => new TokenBucketRateLimiterOptions
        {
            TokenLimit = limits.ConnectionBurstPerIp,
            TokensPerPeriod = limits.ConnectionsPerIpPerSecond,
            ReplenishmentPeriod = TimeSpan.FromSeconds(1),
            QueueLimit = 0,
            AutoReplenishment = true,
        }));
    }

    /// <summary>True when a connection from <paramref name="ip"/> may proceed now.</summary>
    public bool TryAcquire(IPAddress? ip)
    {
        using var lease = _limiter.AttemptAcquire(ip ?? IPAddress.None);
        return lease.IsAcquired;
    }

    public void Dispose() => _limiter.Dispose();
}
