using System.Collections.Concurrent;
using System.Security.Cryptography;
using System.Text.RegularExpressions;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Options;
using Switchboard.Protocol.Environments;
using Switchboard.Server.Nodes;
using Switchboard.Server.Storage;

namespace Switchboard.Server.Environments;

/// <summary>
/// Every environment of this node. Loads definitions at start-up, writes queued output lines to the store in
/// batches, and at shutdown stops every workload so no process outlives the gateway. With several nodes on one store
/// each environment belongs to the node that created it (<see cref="EnvironmentRecord.NodeId"/>); this node loads and
/// runs only its own, and finds the others' definitions with <see cref="LocateAsync"/> to route to their node.
/// </summary>
internal sealed partial class EnvironmentManager(
    IEnvironmentStore store,
    INodeRegistry nodes,
    IMessageBus bus,
    IOptions<EnvironmentOptions> options,
    TimeProvider time,
    ILogger<EnvironmentManager> logger) : BackgroundService
{
    private readonly ConcurrentDictionary<string, ManagedEnvironment> _byId = new(StringComparer.Ordinal);
    private readonly SemaphoreSlim _createGate = new(1, 1);
    private readonly TaskCompletionSource _loaded = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private readonly DockerEngine? _docker = string.IsNullOrEmpty(options.Value.DockerHost) ? null : new DockerEngine(options.Value.DockerHost);

    public EnvironmentOptions Options => options.Value;

    public IEnvironmentStore Store => store;

    public TimeProvider Time => time;

    public IEnumerable<ManagedEnvironment> All => _byId.Values.OrderBy(e => e.Record.CreatedAt);

    /// <summary>This node's id: the owner recorded on the environments it creates.</summary>
    public string NodeId => nodes.NodeId;

    /// <summary>
    /// The stored definition of an environment by id, else by name, whichever node runs it; null when there is none.
    /// Used for environments this node does not run (see <see cref="FindAsync"/> for its own).
    /// </summary>
    public async ValueTask<EnvironmentRecord?> LocateAsync(string idOrName, CancellationToken cancellationToken) =>
        await store.GetAsync(idOrName, cancellationToken) ?? await store.GetByNameAsync(idOrName, cancellationToken);

    /// <summary>Every stored definition, of every node.</summary>
    public ValueTask<IReadOnlyList<EnvironmentRecord>> ListRecordsAsync(CancellationToken cancellationToken) => store.ListAsync(cancellationToken);

    /// <summary>
    /// Deletes the definition and lines of an environment whose node is gone (nothing runs it any more), from any node.
    /// False when it was deleted meanwhile.
    /// </summary>
    public async Task<bool> DeleteUnavailableAsync(EnvironmentRecord record, CancellationToken cancellationToken)
    {
        await _loaded.Task;
        return !_byId.ContainsKey(record.Id) && await store.DeleteAsync(record.Id, cancellationToken);
    }

    /// <summary>Finds by id, else by name.</summary>
    public async ValueTask<ManagedEnvironment?> FindAsync(string idOrName)
    {
        await _loaded.Task;
        if (_byId.TryGetValue(idOrName, out var e))
            return e;
        return _byId.Values.FirstOrDefault(x => string.Equals(x.Record.Name, idOrName, StringComparison.Ordinal));
    }

    public static bool IsValidName(string? name) => name is not null && NameRegex().IsMatch(name);

    /// <summary>Creates and (unless told not to) starts an environment. Returns null and an error when the request is invalid or the name taken.</summary>
    public async Task<(ManagedEnvironment? Environment, string? Error, bool Conflict)> CreateAsync(CreateEnvironmentRequest request, CancellationToken cancellationToken)
    {
        await _loaded.Task;
        if (!IsValidName(request.Name))
            return (null, "name must be 1-63 characters of letters, digits, '.', '_' or '-', starting with a letter or digit", false);
        var driver = string.IsNullOrEmpty(request.Driver) ? "process" : request.Driver;
        if (driver is not ("process" or "docker"))
            return (null, "driver must be 'process' or 'docker'", false);
        if (driver == "process" && string.IsNullOrWhiteSpace(request.Command))
            return (null, "the process driver needs a command", false);
        if (driver == "docker" && string.IsNullOrWhiteSpace(request.Image))
            return (null, "the docker driver needs an image", false);
        if (driver == "docker" && string.IsNullOrEmpty(options.Value.DockerHost))
            return (null, "the docker driver is not configured on this gateway (Switchboard:Environments:DockerHost)", false);
        if (request.Env is { } env && env.Keys.Any(k => k.Length == 0 || k.Contains('=', StringComparison.Ordinal) || k.Contains('\0', StringComparison.Ordinal)))
            return (null, "env keys must be non-empty and contain no '=' or NUL", false);
        var id = "env_" + Convert.ToHexStringLower(RandomNumberGenerator.GetBytes(8));
        var record = new EnvironmentRecord(id, request.Name!, driver, request.Command, request.Args ?? [], string.IsNullOrEmpty(request.Cwd) ? null : request.Cwd,
            request.Env ?? new Dictionary<string, string>(), request.Image, time.GetUtcNow(), nodes.NodeId);
        ManagedEnvironment environment;
        await _createGate.WaitAsync(cancellationToken);
        try
        {
            if (_byId.Values.Any(e => e.Record.Name == record.Name) || !await store.CreateAsync(record, cancellationToken))
                return (null, $"an environment named '{record.Name}' exists", true);
            environment = New(record, 0);
            _byId[id] = environment;
        }
        finally
        {
            _createGate.Release();
        }
        if (request.Start != false)
            await environment.StartAsync(cancellationToken);
        return (environment, null, false);
    }

    public async Task<bool> DeleteAsync(ManagedEnvironment environment, CancellationToken cancellationToken)
    {
        if (!_byId.TryRemove(environment.Id, out _))
            return false;
        await environment.DeleteAsync(options.Value.StopGracePeriod);
        await store.DeleteAsync(environment.Id, cancellationToken);
        return true;
    }

    private ManagedEnvironment New(EnvironmentRecord record, long lastSeq) => new(record, lastSeq, options.Value, bus, time, logger, _docker);

    /// <summary>Containers of this gateway's environments left by a run that ended without cleaning up (a crash) are removed at start-up.</summary>
    private async Task RemoveStaleContainersAsync(CancellationToken cancellationToken)
    {
        if (_docker is null)
            return;
        foreach (var e in _byId.Values.Where(e => e.Record.Driver == "docker" && e.Workload is null))
        {
            try
            {
                await _docker.RemoveEnvironmentContainersAsync(e.Id, cancellationToken);
            }
            catch (Exception ex) when (ex is DockerException or OperationCanceledException)
            {
                Log.StaleCleanupFailed(logger, ex, e.Record.Name);
                return;
            }
        }
    }

    // Reads every stored environment this node runs; added to the node's set only when the whole list was read.
    private async Task LoadAsync(CancellationToken cancellationToken)
    {
        var loaded = new List<ManagedEnvironment>();
        foreach (var record in await store.ListAsync(cancellationToken))
        {
            var own = record;
            if (record.NodeId != nodes.NodeId)
            {
                // One node (its id may change at every start): every environment is its own. Several nodes: another
                // node's environments stay there; one without owner (stored by an older version) is claimed by the
                // first node to load it — a compare-and-set, so nodes starting at once never both run it.
                var claim = nodes is SingleNodeRegistry || record.NodeId is null;
                if (!claim || !await store.SetOwnerAsync(record.Id, nodes.NodeId, record.NodeId, cancellationToken))
                    continue;
                own = record with { NodeId = nodes.NodeId };
            }
            loaded.Add(New(own, await store.LastSeqAsync(record.Id, cancellationToken)));
        }
        foreach (var e in loaded)
            _byId[e.Id] = e;
    }

    protected override async Task ExecuteAsync(CancellationToken stoppingToken)
    {
        try
        {
            // The store may be unreachable at start-up (a database restarting): retry instead of failing the host,
            // which would stop the whole node. Requests that need the environments wait for the load meanwhile.
            for (var delay = TimeSpan.FromMilliseconds(250); ; delay = TimeSpan.FromTicks(Math.Min(delay.Ticks * 2, TimeSpan.FromSeconds(10).Ticks)))
            {
                try
                {
                    await LoadAsync(stoppingToken);
                    break;
                }
                catch (Exception ex) when (!stoppingToken.IsCancellationRequested)
                {
                    Log.LoadFailed(logger, ex, delay.TotalSeconds);
                    await Task.Delay(delay, time, stoppingToken);
                }
            }
            // Before anything can start an environment (requests wait for loading), so a new container is never removed.
            using var cleanup = CancellationTokenSource.CreateLinkedTokenSource(stoppingToken);
            cleanup.CancelAfter(TimeSpan.FromSeconds(10));
            await RemoveStaleContainersAsync(cleanup.Token);
        }
        finally
        {
            _loaded.TrySetResult();
        }
        // The SQLite provider does its I/O synchronously: a dedicated thread keeps inserts off the thread pool,
        // where they would delay live delivery.
        var done = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var thread = new Thread(() =>
        {
            try
            {
                while (!stoppingToken.WaitHandle.WaitOne(options.Value.PersistInterval))
                    PersistAsync(stoppingToken).GetAwaiter().GetResult();
            }
            catch (OperationCanceledException)
            {
            }
            finally
            {
                done.TrySetResult();
            }
        }) { IsBackground = true, Name = "environment log persister" };
        thread.Start();
        await done.Task;
        await PersistAsync(CancellationToken.None);
    }

    /// <summary>Writes every environment's queued lines (bounded batches).</summary>
    internal async Task PersistAsync(CancellationToken cancellationToken)
    {
        var o = options.Value;
        foreach (var e in _byId.Values)
        {
            // At most a few batches per environment per tick, so one flood cannot starve the others.
            for (var i = 0; i < 20; i++)
            {
                var batch = e.TakePersistBatch(o.PersistBatchLines);
                if (batch.Count == 0)
                    break;
                try
                {
                    await store.AppendLogsAsync(e.Id, batch, o.RetentionLines, cancellationToken);
                }
                catch (Exception ex) when (ex is not OperationCanceledException)
                {
                    Log.PersistFailed(logger, ex, e.Record.Name, batch.Count);
                }
                finally
                {
                    e.PersistDone(batch);
                }
            }
        }
    }

    public override async Task StopAsync(CancellationToken cancellationToken)
    {
        // Stop every workload first (short grace: the host is going down), then flush the store.
        var grace = options.Value.StopGracePeriod < TimeSpan.FromSeconds(2) ? options.Value.StopGracePeriod : TimeSpan.FromSeconds(2);
        await Task.WhenAll(_byId.Values.Select(e => e.ShutdownAsync(grace)));
        NativeProcess.KillAll();
        await base.StopAsync(cancellationToken);
    }

    public override void Dispose()
    {
        _docker?.Dispose();
        base.Dispose();
    }

    [GeneratedRegex("^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")]
    private static partial Regex NameRegex();

    private static partial class Log
    {
        [LoggerMessage(4101, LogLevel.Error, "Writing {Count} lines of environment {Name} to the store failed; they are lost.")]
        public static partial void PersistFailed(ILogger logger, Exception exception, string name, int count);

        [LoggerMessage(4103, LogLevel.Warning, "Loading the environments from the store failed; retrying in {Seconds} s.")]
        public static partial void LoadFailed(ILogger logger, Exception exception, double seconds);

        [LoggerMessage(4102, LogLevel.Warning, "Removing leftover containers of environment {Name} failed.")]
        public static partial void StaleCleanupFailed(ILogger logger, Exception exception, string name);
    }
}
