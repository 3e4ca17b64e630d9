using System.Net;
using System.Security.Cryptography;
using Switchboard.Server.Tests.Cluster;

namespace Switchboard.Server.Tests.Tunnels;

/// <summary>
/// 50 MB through a real agent with the managed heap measured (after full collections) along the way. The heap is the
/// whole test process's, so these run alone: another test's buffers would count as this transfer's.
/// </summary>
[Collection("Serial")]
public sealed class TunnelMemoryTests
{
    [Fact]
    public async Task Download_of_50_MB_is_byte_exact_with_bounded_memory()
    {
        await using var h = await TunnelHarness.StartAsync();
        const long size = 50L * 1024 * 1024;
        var expected = Convert.ToHexStringLower(SHA256.HashData(LocalApp.Pattern(size)));
        GC.Collect();
        var baseline = GC.GetTotalMemory(true);
        long peak = 0;
        using var response = await h.Client.GetAsync(h.Path($"/download?size={size}"), HttpCompletionOption.ResponseHeadersRead);
        Assert.Equal(HttpStatusCode.OK, response.StatusCode);
        await using var body = await response.Content.ReadAsStreamAsync();
        using var sha = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
        var buffer = new byte[64 * 1024];
        long total = 0;
        int n;
        while ((n = await body.ReadAsync(buffer)) > 0)
        {
            sha.AppendData(buffer, 0, n);
            total += n;
            if ((total & 0x3FFFFF) < n) // every 4 MB: live memory (after a full collection), so garbage not yet collected does not count
                peak = Math.Max(peak, GC.GetTotalMemory(true) - baseline);
        }
        Assert.Equal(size, total);
        Assert.Equal(expected, Convert.ToHexStringLower(sha.GetHashAndReset()));
        Assert.True(peak < 40L * 1024 * 1024, $"managed heap grew by {peak / 1024 / 1024} MB during a 50 MB transfer");
    }

    [Fact]
    public async Task Upload_of_50_MB_is_byte_exact_with_bounded_memory()
    {
        await using var h = await TunnelHarness.StartAsync();
        const long size = 50L * 1024 * 1024;
        var data = LocalApp.Pattern(size);
        var expected = $"{size}:{Convert.ToHexStringLower(SHA256.HashData(data))}";
        GC.Collect();
        var baseline = GC.GetTotalMemory(true);
        var content = new StreamContent(new PeakTrackingStream(data, baseline));
        using var response = await h.Client.PostAsync(h.Path("/upload"), content);
        Assert.Equal(HttpStatusCode.OK, response.StatusCode);
        Assert.Equal(expected, await response.Content.ReadAsStringAsync());
        Assert.True(PeakTrackingStream.Peak < 40L * 1024 * 1024, $"managed heap grew by {PeakTrackingStream.Peak / 1024 / 1024} MB during a 50 MB upload");
    }

    /// <summary>Upload source that samples the managed heap as it is read.</summary>
    private sealed class PeakTrackingStream(byte[] data, long baseline) : MemoryStream(data, writable: false)
    {
        public static long Peak;
        private long _sinceSample;

        public override async ValueTask<int> ReadAsync(Memory<byte> buffer, CancellationToken cancellationToken = default)
        {
            var n = await base.ReadAsync(buffer, cancellationToken);
            _sinceSample += n;
            if (_sinceSample > 4 * 1024 * 1024)
            {
                _sinceSample = 0;
                // The source array itself is in the baseline; growth of live memory beyond it would be buffering
                // (a full collection first, so garbage the GC has not collected yet does not count).
                Peak = Math.Max(Peak, GC.GetTotalMemory(true) - baseline);
            }
            return n;
        }
    }
}
