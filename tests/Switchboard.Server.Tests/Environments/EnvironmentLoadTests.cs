using System.Net;
using System.Text.Json;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.DependencyInjection.Extensions;
using Switchboard.Server.Environments;
using Switchboard.Server.Tests.Infrastructure;
using Switchboard.Storage.Sqlite.Environments;

namespace Switchboard.Server.Tests.Environments;

/// <summary>The store failing while the node loads its environments at start-up (a database restarting).</summary>
public sealed class EnvironmentLoadTests
{
    [Fact]
    public async Task A_store_that_fails_at_start_up_is_retried_and_the_node_keeps_serving()
    {
        var failures = 2;
        await using var gw = await TestGateway.StartAsync(services: s => s.Replace(ServiceDescriptor.Singleton<IEnvironmentStore>(sp =>
            new FailingListStore(ActivatorUtilities.CreateInstance<SqliteEnvironmentStore>(sp), () => Interlocked.Decrement(ref failures) >= 0))));
        await using var socket = await gw.ConnectChannelsAsync();

        // The load is retried (250 ms, then 500 ms) until the store answers; the environments API waits for it.
        var list = JsonDocument.Parse(await gw.Api.GetStringAsync("api/v1/environments")).RootElement.GetProperty("environments");
        Assert.Equal(0, list.GetArrayLength());
        Assert.True(Volatile.Read(ref failures) < 0, "the store never failed: the test did not exercise the retry");

        // The node did not stop: the connected socket is still open and the node reports healthy.
        Assert.Equal(System.Net.WebSockets.WebSocketState.Open, socket.Socket.State);
        using var health = await gw.Http.GetAsync("healthz");
        Assert.Equal(HttpStatusCode.OK, health.StatusCode);
    }

    private sealed class FailingListStore(IEnvironmentStore inner, Func<bool> fail) : IEnvironmentStore
    {
        public ValueTask<IReadOnlyList<EnvironmentRecord>> ListAsync(CancellationToken cancellationToken) =>
            fail() ? throw new InvalidOperationException("the store is unreachable") : inner.ListAsync(cancellationToken);

        public ValueTask<bool> CreateAsync(EnvironmentRecord environment, CancellationToken cancellationToken) => inner.CreateAsync(environment, cancellationToken);
        public ValueTask<EnvironmentRecord?> GetAsync(string id, CancellationToken cancellationToken) => inner.GetAsync(id, cancellationToken);
        public ValueTask<EnvironmentRecord?> GetByNameAsync(string name, CancellationToken cancellationToken) => inner.GetByNameAsync(name, cancellationToken);
        public ValueTask<bool> SetOwnerAsync(string id, string nodeId, string? expectedNodeId, CancellationToken cancellationToken) => inner.SetOwnerAsync(id, nodeId, expectedNodeId, cancellationToken);
        public ValueTask<bool> DeleteAsync(string id, CancellationToken cancellationToken) => inner.DeleteAsync(id, cancellationToken);
        public ValueTask AppendLogsAsync(string environmentId, IReadOnlyList<LogRecord> lines, long retention, CancellationToken cancellationToken) => inner.AppendLogsAsync(environmentId, lines, retention, cancellationToken);
        public ValueTask<IReadOnlyList<LogRecord>> ReadLogsAsync(string environmentId, long afterSeq, long upToSeq, int limit, CancellationToken cancellationToken) => inner.ReadLogsAsync(environmentId, afterSeq, upToSeq, limit, cancellationToken);
        public ValueTask<IReadOnlyList<LogRecord>> TailLogsAsync(string environmentId, long upToSeq, int count, CancellationToken cancellationToken) => inner.TailLogsAsync(environmentId, upToSeq, count, cancellationToken);
        public ValueTask<long> LastSeqAsync(string environmentId, CancellationToken cancellationToken) => inner.LastSeqAsync(environmentId, cancellationToken);
    }
}
