using System.Globalization;
using System.Net;
using System.Net.Http.Headers;
using System.Net.Sockets;
using System.Text;
using System.Text.Json;
using System.Text.Json.Serialization;
using System.Text.Json.Serialization.Metadata;

namespace Switchboard.Server.Environments;

/// <summary>An error answered by the Docker engine (or the engine not being reachable: <see cref="StatusCode"/> 0).</summary>
internal sealed class DockerException(int statusCode, string message, Exception? inner = null) : IOException(message, inner)
{
    public int StatusCode { get; } = statusCode;
}

/// <summary>
/// A minimal Docker Engine API client (API v1.41, also served by podman) over the engine's unix socket: containers,
/// their multiplexed log stream, exec with a hijacked raw connection for terminals, and stats. No client package.
/// </summary>
internal sealed class DockerEngine : IDisposable
{
    public const string ApiVersion = "v1.41";

    /// <summary>Label carrying the environment id on every container the gateway creates.</summary>
    public const string EnvironmentLabel = "io.switchboard.environment";

    /// <summary>Label carrying the environment name (for people running <c>docker ps</c>).</summary>
    public const string NameLabel = "io.switchboard.name";

    /// <summary>Time limit of a short call (anything but streams and waits).</summary>
    private static readonly TimeSpan CallTimeout = TimeSpan.FromSeconds(30);

    private readonly string _socketPath;
    private readonly HttpClient _http;

    public DockerEngine(string host)
    {
        Host = host;
        _socketPath = SocketPath(host);
        var handler = new SocketsHttpHandler
        {
            ConnectCallback = async (_, ct) => await ConnectAsync(ct),
            PooledConnectionIdleTimeout = TimeSpan.FromSeconds(30),
            UseProxy = false,
        };
        _http = new HttpClient(handler) { BaseAddress = new Uri("http://docker/" + ApiVersion + "/"), Timeout = Timeout.InfiniteTimeSpan };
    }

    public string Host { get; }

    /// <summary>The socket path of <c>unix:///path</c> (or a bare absolute path).</summary>
    public static string SocketPath(string host)
    {
        if (host.StartsWith("unix://", StringComparison.Ordinal))
            return host["unix://".Length..];
        if (host.StartsWith('/'))
            return host;
        throw new ArgumentException($"Docker host '{host}' is not supported: use unix:///path/to/docker.sock", nameof(host));
    }

    private async ValueTask<Stream> ConnectAsync(CancellationToken cancellationToken)
    {
        var socket = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        try
        {
            await socket.ConnectAsync(new UnixDomainSocketEndPoint(_socketPath), cancellationToken);
            return new NetworkStream(socket, ownsSocket: true);
        }
        catch
        {
            socket.Dispose();
            throw;
        }
    }

    // ---------- containers ----------

    public async Task PingAsync(CancellationToken cancellationToken)
    {
        using var response = await SendAsync(HttpMethod.Get, "_ping", null, cancellationToken);
    }

    /// <summary>Creates a container; returns its id. A missing image is a <see cref="DockerException"/> (the gateway never pulls).</summary>
    public async Task<string> CreateContainerAsync(string name, ContainerCreateRequest request, CancellationToken cancellationToken)
    {
        using var response = await SendAsync(HttpMethod.Post, "containers/create?name=" + Uri.EscapeDataString(name),
            Json(request, DockerJsonContext.Default.ContainerCreateRequest), cancellationToken);
        return (await ReadAsync(response, DockerJsonContext.Default.IdResponse, cancellationToken)).Id;
    }

    public async Task StartContainerAsync(string id, CancellationToken cancellationToken)
    {
        using var response = await SendAsync(HttpMethod.Post, $"containers/{id}/start", null, cancellationToken, HttpStatusCode.NotModified);
    }

    /// <summary>SIGTERM, then SIGKILL after <paramref name="grace"/> (whole seconds, rounded up: the API's unit).</summary>
    public async Task StopContainerAsync(string id, TimeSpan grace, CancellationToken cancellationToken)
    {
        var seconds = (int)Math.Ceiling(Math.Max(0, grace.TotalSeconds));
        using var cts = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
        cts.CancelAfter(CallTimeout + TimeSpan.FromSeconds(seconds));
        using var response = await SendCoreAsync(HttpMethod.Post, $"containers/{id}/stop?t={seconds.ToString(CultureInfo.InvariantCulture)}", null, cts.Token,
            HttpStatusCode.NotModified, HttpStatusCode.NotFound);
    }

    public async Task KillContainerAsync(string id, string signal, CancellationToken cancellationToken)
    {
        // 409: not running; 404: gone. Either way nothing is left to kill.
        using var response = await SendAsync(HttpMethod.Post, $"containers/{id}/kill?signal={signal}", null, cancellationToken, HttpStatusCode.Conflict, HttpStatusCode.NotFound);
    }

    /// <summary>Removes a container, killing it if it runs. A container already gone is fine.</summary>
    public async Task RemoveContainerAsync(string id, CancellationToken cancellationToken)
    {
        using var response = await SendAsync(HttpMethod.Delete, $"containers/{id}?force=1&v=1", null, cancellationToken, HttpStatusCode.NotFound);
    }

    /// <summary>Waits until the container is not running; returns its exit code.</summary>
    public async Task<int> WaitContainerAsync(string id, CancellationToken cancellationToken)
    {
        using var response = await SendCoreAsync(HttpMethod.Post, $"containers/{id}/wait", null, cancellationToken);
        var wait = await ReadAsync(response, DockerJsonContext.Default.WaitResponse, cancellationToken);
        return wait.StatusCode;
    }

    public async Task<ContainerInspect> InspectContainerAsync(string id, CancellationToken cancellationToken)
    {
        using var response = await SendAsync(HttpMethod.Get, $"containers/{id}/json", null, cancellationToken);
        return await ReadAsync(response, DockerJsonContext.Default.ContainerInspect, cancellationToken);
    }

    /// <summary>Containers (running or not) with the label <c>key=value</c>.</summary>
    public async Task<IReadOnlyList<ContainerSummary>> ListContainersAsync(string label, CancellationToken cancellationToken)
    {
        var filters = JsonSerializer.Serialize(new Dictionary<string, string[]> { ["label"] = [label] }, DockerJsonContext.Default.DictionaryStringStringArray);
        using var response = await SendAsync(HttpMethod.Get, "containers/json?all=1&filters=" + Uri.EscapeDataString(filters), null, cancellationToken);
        return await ReadAsync(response, DockerJsonContext.Default.ListContainerSummary, cancellationToken);
    }

    /// <summary>Removes every container of an environment (its current one and any left by an earlier run).</summary>
    public async Task RemoveEnvironmentContainersAsync(string environmentId, CancellationToken cancellationToken)
    {
        foreach (var c in await ListContainersAsync(EnvironmentLabel + "=" + environmentId, cancellationToken))
            await RemoveContainerAsync(c.Id, cancellationToken);
    }

    /// <summary>
    /// The container's output from its start, following until it ends. Returns the raw response stream and whether it is
    /// multiplexed (8-byte frame headers; containers without a TTY) or raw.
    /// </summary>
    public async Task<(HttpResponseMessage Response, bool Multiplexed)> FollowLogsAsync(string id, CancellationToken cancellationToken)
    {
        var response = await SendCoreAsync(HttpMethod.Get, $"containers/{id}/logs?follow=1&stdout=1&stderr=1&timestamps=0", null, cancellationToken);
        var type = response.Content.Headers.ContentType?.MediaType;
        return (response, type != "application/vnd.docker.raw-stream");
    }

    public async Task<ContainerStats> StatsAsync(string id, CancellationToken cancellationToken)
    {
        using var response = await SendAsync(HttpMethod.Get, $"containers/{id}/stats?stream=false", null, cancellationToken);
        return await ReadAsync(response, DockerJsonContext.Default.ContainerStats, cancellationToken);
    }

    /// <summary>Whether <paramref name="path"/> exists in the container's filesystem (HEAD on the archive endpoint).</summary>
    public async Task<bool> PathExistsAsync(string id, string path, CancellationToken cancellationToken)
    {
        using var response = await SendAsync(HttpMethod.Head, $"containers/{id}/archive?path=" + Uri.EscapeDataString(path), null, cancellationToken, HttpStatusCode.NotFound);
        return response.IsSuccessStatusCode;
    }

    // ---------- exec ----------

    public async Task<string> CreateExecAsync(string containerId, ExecCreateRequest request, CancellationToken cancellationToken)
    {
        using var response = await SendAsync(HttpMethod.Post, $"containers/{containerId}/exec", Json(request, DockerJsonContext.Default.ExecCreateRequest), cancellationToken);
        return (await ReadAsync(response, DockerJsonContext.Default.IdResponse, cancellationToken)).Id;
    }

    /// <summary>Starts an exec in the background (nothing attached).</summary>
    public async Task StartExecDetachedAsync(string execId, CancellationToken cancellationToken)
    {
        using var response = await SendAsync(HttpMethod.Post, $"exec/{execId}/start", Json(new ExecStartRequest(true, false), DockerJsonContext.Default.ExecStartRequest), cancellationToken);
    }

    public async Task ResizeExecAsync(string execId, int rows, int cols, CancellationToken cancellationToken)
    {
        using var response = await SendAsync(HttpMethod.Post,
            $"exec/{execId}/resize?h={rows.ToString(CultureInfo.InvariantCulture)}&w={cols.ToString(CultureInfo.InvariantCulture)}", null, cancellationToken);
    }

    public async Task<ExecInspect> InspectExecAsync(string execId, CancellationToken cancellationToken)
    {
        using var response = await SendAsync(HttpMethod.Get, $"exec/{execId}/json", null, cancellationToken);
        return await ReadAsync(response, DockerJsonContext.Default.ExecInspect, cancellationToken);
    }

    /// <summary>
    /// Starts an exec with a TTY attached and returns the hijacked connection: after the HTTP answer (101 Switching
    /// Protocols from Docker and podman; 200 from older engines) the socket carries the raw terminal in both directions.
    /// </summary>
    public async Task<Stream> StartExecAttachedAsync(string execId, CancellationToken cancellationToken)
    {
        using var cts = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
        cts.CancelAfter(CallTimeout);
        var stream = (NetworkStream)await ConnectAsync(cts.Token);
        try
        {
            var body = JsonSerializer.SerializeToUtf8Bytes(new ExecStartRequest(false, true), DockerJsonContext.Default.ExecStartRequest);
            var head = $"POST /{ApiVersion}/exec/{execId}/start HTTP/1.1\r\nHost: docker\r\nContent-Type: application/json\r\n" +
                $"Content-Length: {body.Length.ToString(CultureInfo.InvariantCulture)}\r\nConnection: Upgrade\r\nUpgrade: tcp\r\n\r\n";
            await stream.WriteAsync(Encoding.ASCII.GetBytes(head), cts.Token);
            await stream.WriteAsync(body, cts.Token);

            // Read the answer's head byte by byte into a buffer; whatever follows it is already terminal output.
            var buffer = new byte[16 * 1024];
            var length = 0;
            int end;
            while ((end = buffer.AsSpan(0, length).IndexOf("\r\n\r\n"u8)) < 0)
            {
                if (length == buffer.Length)
                    throw new DockerException(0, "the engine's answer to exec start has an oversized head");
                var n = await stream.ReadAsync(buffer.AsMemory(length), cts.Token);
                if (n == 0)
                    throw new DockerException(0, "the engine closed the connection on exec start");
                length += n;
            }
            var headText = Encoding.ASCII.GetString(buffer, 0, end);
            var statusLine = headText.Split("\r\n", 2)[0].Split(' ', 3);
            if (statusLine.Length < 2 || !int.TryParse(statusLine[1], NumberStyles.None, CultureInfo.InvariantCulture, out var status))
                throw new DockerException(0, "the engine's answer to exec start is not HTTP: " + statusLine[0]);
            var rest = buffer.AsMemory(end + 4, length - end - 4).ToArray();
            if (status is 101 or 200)
            {
                if (headText.Contains("Transfer-Encoding: chunked", StringComparison.OrdinalIgnoreCase))
                    throw new DockerException(0, "the engine answered exec start with a chunked body instead of a raw stream");
                return new PrefixedStream(rest, stream);
            }
            // An error with a JSON body: read what came (bounded) for the message.
            var text = Encoding.UTF8.GetString(rest);
            throw new DockerException(status, $"exec start failed ({status.ToString(CultureInfo.InvariantCulture)}): {ErrorMessage(text)}");
        }
        catch
        {
            await stream.DisposeAsync();
            throw;
        }
    }

    // ---------- plumbing ----------

    private static ByteArrayContent Json<T>(T value, JsonTypeInfo<T> type)
    {
        var content = new ByteArrayContent(JsonSerializer.SerializeToUtf8Bytes(value, type));
        content.Headers.ContentType = new MediaTypeHeaderValue("application/json");
        return content;
    }

    private async Task<HttpResponseMessage> SendAsync(HttpMethod method, string path, HttpContent? content, CancellationToken cancellationToken,
        params HttpStatusCode[] alsoFine)
    {
        using var cts = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
        cts.CancelAfter(CallTimeout);
        var response = await SendCoreAsync(method, path, content, cts.Token, alsoFine);
        // Buffer the (small) body within the time limit, so callers read it without one.
        await response.Content.LoadIntoBufferAsync(cts.Token);
        return response;
    }

    /// <summary>Sends a request; returns the response once its headers arrived. Failures are <see cref="DockerException"/>s.</summary>
    private async Task<HttpResponseMessage> SendCoreAsync(HttpMethod method, string path, HttpContent? content, CancellationToken cancellationToken,
        params HttpStatusCode[] alsoFine)
    {
        using var request = new HttpRequestMessage(method, path) { Content = content };
        HttpResponseMessage response;
        try
        {
            response = await _http.SendAsync(request, HttpCompletionOption.ResponseHeadersRead, cancellationToken);
        }
        catch (HttpRequestException ex)
        {
            throw new DockerException(0, $"the Docker engine at {Host} is not reachable: {ex.Message}", ex);
        }
        if (response.IsSuccessStatusCode || alsoFine.Contains(response.StatusCode))
            return response;
        using (response)
        {
            string text;
            try
            {
                text = await response.Content.ReadAsStringAsync(cancellationToken);
            }
            catch (HttpRequestException)
            {
                text = "";
            }
            throw new DockerException((int)response.StatusCode, ErrorMessage(text));
        }
    }

    private static string ErrorMessage(string body)
    {
        try
        {
            if (JsonSerializer.Deserialize(body, DockerJsonContext.Default.ErrorResponse)?.Message is { Length: > 0 } m)
                return m;
        }
        catch (JsonException)
        {
        }
        return body.Length > 300 ? body[..300] : body;
    }

    private static async Task<T> ReadAsync<T>(HttpResponseMessage response, JsonTypeInfo<T> type, CancellationToken cancellationToken)
    {
        try
        {
            await using var stream = await response.Content.ReadAsStreamAsync(cancellationToken);
            return await JsonSerializer.DeserializeAsync(stream, type, cancellationToken)
                ?? throw new DockerException((int)response.StatusCode, "the engine answered null");
        }
        catch (JsonException ex)
        {
            throw new DockerException((int)response.StatusCode, "the engine's answer is not the expected JSON: " + ex.Message, ex);
        }
    }

    public void Dispose() => _http.Dispose();

    /// <summary>A stream that first returns bytes already read past the HTTP head, then the connection.</summary>
    private sealed class PrefixedStream(byte[] prefix, NetworkStream inner) : Stream
    {
        private int _offset;

        public override bool CanRead => true;
        public override bool CanSeek => false;
        public override bool CanWrite => true;
        public override long Length => throw new NotSupportedException();
        public override long Position { get => throw new NotSupportedException(); set => throw new NotSupportedException(); }

        public override async ValueTask<int> ReadAsync(Memory<byte> buffer, CancellationToken cancellationToken = default)
        {
            if (_offset < prefix.Length)
            {
                var n = Math.Min(buffer.Length, prefix.Length - _offset);
                prefix.AsMemory(_offset, n).CopyTo(buffer);
                _offset += n;
                return n;
            }
            return await inner.ReadAsync(buffer, cancellationToken);
        }

        public override Task<int> ReadAsync(byte[] buffer, int offset, int count, CancellationToken cancellationToken) =>
            ReadAsync(buffer.AsMemory(offset, count), cancellationToken).AsTask();

        public override int Read(byte[] buffer, int offset, int count) => ReadAsync(buffer, offset, count, CancellationToken.None).GetAwaiter().GetResult();

        public override ValueTask WriteAsync(ReadOnlyMemory<byte> buffer, CancellationToken cancellationToken = default) => inner.WriteAsync(buffer, cancellationToken);

        public override Task WriteAsync(byte[] buffer, int offset, int count, CancellationToken cancellationToken) =>
            inner.WriteAsync(buffer, offset, count, cancellationToken);

        public override void Write(byte[] buffer, int offset, int count) => inner.Write(buffer, offset, count);

        public override void Flush()
        {
        }

        public override long Seek(long offset, SeekOrigin origin) => throw new NotSupportedException();

        public override void SetLength(long value) => throw new NotSupportedException();

        protected override void Dispose(bool disposing)
        {
            if (disposing)
                inner.Dispose();
            base.Dispose(disposing);
        }
    }
}

// ---------- Docker Engine API shapes (only the fields the gateway uses) ----------

internal sealed record ContainerCreateRequest(
    string Image,
    IReadOnlyList<string>? Cmd,
    IReadOnlyList<string> Env,
    string? WorkingDir,
    bool Tty,
    bool OpenStdin,
    bool AttachStdout,
    bool AttachStderr,
    IReadOnlyDictionary<string, string> Labels,
    ContainerHostConfig HostConfig);

/// <summary><c>Init</c>: a tiny init as PID 1 forwards signals and reaps zombies, so SIGTERM stops a shell like it stops a process.</summary>
internal sealed record ContainerHostConfig(bool Init);

internal sealed record IdResponse(string Id);

internal sealed record WaitResponse(int StatusCode);

internal sealed record ErrorResponse([property: JsonPropertyName("message")] string? Message);

internal sealed record ContainerState(string? Status, bool Running, int Pid, int ExitCode);

internal sealed record ContainerInspect(string Id, ContainerState State);

internal sealed record ContainerSummary(string Id, IReadOnlyList<string>? Names, string? State, IReadOnlyDictionary<string, string>? Labels);

internal sealed record ExecCreateRequest(IReadOnlyList<string> Cmd, IReadOnlyList<string>? Env, bool Tty, bool AttachStdin, bool AttachStdout, bool AttachStderr);

internal sealed record ExecStartRequest(bool Detach, bool Tty);

internal sealed record ExecInspect(int? ExitCode, bool Running, int Pid);

internal sealed record CpuUsage([property: JsonPropertyName("total_usage")] long TotalUsage);

internal sealed record CpuStats(
    [property: JsonPropertyName("cpu_usage")] CpuUsage? CpuUsage,
    [property: JsonPropertyName("system_cpu_usage")] long? SystemCpuUsage,
    [property: JsonPropertyName("online_cpus")] int? OnlineCpus);

internal sealed record MemoryStats(
    [property: JsonPropertyName("usage")] long? Usage,
    [property: JsonPropertyName("limit")] long? Limit,
    [property: JsonPropertyName("stats")] Dictionary<string, long>? Stats);

internal sealed record NetworkStats(
    [property: JsonPropertyName("rx_bytes")] long RxBytes,
    [property: JsonPropertyName("tx_bytes")] long TxBytes);

internal sealed record ContainerStats(
    [property: JsonPropertyName("cpu_stats")] CpuStats? CpuStats,
    [property: JsonPropertyName("precpu_stats")] CpuStats? PrecpuStats,
    [property: JsonPropertyName("memory_stats")] MemoryStats? MemoryStats,
    [property: JsonPropertyName("networks")] Dictionary<string, NetworkStats>? Networks);

[JsonSourceGenerationOptions(DefaultIgnoreCondition = JsonIgnoreCondition.WhenWritingNull, PropertyNameCaseInsensitive = true,
    NumberHandling = JsonNumberHandling.AllowReadingFromString)]
[JsonSerializable(typeof(ContainerCreateRequest))]
[JsonSerializable(typeof(IdResponse))]
[JsonSerializable(typeof(WaitResponse))]
[JsonSerializable(typeof(ErrorResponse))]
[JsonSerializable(typeof(ContainerInspect))]
[JsonSerializable(typeof(List<ContainerSummary>))]
[JsonSerializable(typeof(ExecCreateRequest))]
[JsonSerializable(typeof(ExecStartRequest))]
[JsonSerializable(typeof(ExecInspect))]
[JsonSerializable(typeof(ContainerStats))]
[JsonSerializable(typeof(Dictionary<string, string[]>))]
internal sealed partial class DockerJsonContext : JsonSerializerContext;
