using System.Net.Http.Headers;
using System.Net.Http.Json;
using System.Net.WebSockets;
using System.Text;
using System.Text.Json;
using Switchboard.Protocol;
using Switchboard.Protocol.Environments;

namespace Switchboard.Client.Environments;

/// <summary>An error answer of the environments API.</summary>
public sealed class EnvironmentApiException(int status, string message) : Exception(message)
{
    public int Status { get; } = status;
}

/// <summary>
/// Client of the environments API: REST calls, and the logs, terminal and status WebSockets. The credential (API key
/// or JWT) is sent as <c>Authorization: Bearer</c> on every request and upgrade.
/// </summary>
public sealed class EnvironmentClient : IDisposable
{
    private readonly HttpClient _http;
    private readonly Uri _wsBase;
    private readonly string _credential;

    public EnvironmentClient(Uri baseUri, string credential)
    {
        var b = baseUri.ToString().EndsWith('/') ? baseUri : new Uri(baseUri + "/");
        _http = new HttpClient { BaseAddress = b, Timeout = TimeSpan.FromSeconds(60) };
        _http.DefaultRequestHeaders.Authorization = new AuthenticationHeaderValue("Bearer", credential);
        _wsBase = new Uri(b.ToString().Replace("https://", "wss://", StringComparison.Ordinal).Replace("http://", "ws://", StringComparison.Ordinal));
        _credential = credential;
    }

    public async Task<EnvironmentInfo> CreateAsync(CreateEnvironmentRequest request, CancellationToken cancellationToken = default)
    {
        using var response = await _http.PostAsJsonAsync("api/v1/environments", request, EnvironmentsJsonContext.Default.CreateEnvironmentRequest, cancellationToken);
        return await ReadAsync(response, EnvironmentsJsonContext.Default.EnvironmentInfo, cancellationToken);
    }

    public async Task<IReadOnlyList<EnvironmentInfo>> ListAsync(CancellationToken cancellationToken = default)
    {
        using var response = await _http.GetAsync("api/v1/environments", cancellationToken);
        return (await ReadAsync(response, EnvironmentsJsonContext.Default.EnvironmentList, cancellationToken)).Environments;
    }

    public async Task<EnvironmentInfo> GetAsync(string idOrName, CancellationToken cancellationToken = default)
    {
        using var response = await _http.GetAsync("api/v1/environments/" + Uri.EscapeDataString(idOrName), cancellationToken);
        return await ReadAsync(response, EnvironmentsJsonContext.Default.EnvironmentInfo, cancellationToken);
    }

    /// <summary><c>start</c>, <c>stop</c> or <c>restart</c>.</summary>
    public async Task<EnvironmentInfo> ActionAsync(string idOrName, string action, CancellationToken cancellationToken = default)
    {
        using var response = await _http.PostAsync($"api/v1/environments/{Uri.EscapeDataString(idOrName)}/{action}", null, cancellationToken);
        return await ReadAsync(response, EnvironmentsJsonContext.Default.EnvironmentInfo, cancellationToken);
    }

    public async Task DeleteAsync(string idOrName, CancellationToken cancellationToken = default)
    {
        using var response = await _http.DeleteAsync("api/v1/environments/" + Uri.EscapeDataString(idOrName), cancellationToken);
        if (!response.IsSuccessStatusCode)
            throw await ErrorAsync(response, cancellationToken);
    }

    /// <summary>Opens one of the WebSockets (<c>logs</c>, <c>terminal</c>, <c>status</c>).</summary>
    public async Task<ClientWebSocket> ConnectAsync(string idOrName, string kind, string query = "", CancellationToken cancellationToken = default)
    {
        var ws = new ClientWebSocket();
        ws.Options.SetRequestHeader("Authorization", "Bearer " + _credential);
        ws.Options.KeepAliveInterval = TimeSpan.Zero;
        await ws.ConnectAsync(new Uri(_wsBase, $"api/v1/ws/environments/{Uri.EscapeDataString(idOrName)}/{kind}{(query.Length > 0 ? "?" + query : "")}"), cancellationToken);
        return ws;
    }

    /// <summary>
    /// Streams lines: the history (<paramref name="tail"/> lines, or everything after <paramref name="since"/>), then
    /// with <paramref name="follow"/> live lines until cancelled. After a close that allows it (see
    /// <see cref="CloseCodes.ShouldReconnect"/>) it reconnects with <c>since</c> = the last seq seen, so no line is
    /// missed or repeated. Returns the last seq seen.
    /// </summary>
    public async Task<long> StreamLogsAsync(string idOrName, long? since, int? tail, string? stream, bool follow,
        Action<LogLine> onLine, Action<LogSkipped>? onSkipped = null, CancellationToken cancellationToken = default)
    {
        var last = since;
        var attempt = 0;
        while (true)
        {
            var query = new StringBuilder();
            if (last is { } s)
                query.Append("since=").Append(s);
            else if (tail is { } t)
                query.Append("tail=").Append(t);
            if (!string.IsNullOrEmpty(stream))
                query.Append(query.Length > 0 ? "&" : "").Append("stream=").Append(stream);
            int code;
            try
            {
                using var ws = await ConnectAsync(idOrName, "logs", query.ToString(), cancellationToken);
                attempt = 0;
                await foreach (var message in ReadMessagesAsync(ws, cancellationToken))
                {
                    var root = message.RootElement;
                    switch (root.GetProperty("type").GetString())
                    {
                        case "log":
                            var line = root.Deserialize(EnvironmentsJsonContext.Default.LogLine)!;
                            last = line.Seq;
                            onLine(line);
                            break;
                        case "batch":
                            var batch = root.Deserialize(EnvironmentsJsonContext.Default.LogBatch)!;
                            foreach (var l in batch.Logs)
                            {
                                last = l.Seq;
                                onLine(l);
                            }
                            if (!batch.Live)
                            {
                                last = Math.Max(last ?? 0, batch.LastSeq);
                                if (!follow)
                                {
                                    await CloseQuietlyAsync(ws);
                                    return last ?? 0;
                                }
                            }
                            break;
                        case "skipped":
                            var skipped = root.Deserialize(EnvironmentsJsonContext.Default.LogSkipped)!;
                            last = Math.Max(last ?? 0, skipped.ToSeq);
                            onSkipped?.Invoke(skipped);
                            break;
                    }
                    message.Dispose();
                }
                code = ws.CloseStatus is { } c ? (int)c : 1006;
                if (!CloseCodes.ShouldReconnect(code))
                    throw new EnvironmentApiException(code, $"log stream closed: {code} {ws.CloseStatusDescription}");
            }
            catch (Exception ex) when (ex is WebSocketException or HttpRequestException)
            {
                code = 1006;
            }
            attempt++;
            var delay = CloseCodes.ShouldBackOff(code) ? TimeSpan.FromMilliseconds(Math.Min(30_000, 500 * Math.Pow(2, Math.Min(attempt, 6)))) : TimeSpan.FromMilliseconds(100);
            await Task.Delay(delay, cancellationToken);
        }
    }

    /// <summary>Reads JSON messages until the socket closes (server pings are skipped). Dispose each document.</summary>
    public static async IAsyncEnumerable<JsonDocument> ReadMessagesAsync(ClientWebSocket ws, [System.Runtime.CompilerServices.EnumeratorCancellation] CancellationToken cancellationToken)
    {
        var buffer = new byte[64 * 1024];
        using var ms = new MemoryStream();
        while (ws.State == WebSocketState.Open)
        {
            ms.SetLength(0);
            ValueWebSocketReceiveResult r;
            do
            {
                try
                {
                    r = await ws.ReceiveAsync(buffer.AsMemory(), cancellationToken);
                }
                catch (WebSocketException) when (ws.CloseStatus is not null)
                {
                    yield break;
                }
                if (r.MessageType == WebSocketMessageType.Close)
                {
                    if (ws.State == WebSocketState.CloseReceived)
                        await CloseQuietlyAsync(ws);
                    yield break;
                }
                ms.Write(buffer, 0, r.Count);
            }
            while (!r.EndOfMessage);
            var doc = JsonDocument.Parse(ms.ToArray());
            if (doc.RootElement.TryGetProperty("type", out var t) && t.GetString() == "ping")
            {
                doc.Dispose();
                continue;
            }
            yield return doc;
        }
    }

    public static Task SendJsonAsync<T>(ClientWebSocket ws, T value, System.Text.Json.Serialization.Metadata.JsonTypeInfo<T> typeInfo, CancellationToken cancellationToken) =>
        ws.SendAsync(JsonSerializer.SerializeToUtf8Bytes(value, typeInfo), WebSocketMessageType.Text, true, cancellationToken);

    public static async Task CloseQuietlyAsync(ClientWebSocket ws)
    {
        try
        {
            using var cts = new CancellationTokenSource(TimeSpan.FromSeconds(2));
            if (ws.State is WebSocketState.Open or WebSocketState.CloseReceived)
                await ws.CloseOutputAsync(WebSocketCloseStatus.NormalClosure, "bye", cts.Token);
        }
        catch (Exception ex) when (ex is WebSocketException or OperationCanceledException)
        {
        }
    }

    private static async Task<T> ReadAsync<T>(HttpResponseMessage response, System.Text.Json.Serialization.Metadata.JsonTypeInfo<T> typeInfo, CancellationToken cancellationToken)
    {
        if (!response.IsSuccessStatusCode)
            throw await ErrorAsync(response, cancellationToken);
        return (await response.Content.ReadFromJsonAsync(typeInfo, cancellationToken))!;
    }

    private static async Task<EnvironmentApiException> ErrorAsync(HttpResponseMessage response, CancellationToken cancellationToken)
    {
        var text = await response.Content.ReadAsStringAsync(cancellationToken);
        try
        {
            using var doc = JsonDocument.Parse(text);
            if (doc.RootElement.TryGetProperty("message", out var m))
                text = m.GetString() ?? text;
        }
        catch (JsonException)
        {
        }
        return new EnvironmentApiException((int)response.StatusCode, $"{(int)response.StatusCode}: {text}");
    }

    public void Dispose() => _http.Dispose();
}
