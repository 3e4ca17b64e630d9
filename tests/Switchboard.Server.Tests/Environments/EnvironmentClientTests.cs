using Switchboard.Client.Environments;
using Switchboard.Protocol.Environments;
using Switchboard.Server.Tests.Infrastructure;

namespace Switchboard.Server.Tests.Environments;

[Collection("Environments")]
public sealed class EnvironmentClientTests
{
    [Fact]
    public async Task Client_creates_lists_controls_and_streams_with_resume()
    {
        await using var gw = await EnvTestKit.StartAsync();
        using var client = new EnvironmentClient(gw.BaseUri, TestGateway.ApiKey);
        var info = await client.CreateAsync(new CreateEnvironmentRequest("viaclient", "process", "/bin/sh",
            ["-c", "i=1; while [ $i -le 30 ]; do echo c$i; i=$((i+1)); done; sleep 60"], null, null, null, null));
        Assert.Equal(EnvironmentStatus.Running, info.Status);
        Assert.Equal("viaclient", Assert.Single(await client.ListAsync()).Name);
        await EnvTestKit.WaitUntilAsync(() => client.GetAsync("viaclient").Result.LastSeq == 30);

        var all = new List<LogLine>();
        var last = await client.StreamLogsAsync("viaclient", since: null, tail: 100, stream: null, follow: false, all.Add);
        Assert.Equal(30, last);
        Assert.Equal(Enumerable.Range(1, 30).Select(i => "c" + i), all.Select(l => l.Message));

        var rest = new List<LogLine>();
        await client.StreamLogsAsync("viaclient", since: 25, tail: null, stream: null, follow: false, rest.Add);
        Assert.Equal([26L, 27, 28, 29, 30], rest.Select(l => l.Seq));

        Assert.Equal(EnvironmentStatus.Stopped, (await client.ActionAsync("viaclient", "stop")).Status);
        var missing = await Assert.ThrowsAsync<EnvironmentApiException>(() => client.GetAsync("nope"));
        Assert.Equal(404, missing.Status);
        await client.DeleteAsync("viaclient");
        Assert.Empty(await client.ListAsync());
    }
}
