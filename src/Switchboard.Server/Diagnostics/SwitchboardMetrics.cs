using System.Collections.Concurrent;
using System.Diagnostics;
using System.Diagnostics.Metrics;

namespace Switchboard.Server.Diagnostics;

/// <summary>The gateway's instruments, created once from <see cref="IMeterFactory"/>. Names follow OpenTelemetry conventions.</summary>
public sealed class SwitchboardMetrics
{
    public const string MeterName = "Switchboard";

    private readonly UpDownCounter<long> _activeConnections;
    // Messages in and out are counted per message on every connection: striped per core and read at scrape time.
    private readonly ConcurrentDictionary<string, StripedCounter> _received = new(StringComparer.Ordinal);
    private readonly ConcurrentDictionary<string, StripedCounter> _sent = new(StringComparer.Ordinal);
    private readonly Histogram<double> _deliveryDuration;
    private readonly Histogram<double> _connectionDuration;
    private readonly Counter<long> _closes;
    private readonly Counter<long> _slowConsumers;
    private readonly Counter<long> _published;

    public SwitchboardMetrics(IMeterFactory meterFactory)
    {
        Meter = meterFactory.Create(MeterName);
        _activeConnections = Meter.CreateUpDownCounter<long>("switchboard.connections.active", "{connection}", "Open WebSocket and SSE connections, by endpoint.");
        Meter.CreateObservableCounter("switchboard.messages.received", () => Observe(_received), "{message}", "Messages received from clients, by endpoint.");
        Meter.CreateObservableCounter("switchboard.messages.sent", () => Observe(_sent), "{message}", "Messages written to clients, by endpoint.");
        _deliveryDuration = Meter.CreateHistogram<double>("switchboard.delivery.duration", "s",
            "Time from a message being queued for a connection to it being written to the socket (sampled: one frame in 16 per connection).",
            advice: new InstrumentAdvice<double> { HistogramBucketBoundaries = [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5] });
        _connectionDuration = Meter.CreateHistogram<double>("switchboard.connection.duration", "s", "How long connections stayed open, by endpoint.",
            advice: new InstrumentAdvice<double> { HistogramBucketBoundaries = [0.01, 0.1, 1, 10, 60, 300, 900, 3600, 14400, 86400] });
        _closes = Meter.CreateCounter<long>("switchboard.connections.closed", "{connection}", "Connections closed, by endpoint and close code.");
        _slowConsumers = Meter.CreateCounter<long>("switchboard.connections.slow_consumer", "{connection}", "Connections closed because their outbound queue overflowed.");
        _published = Meter.CreateCounter<long>("switchboard.channels.published", "{message}", "Messages published to channels.");
    }

    public Meter Meter { get; }

    public void ConnectionOpened(string endpoint) => _activeConnections.Add(1, new KeyValuePair<string, object?>("endpoint", endpoint));

    public void ConnectionClosed(string endpoint, int closeCode, TimeSpan duration)
    {
        var tag = new KeyValuePair<string, object?>("endpoint", endpoint);
        _activeConnections.Add(-1, tag);
        _closes.Add(1, tag, new KeyValuePair<string, object?>("code", closeCode));
        _connectionDuration.Record(duration.TotalSeconds, tag);
    }

    /// <summary>A connection refused right after the upgrade (bad token, limits): counted as closed, never active.</summary>
    public void ConnectionRejected(string endpoint, int closeCode) =>
        _closes.Add(1, new KeyValuePair<string, object?>("endpoint", endpoint), new KeyValuePair<string, object?>("code", closeCode));

    public void MessageReceived(string endpoint) => Counter(_received, endpoint).Add(1);

    public void MessagesSent(string endpoint, int count) => Counter(_sent, endpoint).Add(count);

    private static StripedCounter Counter(ConcurrentDictionary<string, StripedCounter> counters, string endpoint) =>
        counters.TryGetValue(endpoint, out var counter) ? counter : counters.GetOrAdd(endpoint, static _ => new StripedCounter());

    private static IEnumerable<Measurement<long>> Observe(ConcurrentDictionary<string, StripedCounter> counters)
    {
        foreach (var (endpoint, counter) in counters)
            yield return new Measurement<long>(counter.Sum(), new KeyValuePair<string, object?>("endpoint", endpoint));
    }

    /// <summary>Each connection records one sent frame in this many (a power of two) in the delivery histogram.</summary>
    public const int DeliverySampleEvery = 16;

    public bool DeliveryDurationEnabled => _deliveryDuration.Enabled;

    public void DeliveryDuration(long enqueuedTimestamp) =>
        _deliveryDuration.Record(Stopwatch.GetElapsedTime(enqueuedTimestamp).TotalSeconds);

    public void SlowConsumer(string endpoint) => _slowConsumers.Add(1, new KeyValuePair<string, object?>("endpoint", endpoint));

    public void Published() => _published.Add(1);
}
