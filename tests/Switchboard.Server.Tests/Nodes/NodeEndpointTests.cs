using System.Net;
using System.Net.Http.Json;
using System.Text.Json;
using Switchboard.Server.Tests.Infrastructure;

namespace Switchboard.Server.Tests.Nodes;

public sealed class NodeEndpointTests
{
    [Fact]
    public async Task Single_node_deployment_lists_itself_with_its_address()
    {
        await using var gw = await TestGateway.StartAsync(o => o.NodeId = "solo");
        Assert.Equal(HttpStatusCode.Unauthorized, (await gw.Http.GetAsync("api/v1/nodes")).StatusCode);
        var body = await gw.Api.GetFromJsonAsync<JsonElement>("api/v1/nodes");
        Assert.Equal("solo", body.GetProperty("self").GetString());
        var node = Assert.Single(body.GetProperty("nodes").EnumerateArray());
        Assert.Equal("solo", node.GetProperty("id").GetString());
        Assert.Equal(gw.BaseUri.ToString().TrimEnd('/'), node.GetProperty("address").GetString());
    }
}
