using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Options;
using Npgsql;
using Switchboard.Server;
using Switchboard.Server.Nodes;

namespace Switchboard.Storage.Postgres;

/// <summary>
/// Nodes in the shared <c>nodes</c> table. Each node upserts its row at start-up and every
/// <see cref="NodeOptions.HeartbeatInterval"/>, deletes it on a clean shutdown, and is not listed once its heartbeat is
/// older than <see cref="NodeOptions.StaleAfter"/> (a crashed node). Heartbeats use the database clock, so clock skew
/// between machines does not expire anyone.
/// </summary>
public sealed partial class PostgresNodeRegistry(PostgresDatabase db, IOptions<SwitchboardOptions> options, IOptions<NodeOptions> nodeOptions,
    IServiceProvider services, ILogger<PostgresNodeRegistry> logger, TimeProvider time) : INodeRegistry, IHostedService, IAsyncDisposable
{
    public static readonly PostgresMigration[] Migrations =
    [
        new("nodes-001", """
            CREATE TABLE nodes (id text PRIMARY KEY, address text, started_at timestamptz NOT NULL DEFAULT now(), heartbeat_at timestamptz NOT NULL DEFAULT now());
            """),
    ];

    private readonly NodeOptions _options = nodeOptions.Value;
    private readonly CancellationTokenSource _stopping = new();
    private readonly SemaphoreSlim _beat = new(0, 1);
    private Task _loop = Task.CompletedTask;
    private int _stopped;
    private int _disposed;

    public string NodeId { get; } = options.Value.NodeId;

    public async ValueTask<IReadOnlyList<NodeInfo>> ListAsync(CancellationToken cancellationToken) =>
        await QueryAsync(null, cancellationToken);

    public async ValueTask<NodeInfo?> GetAsync(string nodeId, CancellationToken cancellationToken) =>
        (await QueryAsync(nodeId, cancellationToken)).FirstOrDefault();

    private async Task<List<NodeInfo>> QueryAsync(string? id, CancellationToken cancellationToken)
    {
        await using var connection = await db.OpenAsync(cancellationToken);
        await using var q = new NpgsqlCommand(
            "SELECT id, address, started_at, heartbeat_at FROM nodes WHERE heartbeat_at > now() - $1 AND ($2::text IS NULL OR id = $2) ORDER BY id", connection)
        {
            Parameters = { new() { Value = _options.StaleAfter }, new() { Value = (object?)id ?? DBNull.Value, NpgsqlDbType = NpgsqlTypes.NpgsqlDbType.Text } },
        };
        await using var r = await q.ExecuteReaderAsync(cancellationToken);
        var list = new List<NodeInfo>();
        while (await r.ReadAsync(cancellationToken))
            list.Add(new NodeInfo(r.GetString(0), r.IsDBNull(1) ? null : r.GetString(1), r.GetFieldValue<DateTimeOffset>(2), r.GetFieldValue<DateTimeOffset>(3)));
        return list;
    }

    /// <summary>Refreshes this node's row (creating it when missing) and forgets nodes that have been gone for long.</summary>
    public async Task HeartbeatAsync(CancellationToken cancellationToken)
    {
        await using var connection = await db.OpenAsync(cancellationToken);
        await using var batch = new NpgsqlBatch(connection)
        {
            BatchCommands =
            {
                new NpgsqlBatchCommand("""
                    INSERT INTO nodes (id, address) VALUES ($1, $2)
                    ON CONFLICT (id) DO UPDATE SET heartbeat_at = now(), address = COALESCE(EXCLUDED.address, nodes.address)
                    """)
                {
                    Parameters =
                    {
                        new() { Value = NodeId },
                        new() { Value = (object?)NodeAddress.Resolve(_options, services) ?? DBNull.Value, NpgsqlDbType = NpgsqlTypes.NpgsqlDbType.Text },
                    },
                },
                // Rows of nodes gone for long are deleted; merely stale ones are only hidden by ListAsync.
                new NpgsqlBatchCommand("DELETE FROM nodes WHERE heartbeat_at < now() - $1") { Parameters = { new() { Value = _options.StaleAfter * 20 } } },
            },
        };
        await batch.ExecuteNonQueryAsync(cancellationToken);
    }

    public async Task StartAsync(CancellationToken cancellationToken)
    {
        await HeartbeatAsync(cancellationToken);
        // Kestrel's address is known only once the server started: beat again then.
        services.GetService<IHostApplicationLifetime>()?.ApplicationStarted.Register(() =>
        {
            try
            {
                _beat.Release();
            }
            catch (SemaphoreFullException)
            {
            }
        });
        _loop = Task.Run(() => LoopAsync(_stopping.Token), CancellationToken.None);
    }

    private async Task LoopAsync(CancellationToken stop)
    {
        while (!stop.IsCancellationRequested)
        {
            try
            {
                await _beat.WaitAsync(_options.HeartbeatInterval, stop);
                await HeartbeatAsync(stop);
            }
            catch (OperationCanceledException) when (stop.IsCancellationRequested)
            {
                break;
            }
            catch (Exception ex)
            {
                Log.HeartbeatFailed(logger, ex);
                try
                {
                    await Task.Delay(TimeSpan.FromSeconds(1), time, stop);
                }
                catch (OperationCanceledException)
                {
                    break;
                }
            }
        }
    }

    public async Task StopAsync(CancellationToken cancellationToken)
    {
        if (Interlocked.Exchange(ref _stopped, 1) == 1)
            return;
        await _stopping.CancelAsync();
        await _loop;
        try
        {
            await using var connection = await db.OpenAsync(cancellationToken);
            await using var cmd = new NpgsqlCommand("DELETE FROM nodes WHERE id = $1", connection) { Parameters = { new() { Value = NodeId } } };
            await cmd.ExecuteNonQueryAsync(cancellationToken);
        }
        catch (Exception ex) when (ex is NpgsqlException or OperationCanceledException or TimeoutException)
        {
            Log.DeregisterFailed(logger, ex);
        }
    }

    public ValueTask DisposeAsync()
    {
        // Registered under several service types, so disposed more than once.
        if (Interlocked.Exchange(ref _disposed, 1) == 1)
            return ValueTask.CompletedTask;
        _stopping.Cancel();
        _stopping.Dispose();
        _beat.Dispose();
        return ValueTask.CompletedTask;
    }

    private static partial class Log
    {
        [LoggerMessage(5201, LogLevel.Warning, "Node heartbeat failed.")]
        public static partial void HeartbeatFailed(ILogger logger, Exception exception);

        [LoggerMessage(5202, LogLevel.Warning, "Could not remove this node from the registry at shutdown; it expires when its heartbeat goes stale.")]
        public static partial void DeregisterFailed(ILogger logger, Exception exception);
    }
}
