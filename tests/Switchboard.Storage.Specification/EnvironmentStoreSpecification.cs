using Switchboard.Server.Environments;
using Xunit;

namespace Switchboard.Storage.Specification;

/// <summary>What every <see cref="IEnvironmentStore"/> must do.</summary>
public abstract class EnvironmentStoreSpecification
{
    protected abstract Task<IEnvironmentStore> CreateStoreAsync();

    private static EnvironmentRecord Env(string id, string name, string? node = null) =>
        new(id, name, "process", "/bin/sh", ["-c", "echo hi"], "/tmp", new Dictionary<string, string> { ["A"] = "1", ["B"] = "two" }, null,
            DateTimeOffset.FromUnixTimeMilliseconds(1_700_000_000_000), node);

    private static LogRecord[] Lines(long from, long to) =>
        [.. Enumerable.Range((int)from, (int)(to - from + 1)).Select(i => new LogRecord(i, DateTimeOffset.FromUnixTimeMilliseconds(1_700_000_000_000 + i), (byte)(i % 2 == 0 ? 2 : 1), "line " + i))];

    [Fact]
    public async Task Definitions_round_trip_and_names_are_unique()
    {
        var store = await CreateStoreAsync();
        Assert.True(await store.CreateAsync(Env("e1", "one"), default));
        Assert.True(await store.CreateAsync(Env("e2", "two"), default));
        Assert.False(await store.CreateAsync(Env("e3", "one"), default)); // name taken
        Assert.False(await store.CreateAsync(Env("e1", "other"), default)); // id taken
        var got = await store.GetAsync("e1", default);
        Assert.NotNull(got);
        Assert.Equal("one", got.Name);
        Assert.Equal("process", got.Driver);
        Assert.Equal("/bin/sh", got.Command);
        Assert.Equal(["-c", "echo hi"], got.Args);
        Assert.Equal("/tmp", got.Cwd);
        Assert.Equal("two", got.Env["B"]);
        Assert.Equal(Env("e1", "one").CreatedAt, got.CreatedAt);
        Assert.Equal(["e1", "e2"], (await store.ListAsync(default)).Select(e => e.Id));
        Assert.True(await store.DeleteAsync("e1", default));
        Assert.False(await store.DeleteAsync("e1", default));
        Assert.Null(await store.GetAsync("e1", default));
    }

    [Fact]
    public async Task The_owner_node_is_stored_and_found_by_id_and_name()
    {
        var store = await CreateStoreAsync();
        Assert.True(await store.CreateAsync(Env("e1", "one", "node-a"), default));
        Assert.True(await store.CreateAsync(Env("e2", "two"), default));
        Assert.Equal("node-a", (await store.GetAsync("e1", default))!.NodeId);
        Assert.Null((await store.GetAsync("e2", default))!.NodeId);
        var byName = await store.GetByNameAsync("one", default);
        Assert.NotNull(byName);
        Assert.Equal("e1", byName.Id);
        Assert.Equal("node-a", byName.NodeId);
        Assert.Null(await store.GetByNameAsync("e1", default)); // an id is not a name
        Assert.Null(await store.GetByNameAsync("missing", default));
        Assert.Equal(["node-a", null], (await store.ListAsync(default)).Select(e => e.NodeId));
    }

    [Fact]
    public async Task Owner_changes_are_compare_and_set()
    {
        var store = await CreateStoreAsync();
        await store.CreateAsync(Env("e1", "one", "node-a"), default);
        await store.CreateAsync(Env("e2", "two"), default);
        Assert.False(await store.SetOwnerAsync("e1", "node-b", "node-c", default)); // not the current owner
        Assert.False(await store.SetOwnerAsync("e1", "node-b", null, default));
        Assert.Equal("node-a", (await store.GetAsync("e1", default))!.NodeId);
        Assert.True(await store.SetOwnerAsync("e1", "node-b", "node-a", default));
        Assert.Equal("node-b", (await store.GetAsync("e1", default))!.NodeId);
        Assert.False(await store.SetOwnerAsync("missing", "node-b", null, default));

        // Several nodes claiming an environment without owner at once: exactly one wins.
        var claims = await Task.WhenAll(Enumerable.Range(0, 8).Select(i => store.SetOwnerAsync("e2", "node-" + i, null, default).AsTask()));
        Assert.Single(claims, c => c);
        Assert.Equal("node-" + Array.IndexOf(claims, true), (await store.GetAsync("e2", default))!.NodeId);
    }

    [Fact]
    public async Task Lines_are_read_by_range_and_tail_in_order()
    {
        var store = await CreateStoreAsync();
        await store.CreateAsync(Env("e1", "one"), default);
        await store.CreateAsync(Env("e2", "two"), default);
        Assert.Equal(0, await store.LastSeqAsync("e1", default));
        await store.AppendLogsAsync("e1", Lines(1, 50), 1000, default);
        await store.AppendLogsAsync("e1", Lines(51, 60), 1000, default);
        await store.AppendLogsAsync("e2", Lines(1, 5), 1000, default);
        Assert.Equal(60, await store.LastSeqAsync("e1", default));

        var range = await store.ReadLogsAsync("e1", 10, 20, 100, default);
        Assert.Equal(Enumerable.Range(11, 10).Select(i => (long)i), range.Select(l => l.Seq));
        Assert.Equal("line 11", range[0].Message);
        Assert.Equal(1, range[0].Stream);
        Assert.Equal(2, range[1].Stream);
        Assert.Equal(DateTimeOffset.FromUnixTimeMilliseconds(1_700_000_000_011), range[0].Timestamp);
        Assert.Equal(3, (await store.ReadLogsAsync("e1", 0, 60, 3, default)).Count);

        var tail = await store.TailLogsAsync("e1", 55, 5, default);
        Assert.Equal([51L, 52, 53, 54, 55], tail.Select(l => l.Seq));
        Assert.Equal(5, (await store.TailLogsAsync("e2", 100, 10, default)).Count);
    }

    [Fact]
    public async Task Retention_keeps_the_newest_lines_and_delete_removes_them()
    {
        var store = await CreateStoreAsync();
        await store.CreateAsync(Env("e1", "one"), default);
        await store.AppendLogsAsync("e1", Lines(1, 100), 30, default);
        var all = await store.ReadLogsAsync("e1", 0, long.MaxValue, 1000, default);
        Assert.Equal(30, all.Count);
        Assert.Equal(71, all[0].Seq);
        await store.DeleteAsync("e1", default);
        Assert.Empty(await store.ReadLogsAsync("e1", 0, long.MaxValue, 1000, default));
        Assert.Equal(0, await store.LastSeqAsync("e1", default));
    }

    [Fact]
    public async Task Large_appends_keep_every_line_and_measure_the_rate()
    {
        var store = await CreateStoreAsync();
        await store.CreateAsync(Env("e1", "one"), default);
        var sw = System.Diagnostics.Stopwatch.StartNew();
        for (var from = 1; from <= 50_000; from += 5_000)
            await store.AppendLogsAsync("e1", Lines(from, from + 4_999), 1_000_000, default);
        var rate = 50_000 / sw.Elapsed.TotalSeconds;
        Assert.Equal(50_000, await store.LastSeqAsync("e1", default));
        var all = await store.ReadLogsAsync("e1", 0, long.MaxValue, 100_000, default);
        Assert.Equal(50_000, all.Count);
        Assert.Equal(Enumerable.Range(1, 50_000).Select(i => (long)i), all.Select(l => l.Seq));
        Assert.Equal("line 12345", all[12_344].Message);
        Console.WriteLine($"environment log append: {rate:F0} lines/s");
    }
}
