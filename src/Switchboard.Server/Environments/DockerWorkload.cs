using System.Buffers.Binary;
using Microsoft.Extensions.Logging;

namespace Switchboard.Server.Environments;

/// <summary>
/// The <c>docker</c> driver: every start creates a fresh container from the environment's image (command, env,
/// working directory, labels marking it as the gateway's; an init as PID 1 so signals behave like for a process), starts
/// it, follows its multiplexed log stream into the same line pipeline as the process driver, and waits for its exit
/// code. The container is kept when it stops (until the next start) and removed on delete and gateway shutdown.
/// </summary>
internal sealed partial class DockerWorkload : IWorkload
{
    private readonly DockerEngine _engine;
    private readonly ILogger _logger;
    private readonly string _name;
    private readonly CancellationTokenSource _stop = new();
    private readonly Task _logs;

    private DockerWorkload(DockerEngine engine, string containerId, int? pid, LineSink sink, int maxLineBytes, string name, ILogger logger)
    {
        _engine = engine;
        _logger = logger;
        _name = name;
        ContainerId = containerId;
        Pid = pid;
        // The engine may send the log answer's head only with the first output: never wait for it here.
        _logs = Task.Run(() => ReadLogsAsync(sink, maxLineBytes));
        Completion = CompleteAsync();
    }

    public string ContainerId { get; }

    /// <summary>The container's main process as the engine's host sees it.</summary>
    public int? Pid { get; }

    public Task<int> Completion { get; }

    /// <summary>The container name for an environment: recognizable in <c>docker ps</c>, unique per environment.</summary>
    public static string ContainerName(EnvironmentRecord record) => "switchboard-" + record.Name + "-" + record.Id[(record.Id.IndexOf('_', StringComparison.Ordinal) + 1)..];

    public static async Task<DockerWorkload> StartAsync(DockerEngine engine, EnvironmentRecord record, LineSink sink, int maxLineBytes, ILogger logger,
        CancellationToken cancellationToken)
    {
        if (string.IsNullOrEmpty(record.Image))
            throw new IOException("the docker driver needs an image");
        // A container of an earlier start (or of a gateway that crashed) goes first: one container per environment.
        await engine.RemoveEnvironmentContainersAsync(record.Id, cancellationToken);
        IReadOnlyList<string>? cmd = !string.IsNullOrEmpty(record.Command) ? [record.Command, .. record.Args]
            : record.Args.Count > 0 ? record.Args : null;
        var request = new ContainerCreateRequest(record.Image, cmd, [.. record.Env.Select(kv => kv.Key + "=" + kv.Value)], record.Cwd,
            Tty: false, OpenStdin: false, AttachStdout: true, AttachStderr: true,
            new Dictionary<string, string> { [DockerEngine.EnvironmentLabel] = record.Id, [DockerEngine.NameLabel] = record.Name },
            new ContainerHostConfig(Init: true));
        string id;
        try
        {
            id = await engine.CreateContainerAsync(ContainerName(record), request, cancellationToken);
        }
        catch (DockerException ex) when (ex.StatusCode == 404)
        {
            throw new DockerException(404, $"image '{record.Image}' is not on the engine (the gateway does not pull images): {ex.Message}", ex);
        }
        try
        {
            await engine.StartContainerAsync(id, cancellationToken);
            int? pid = null;
            try
            {
                var state = (await engine.InspectContainerAsync(id, cancellationToken)).State;
                pid = state.Pid > 0 ? state.Pid : null;
            }
            catch (DockerException)
            {
            }
            return new DockerWorkload(engine, id, pid, sink, maxLineBytes, record.Name, logger);
        }
        catch
        {
            try
            {
                await engine.RemoveContainerAsync(id, CancellationToken.None);
            }
            catch (DockerException)
            {
            }
            throw;
        }
    }

    public async Task StopAsync(TimeSpan grace)
    {
        try
        {
            await _engine.StopContainerAsync(ContainerId, grace, CancellationToken.None);
        }
        catch (DockerException ex)
        {
            Log.StopFailed(_logger, ex, _name);
            await _engine.KillContainerAsync(ContainerId, "SIGKILL", CancellationToken.None);
        }
    }

    public void Kill() => _ = KillAsync();

    private async Task KillAsync()
    {
        try
        {
            await _engine.KillContainerAsync(ContainerId, "SIGKILL", CancellationToken.None);
        }
        catch (DockerException ex)
        {
            Log.StopFailed(_logger, ex, _name);
        }
    }

    private async Task<int> CompleteAsync()
    {
        int code;
        try
        {
            code = await _engine.WaitContainerAsync(ContainerId, _stop.Token);
        }
        catch (Exception ex) when (ex is DockerException or OperationCanceledException)
        {
            // The engine went away or the container was removed under us: report it as killed.
            Log.WaitFailed(_logger, ex, _name);
            code = 128 + 9;
        }
        // The log stream ends shortly after the container; let it deliver the last lines.
        await Task.WhenAny(_logs, Task.Delay(TimeSpan.FromSeconds(2)));
        await _stop.CancelAsync();
        return code;
    }

    /// <summary>Demultiplexes the log stream: frames of an 8-byte header (stream, 0, 0, 0, big-endian size) and a payload.</summary>
    private async Task ReadLogsAsync(LineSink sink, int maxLineBytes)
    {
        var splitters = new[] { new LineSplitter(maxLineBytes), new LineSplitter(maxLineBytes) };
        var buffer = new byte[64 * 1024];
        var header = new byte[8];
        HttpResponseMessage? response = null;
        try
        {
            (response, var multiplexed) = await _engine.FollowLogsAsync(ContainerId, _stop.Token);
            await using var stream = await response.Content.ReadAsStreamAsync(_stop.Token);
            while (true)
            {
                byte kind = 1;
                int remaining;
                if (multiplexed)
                {
                    if (!await ReadFullyAsync(stream, header, _stop.Token))
                        break;
                    kind = header[0] == 2 ? (byte)2 : (byte)1;
                    remaining = (int)Math.Min(BinaryPrimitives.ReadUInt32BigEndian(header.AsSpan(4)), int.MaxValue);
                }
                else
                {
                    remaining = buffer.Length;
                }
                var splitter = splitters[kind - 1];
                while (remaining > 0)
                {
                    var n = await stream.ReadAsync(buffer.AsMemory(0, Math.Min(remaining, buffer.Length)), _stop.Token);
                    if (n == 0)
                    {
                        if (multiplexed)
                            throw new EndOfStreamException("log stream ended inside a frame");
                        remaining = -1;
                        break;
                    }
                    var lines = new List<string>();
                    splitter.Push(buffer.AsSpan(0, n), lines);
                    if (lines.Count > 0)
                        sink(kind, lines);
                    if (multiplexed)
                        remaining -= n;
                    else
                        break;
                }
                if (remaining < 0)
                    break;
            }
        }
        catch (Exception ex) when (ex is IOException or HttpRequestException or OperationCanceledException)
        {
            if (!_stop.IsCancellationRequested)
                Log.LogStreamFailed(_logger, ex, _name);
        }
        finally
        {
            response?.Dispose();
            for (byte kind = 1; kind <= 2; kind++)
            {
                var rest = new List<string>();
                splitters[kind - 1].Flush(rest);
                if (rest.Count > 0)
                    sink(kind, rest);
            }
        }
    }

    private static async Task<bool> ReadFullyAsync(Stream stream, byte[] buffer, CancellationToken cancellationToken)
    {
        var read = 0;
        while (read < buffer.Length)
        {
            var n = await stream.ReadAsync(buffer.AsMemory(read), cancellationToken);
            if (n == 0)
                return read == 0 ? false : throw new EndOfStreamException("log stream ended inside a frame header");
            read += n;
        }
        return true;
    }

    private static partial class Log
    {
        [LoggerMessage(4201, LogLevel.Warning, "Environment {Name}: stopping its container failed; killing it.")]
        public static partial void StopFailed(ILogger logger, Exception exception, string name);

        [LoggerMessage(4202, LogLevel.Warning, "Environment {Name}: waiting for its container failed.")]
        public static partial void WaitFailed(ILogger logger, Exception exception, string name);

        [LoggerMessage(4203, LogLevel.Warning, "Environment {Name}: reading its container's log stream failed.")]
        public static partial void LogStreamFailed(ILogger logger, Exception exception, string name);
    }
}
