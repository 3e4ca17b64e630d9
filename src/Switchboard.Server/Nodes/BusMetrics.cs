using System.Diagnostics.Metrics;
using Switchboard.Server.Diagnostics;

namespace Switchboard.Server.Nodes;

/// <summary>Instruments of a node-to-node bus (exported at <c>/metrics</c> with the rest of the <c>Switchboard</c> meter).</summary>
public sealed class BusMetrics
{
    private readonly Counter<long> _sent;
    private readonly Counter<long> _received;
    private readonly Histogram<double> _lag;
    private readonly Counter<long> _reconnects;

    public BusMetrics(IMeterFactory meterFactory)
    {
        var meter = meterFactory.Create(SwitchboardMetrics.MeterName);
        _sent = meter.CreateCounter<long>("switchboard.bus.notifications.sent", "{notification}", "Bus notifications sent by this node, by route (inline or table).");
        _received = meter.CreateCounter<long>("switchboard.bus.notifications.received", "{notification}", "Bus notifications received by this node, by origin (self or peer).");
        _lag = meter.CreateHistogram<double>("switchboard.bus.lag", "s", "Time from publish on the sending node to receipt on this node (peer messages; includes clock skew between machines).",
            advice: new InstrumentAdvice<double> { HistogramBucketBoundaries = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5] });
        _reconnects = meter.CreateCounter<long>("switchboard.bus.reconnects", "{reconnect}", "Times the bus listening connection was re-established.");
    }

    public void Sent(bool viaTable) => _sent.Add(1, new KeyValuePair<string, object?>("route", viaTable ? "table" : "inline"));

    public void Received(bool self, TimeSpan lag)
    {
        _received.Add(1, new KeyValuePair<string, object?>("origin", self ? "self" : "peer"));
        if (!self)
            _lag.Record(Math.Max(lag.TotalSeconds, 0));
    }

    public void Reconnected() => _reconnects.Add(1);
}
