using Microsoft.Extensions.DependencyInjection;
using Switchboard.Server.Tests.Infrastructure;
using Switchboard.Storage.Postgres;
using Switchboard.Storage.Postgres.Tests;

namespace Switchboard.Server.Tests.Cluster;

/// <summary>Several real gateways (Kestrel on 127.0.0.1:0) sharing one PostgreSQL database: a cluster in one process.</summary>
public sealed class TestCluster : IAsyncDisposable
{
    private TestCluster(string connectionString, List<TestGateway> nodes)
    {
        ConnectionString = connectionString;
        Nodes = nodes;
    }

    public string ConnectionString { get; }

    public List<TestGateway> Nodes { get; }

    public TestGateway this[int index] => Nodes[index];

    /// <summary>Starts <paramref name="count"/> nodes (ids node-1..node-N) at once on a fresh schema of the fixture's database.</summary>
    public static async Task<TestCluster> StartAsync(PostgresFixture fixture, int count, Action<SwitchboardOptions>? configure = null)
    {
        var cs = await fixture.CreateSchemaAsync();
        var nodes = await Task.WhenAll(Enumerable.Range(1, count).Select(i => StartNodeAsync(cs, "node-" + i, configure)));
        return new TestCluster(cs, [.. nodes]);
    }

    public static Task<TestGateway> StartNodeAsync(string connectionString, string nodeId, Action<SwitchboardOptions>? configure = null) =>
        TestGateway.StartAsync(o =>
        {
            o.NodeId = nodeId;
            configure?.Invoke(o);
        }, services: s => s.AddSwitchboardPostgres(connectionString));

    public async ValueTask DisposeAsync()
    {
        await Task.WhenAll(Nodes.Select(n => n.DisposeAsync().AsTask()));
    }
}
