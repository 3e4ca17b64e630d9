using System.Diagnostics.Metrics;
using System.Globalization;
using System.Text;

namespace Switchboard.Server.Diagnostics;

/// <summary>
/// Collects every instrument of the Switchboard meters (and of process-wide meters such as the runtime's) with a
/// <see cref="MeterListener"/> and writes them in the Prometheus text exposition format (version 0.0.4). Counters become <c>_total</c>, histograms get
/// cumulative <c>_bucket</c>/<c>_sum</c>/<c>_count</c>, and units in seconds or bytes are appended to the name.
/// </summary>
public sealed class PrometheusExporter : IDisposable
{
    private static readonly double[] DefaultBuckets = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10];

    // The runtime publishes these two as observable counters though they go down as well as up (dotnet/runtime#112077):
    // exported as counters, every drop would read as a counter reset and rate() would be meaningless.
    private static readonly HashSet<string> CountersThatAreGauges = new(StringComparer.Ordinal) { "dotnet.thread_pool.thread.count", "dotnet.thread_pool.queue.length" };
    private readonly MeterListener _listener = new();
    private readonly List<InstrumentState> _instruments = [];
    private readonly Lock _gate = new();

    /// <param name="meterNames">Meters to export.</param>
    /// <param name="scope">
    /// When set, only meters created by this <see cref="IMeterFactory"/>: a listener sees every meter of the process,
    /// so two gateways in one process (tests, an embedding host) would otherwise export each other's instruments.
    /// </param>
    /// <param name="processMeterNames">
    /// Process-wide meters exported whatever their scope, such as the runtime's <c>System.Runtime</c> (GC heap, thread
    /// pool, exceptions): there is one runtime per process.
    /// </param>
    public PrometheusExporter(IEnumerable<string> meterNames, IMeterFactory? scope = null, IEnumerable<string>? processMeterNames = null)
    {
        var names = meterNames.ToHashSet(StringComparer.Ordinal);
        var processNames = (processMeterNames ?? []).ToHashSet(StringComparer.Ordinal);
        _listener.InstrumentPublished = (instrument, listener) =>
        {
            var wanted = processNames.Contains(instrument.Meter.Name)
                || (names.Contains(instrument.Meter.Name) && (scope is null || ReferenceEquals(instrument.Meter.Scope, scope)));
            if (!wanted)
                return;
            var state = new InstrumentState(instrument);
            lock (_gate)
                _instruments.Add(state);
            listener.EnableMeasurementEvents(instrument, state);
        };
        _listener.SetMeasurementEventCallback<long>((i, v, tags, s) => ((InstrumentState)s!).Record(v, tags));
        _listener.SetMeasurementEventCallback<int>((i, v, tags, s) => ((InstrumentState)s!).Record(v, tags));
        _listener.SetMeasurementEventCallback<double>((i, v, tags, s) => ((InstrumentState)s!).Record(v, tags));
        _listener.Start();
    }

    public string Collect()
    {
        _listener.RecordObservableInstruments();
        var sb = new StringBuilder(4096);
        InstrumentState[] snapshot;
        lock (_gate)
            snapshot = [.. _instruments];
        foreach (var state in snapshot.OrderBy(s => s.Instrument.Name, StringComparer.Ordinal))
            state.Write(sb);
        return sb.ToString();
    }

    public void Dispose() => _listener.Dispose();

    private static string PromName(Instrument instrument)
    {
        var name = instrument.Name.Replace('.', '_').Replace('-', '_');
        var suffix = instrument.Unit switch
        {
            "s" => "_seconds",
            "By" => "_bytes",
            "%" => "_percent",
            _ => "",
        };
        if (suffix.Length > 0 && !name.EndsWith(suffix, StringComparison.Ordinal))
            name += suffix;
        return name;
    }

    private static string Escape(string value) => value.Replace("\\", "\\\\", StringComparison.Ordinal).Replace("\"", "\\\"", StringComparison.Ordinal).Replace("\n", "\\n", StringComparison.Ordinal);

    private static string Format(double v) => double.IsPositiveInfinity(v) ? "+Inf" : v.ToString("R", CultureInfo.InvariantCulture);

    private sealed class InstrumentState(Instrument instrument)
    {
        private readonly Lock _gate = new();
        private Series[] _seriesSnapshot = [];
        private readonly double[] _buckets = instrument is Histogram<double> h && h.Advice?.HistogramBucketBoundaries is { } b ? [.. b] : DefaultBuckets;

        public Instrument Instrument { get; } = instrument;

        private bool IsHistogram => Instrument is Histogram<double> or Histogram<long> or Histogram<int>;
        private bool IsGauge => Instrument.GetType().Name.StartsWith("Observable", StringComparison.Ordinal) && !Instrument.GetType().Name.StartsWith("ObservableCounter", StringComparison.Ordinal)
            || Instrument.GetType().Name.StartsWith("Gauge", StringComparison.Ordinal)
            || CountersThatAreGauges.Contains(Instrument.Name);
        private bool IsUpDown => Instrument.GetType().Name.Contains("UpDown", StringComparison.Ordinal);

        // Hot path (every delivered message records a latency): lock-free. Series are found in a copy-on-write
        // array and updated with interlocked operations; only creating a new label set takes the lock.
        public void Record(double value, ReadOnlySpan<KeyValuePair<string, object?>> tags)
        {
            var series = Find(tags);
            if (IsHistogram)
            {
                Interlocked.Increment(ref series.Count);
                series.AddSum(value);
                var idx = Array.BinarySearch(_buckets, value);
                if (idx < 0)
                    idx = ~idx;
                Interlocked.Increment(ref series.Buckets![idx]);
            }
            else if ((IsGauge && !IsUpDown) || Instrument.IsObservable)
            {
                Volatile.Write(ref series.Value, value); // gauges and observable counters report the current value
            }
            else
            {
                series.AddValue(value);
            }
        }

        private Series Find(ReadOnlySpan<KeyValuePair<string, object?>> tags)
        {
            var all = Volatile.Read(ref _seriesSnapshot);
            foreach (var s in all)
            {
                if (s.Matches(tags))
                    return s;
            }
            lock (_gate)
            {
                foreach (var s in _seriesSnapshot)
                {
                    if (s.Matches(tags))
                        return s;
                }
                var created = new Series(tags, IsHistogram ? new long[_buckets.Length + 1] : null);
                Volatile.Write(ref _seriesSnapshot, [.. _seriesSnapshot, created]);
                return created;
            }
        }

        public void Write(StringBuilder sb)
        {
            var name = PromName(Instrument);
            var type = IsHistogram ? "histogram" : (IsGauge || IsUpDown) ? "gauge" : "counter";
            var metric = type == "counter" ? name + "_total" : name;
            var all = Volatile.Read(ref _seriesSnapshot);
            {
                if (all.Length == 0 && !IsGauge)
                    return;
                sb.Append("# HELP ").Append(metric).Append(' ').Append(Instrument.Description ?? Instrument.Name).Append('\n');
                sb.Append("# TYPE ").Append(metric).Append(' ').Append(type).Append('\n');
                foreach (var s in all)
                {
                    if (type == "histogram")
                    {
                        long cumulative = 0;
                        for (var i = 0; i <= _buckets.Length; i++)
                        {
                            cumulative += Interlocked.Read(ref s.Buckets![i]);
                            var le = i < _buckets.Length ? Format(_buckets[i]) : "+Inf";
                            sb.Append(name).Append("_bucket");
                            s.WriteLabels(sb, ("le", le));
                            sb.Append(' ').Append(cumulative.ToString(CultureInfo.InvariantCulture)).Append('\n');
                        }
                        sb.Append(name).Append("_sum");
                        s.WriteLabels(sb, null);
                        sb.Append(' ').Append(Format(s.Sum)).Append('\n');
                        sb.Append(name).Append("_count");
                        s.WriteLabels(sb, null);
                        sb.Append(' ').Append(s.Count.ToString(CultureInfo.InvariantCulture)).Append('\n');
                    }
                    else
                    {
                        sb.Append(metric);
                        s.WriteLabels(sb, null);
                        sb.Append(' ').Append(Format(s.Value)).Append('\n');
                    }
                }
            }
        }
    }

    private sealed class Series
    {
        private readonly KeyValuePair<string, string>[] _labels;

        public Series(ReadOnlySpan<KeyValuePair<string, object?>> tags, long[]? buckets)
        {
            _labels = new KeyValuePair<string, string>[tags.Length];
            for (var i = 0; i < tags.Length; i++)
                _labels[i] = new(tags[i].Key, Convert.ToString(tags[i].Value, CultureInfo.InvariantCulture) ?? "");
            Buckets = buckets;
        }

        public double Value;
        public double Sum;
        public long Count;
        public long[]? Buckets { get; }

        public void AddValue(double v)
        {
            double current, updated;
            do
            {
                current = Volatile.Read(ref Value);
                updated = current + v;
            }
            while (Interlocked.CompareExchange(ref Value, updated, current) != current);
        }

        public void AddSum(double v)
        {
            double current, updated;
            do
            {
                current = Volatile.Read(ref Sum);
                updated = current + v;
            }
            while (Interlocked.CompareExchange(ref Sum, updated, current) != current);
        }

        public bool Matches(ReadOnlySpan<KeyValuePair<string, object?>> tags)
        {
            if (tags.Length != _labels.Length)
                return false;
            for (var i = 0; i < tags.Length; i++)
            {
                if (tags[i].Key != _labels[i].Key)
                    return false;
                var v = tags[i].Value;
                var same = v switch
                {
                    string str => str == _labels[i].Value,
                    int n => _labels[i].Value == n.ToString(CultureInfo.InvariantCulture),
                    _ => Convert.ToString(v, CultureInfo.InvariantCulture) == _labels[i].Value,
                };
                if (!same)
                    return false;
            }
            return true;
        }

        public void WriteLabels(StringBuilder sb, (string Key, string Value)? extra)
        {
            if (_labels.Length == 0 && extra is null)
                return;
            sb.Append('{');
            var first = true;
            foreach (var l in _labels)
            {
                if (!first)
                    sb.Append(',');
                first = false;
                sb.Append(l.Key.Replace('.', '_')).Append("=\"").Append(Escape(l.Value)).Append('"');
            }
            if (extra is { } e)
            {
                if (!first)
                    sb.Append(',');
                sb.Append(e.Key).Append("=\"").Append(e.Value).Append('"');
            }
            sb.Append('}');
        }
    }
}
