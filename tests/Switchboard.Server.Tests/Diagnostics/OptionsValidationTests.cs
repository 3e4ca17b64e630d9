using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Options;
using Switchboard.Server.Tests.Infrastructure;
using Switchboard.Server.Tunnels;

namespace Switchboard.Server.Tests.Diagnostics;

/// <summary>Out-of-range options stop the start with a message naming the option, in every section.</summary>
public sealed class OptionsValidationTests
{
    [Fact]
    public async Task A_limit_out_of_range_in_a_nested_section_stops_the_start()
    {
        var ex = await Assert.ThrowsAsync<OptionsValidationException>(() => TestGateway.StartAsync(o => o.Limits.MaxMessageBytes = 10));
        Assert.Contains("MaxMessageBytes", ex.Message, StringComparison.Ordinal);

        ex = await Assert.ThrowsAsync<OptionsValidationException>(() => TestGateway.StartAsync(o => o.Channels.HistorySize = -1));
        Assert.Contains("HistorySize", ex.Message, StringComparison.Ordinal);

        ex = await Assert.ThrowsAsync<OptionsValidationException>(() => TestGateway.StartAsync(o => o.TransportBlockBytes = 1024));
        Assert.Contains("TransportBlockBytes", ex.Message, StringComparison.Ordinal);
    }

    [Fact]
    public async Task A_tunnel_option_out_of_range_stops_the_start()
    {
        var ex = await Assert.ThrowsAsync<OptionsValidationException>(() =>
            TestGateway.StartAsync(services: s => s.Configure<TunnelOptions>(t => t.MaxConcurrentStreams = 0)));
        Assert.Contains("MaxConcurrentStreams", ex.Message, StringComparison.Ordinal);
    }
}
