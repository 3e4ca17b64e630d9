using System.Text;
using Switchboard.Server.Storage;
using Xunit;

namespace Switchboard.Storage.Specification;

/// <summary>
/// What every <see cref="IChannelStore"/> must do. A backend's test project derives from this class and supplies a
/// fresh, empty store per test; the PostgreSQL and SQLite stores run the same facts.
/// </summary>
public abstract class ChannelStoreSpecification
{
    /// <summary>A new, empty store. The same instance is returned for every call within one test.</summary>
    protected abstract Task<IChannelStore> CreateStoreAsync();

    /// <summary>Simulates losing the store (a new database): returns a store over fresh, empty storage.</summary>
    protected abstract Task<IChannelStore> CreateFreshStoreAsync();

    private static ReadOnlyMemory<byte> Json(string s) => Encoding.UTF8.GetBytes("\"" + s + "\"");

    [Fact]
    public async Task New_channel_is_at_offset_zero_with_a_stable_epoch()
    {
        var store = await CreateStoreAsync();
        var a = await store.GetPositionAsync("spec:new", default);
        var b = await store.GetPositionAsync("spec:new", default);
        Assert.Equal(0, a.Offset);
        Assert.False(string.IsNullOrEmpty(a.Epoch));
        Assert.Equal(a, b);
        // Reading (history, subscribe) does not move it; the first publish continues from exactly that position.
        var history = await store.ReadAsync("spec:new", 0, 10, default);
        Assert.Empty(history.Messages);
        Assert.Equal(a, await store.GetPositionAsync("spec:new", default));
        var first = await store.AppendAsync("spec:new", Json("1"), 100, default);
        Assert.Equal(new ChannelPosition(1, a.Epoch), new ChannelPosition(first.Message.Offset, first.Epoch));
    }

    [Fact]
    public async Task Append_assigns_consecutive_offsets_per_channel()
    {
        var store = await CreateStoreAsync();
        var first = await store.AppendAsync("spec:a", Json("1"), 100, default);
        var second = await store.AppendAsync("spec:a", Json("2"), 100, default);
        var other = await store.AppendAsync("spec:b", Json("x"), 100, default);
        Assert.Equal(1, first.Message.Offset);
        Assert.Equal(2, second.Message.Offset);
        Assert.Equal(1, other.Message.Offset);
        Assert.Equal(first.Epoch, second.Epoch);
        var position = await store.GetPositionAsync("spec:a", default);
        Assert.Equal(new ChannelPosition(2, first.Epoch), position);
    }

    [Fact]
    public async Task Concurrent_appends_get_unique_gapless_offsets()
    {
        var store = await CreateStoreAsync();
        var tasks = Enumerable.Range(0, 100).Select(i => store.AppendAsync("spec:c", Json(i.ToString(System.Globalization.CultureInfo.InvariantCulture)), 1000, default).AsTask());
        var results = await Task.WhenAll(tasks);
        Assert.Equal(Enumerable.Range(1, 100).Select(i => (long)i), results.Select(r => r.Message.Offset).Order());
    }

    [Fact]
    public async Task Concurrent_appends_to_several_channels_each_get_their_own_gapless_offsets_matching_the_stored_data()
    {
        var store = await CreateStoreAsync();
        string[] channels = ["spec:m1", "spec:m2", "spec:m3"];
        // Interleaved, so a group commit holds messages of several channels at once.
        var tasks = Enumerable.Range(0, 150).Select(i => store.AppendAsync(channels[i % 3], Json(i.ToString(System.Globalization.CultureInfo.InvariantCulture)), 1000, default).AsTask()).ToArray();
        var results = await Task.WhenAll(tasks);
        foreach (var channel in channels)
        {
            var mine = results.Where(r => r.Message.Channel == channel).ToList();
            Assert.Equal(Enumerable.Range(1, 50).Select(i => (long)i), mine.Select(r => r.Message.Offset).Order());
            var history = await store.ReadAsync(channel, 0, 100, default);
            Assert.Equal(50, history.Messages.Count);
            // What the append reported for each offset is what the store holds at that offset.
            foreach (var r in mine)
                Assert.Equal(r.Message.Data.ToArray(), history.Messages.Single(m => m.Offset == r.Message.Offset).Data.ToArray());
        }
    }

    [Fact]
    public async Task Read_returns_messages_after_offset_in_order_and_complete()
    {
        var store = await CreateStoreAsync();
        for (var i = 1; i <= 5; i++)
            await store.AppendAsync("spec:r", Json("m" + i), 100, default);
        var history = await store.ReadAsync("spec:r", 2, 100, default);
        Assert.True(history.Complete);
        Assert.Equal(5, history.Position.Offset);
        Assert.Equal([3L, 4, 5], history.Messages.Select(m => m.Offset));
        Assert.Equal("\"m3\"", Encoding.UTF8.GetString(history.Messages[0].Data.Span));

        var upToDate = await store.ReadAsync("spec:r", 5, 100, default);
        Assert.True(upToDate.Complete);
        Assert.Empty(upToDate.Messages);

        var limited = await store.ReadAsync("spec:r", 0, 2, default);
        Assert.False(limited.Complete);
        Assert.Equal([1L, 2], limited.Messages.Select(m => m.Offset));
    }

    [Fact]
    public async Task Retention_trims_old_messages_and_reads_across_the_trim_are_incomplete()
    {
        var store = await CreateStoreAsync();
        for (var i = 1; i <= 10; i++)
            await store.AppendAsync("spec:t", Json("m" + i), 3, default);
        var all = await store.ReadAsync("spec:t", 0, 100, default);
        Assert.False(all.Complete);
        Assert.Equal([8L, 9, 10], all.Messages.Select(m => m.Offset));
        var recent = await store.ReadAsync("spec:t", 7, 100, default);
        Assert.True(recent.Complete);
    }

    [Fact]
    public async Task Trim_by_age_removes_only_older_messages()
    {
        var store = await CreateStoreAsync();
        await store.AppendAsync("spec:age", Json("old"), 100, default);
        var removed = await store.TrimOlderThanAsync(DateTimeOffset.UtcNow.AddMinutes(5), default);
        Assert.True(removed >= 1);
        await store.AppendAsync("spec:age", Json("new"), 100, default);
        var removedNone = await store.TrimOlderThanAsync(DateTimeOffset.UtcNow.AddMinutes(-5), default);
        Assert.Equal(0, removedNone);
        var history = await store.ReadAsync("spec:age", 0, 100, default);
        Assert.Equal([2L], history.Messages.Select(m => m.Offset));
        Assert.False(history.Complete);
    }

    [Fact]
    public async Task A_lost_store_gives_a_new_epoch()
    {
        var store = await CreateStoreAsync();
        var before = await store.AppendAsync("spec:e", Json("x"), 100, default);
        var fresh = await CreateFreshStoreAsync();
        var after = await fresh.GetPositionAsync("spec:e", default);
        Assert.NotEqual(before.Epoch, after.Epoch);
        Assert.Equal(0, after.Offset);
    }
}
