using System.Collections.Concurrent;
using System.Net;
using System.Net.WebSockets;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Options;
using Switchboard.Protocol;
using Switchboard.Server.Auth;
using Switchboard.Server.Diagnostics;

namespace Switchboard.Server.Connections;

/// <summary>
/// Every open connection of this node: per-user limits, the heartbeat walk, and graceful shutdown
/// (every socket gets 1001 after its queue drains, bounded by <see cref="SwitchboardOptions.ShutdownDrainTimeout"/>).
/// </summary>
public sealed partial class ConnectionManager
{
    private readonly ConcurrentDictionary<string, WsConnection> _connections = new(StringComparer.Ordinal);
    private readonly ConcurrentDictionary<string, int> _perUser = new(StringComparer.Ordinal);
    private readonly SwitchboardOptions _options;
    private readonly SwitchboardMetrics _metrics;
    private readonly ILoggerFactory _loggerFactory;
    private readonly ILogger _logger;
    private readonly TimeProvider _time;
    private readonly ConnectionSettings _settings;
    private volatile bool _shuttingDown;

    public ConnectionManager(IOptions<SwitchboardOptions> options, SwitchboardMetrics metrics, ILoggerFactory loggerFactory, TimeProvider time)
    {
        _options = options.Value;
        _metrics = metrics;
        _loggerFactory = loggerFactory;
        _logger = loggerFactory.CreateLogger<ConnectionManager>();
        _time = time;
        var limits = _options.Limits;
        _settings = new ConnectionSettings(limits.MaxMessageBytes, limits.MaxQueuedMessages, limits.MaxQueuedBytes,
            _options.ShutdownDrainTimeout > TimeSpan.Zero ? _options.ShutdownDrainTimeout : TimeSpan.FromSeconds(1));
    }

    public bool IsShuttingDown => _shuttingDown;

    public int Count => _connections.Count;

    public IEnumerable<WsConnection> Connections => _connections.Values;

    public bool TryGet(string id, out WsConnection? connection) => _connections.TryGetValue(id, out connection);

    internal WsConnection Create(WebSocket socket, string endpoint, Grants grants, IPAddress? remoteIp, bool inlineWrites = false) =>
        new(socket, endpoint, grants, remoteIp, inlineWrites ? _settings with { InlineWrites = true } : _settings, _metrics,
            _loggerFactory.CreateLogger("Switchboard.Connections"), _time, this);

    /// <summary>Registers an accepted connection, enforcing the per-user limit. False when the limit is reached.</summary>
    internal bool TryRegister(WsConnection connection)
    {
        if (!TryAcquireUserSlot(connection.Grants))
            return false;
        _connections[connection.Id] = connection;
        _metrics.ConnectionOpened(connection.Endpoint);
        if (_shuttingDown)
            connection.Close(CloseCodes.GoingAway, "server shutting down", drain: true); // accepted while shutdown began
        return true;
    }

    /// <summary>Called by the connection itself when it finishes (a connection that was never registered is ignored).</summary>
    internal void Unregister(WsConnection connection)
    {
        if (!_connections.TryRemove(connection.Id, out _))
            return;
        ReleaseUserSlot(connection.Grants);
        _metrics.ConnectionClosed(connection.Endpoint, connection.CloseCode, _time.GetUtcNow() - connection.ConnectedAt);
    }

    /// <summary>
    /// Counts one more streaming connection (WebSocket or Server-Sent Events) against the subject's
    /// <c>MaxConnectionsPerUser</c>; false when the limit is reached. Server credentials are not limited.
    /// </summary>
    internal bool TryAcquireUserSlot(Grants grants)
    {
        if (grants.IsServer)
            return true;
        var over = false;
        _perUser.AddOrUpdate(grants.Subject, 1, (_, n) =>
        {
            over = n >= _options.Limits.MaxConnectionsPerUser;
            return over ? n : n + 1;
        });
        return !over;
    }

    /// <summary>Returns a slot taken with <see cref="TryAcquireUserSlot"/>.</summary>
    internal void ReleaseUserSlot(Grants grants)
    {
        if (grants.IsServer)
            return;
        var user = grants.Subject;
        while (_perUser.TryGetValue(user, out var n))
        {
            if (n <= 1 ? _perUser.TryRemove(new KeyValuePair<string, int>(user, n)) : _perUser.TryUpdate(user, n - 1, n))
                break;
        }
    }

    /// <summary>Counts connections of one subject (for limits of features).</summary>
    public int CountForUser(string subject) => _perUser.TryGetValue(subject, out var n) ? n : 0;

    internal void HeartbeatTick()
    {
        var now = _time.GetTimestamp();
        var hb = _options.Heartbeat;
        foreach (var c in _connections.Values)
            c.Heartbeat(now, hb.Interval, hb.Timeout);
    }

    /// <summary>Stops accepting, closes every connection with 1001 after its queue drains, and waits (bounded) for them to end.</summary>
    public async Task ShutdownAsync(CancellationToken cancellationToken)
    {
        _shuttingDown = true;
        var all = _connections.Values.ToArray();
        Log.ShuttingDown(_logger, all.Length);
        foreach (var c in all)
            c.Close(CloseCodes.GoingAway, "server shutting down", drain: true);
        var done = Task.WhenAll(all.Select(c => c.Completion));
        try
        {
            await done.WaitAsync(_settings.CloseTimeout + TimeSpan.FromSeconds(1), _time, cancellationToken);
        }
        catch (Exception ex) when (ex is TimeoutException or OperationCanceledException)
        {
            Log.ShutdownTimedOut(_logger, all.Count(c => !c.Completion.IsCompleted));
        }
    }

    private static partial class Log
    {
        [LoggerMessage(1101, LogLevel.Information, "Shutting down: closing {Count} connections with 1001.")]
        public static partial void ShuttingDown(ILogger logger, int count);

        [LoggerMessage(1102, LogLevel.Warning, "Shutdown drain timed out with {Count} connections still open; they were aborted.")]
        public static partial void ShutdownTimedOut(ILogger logger, int count);
    }
}
