using System.Text;

namespace Switchboard.Server.Environments;

/// <summary>
/// Cuts a byte stream into lines for one output stream: splits on <c>\n</c>, drops a trailing <c>\r</c>, splits
/// lines longer than the maximum, keeps a partial last line until its end arrives. Not thread-safe: one per stream.
/// </summary>
internal sealed class LineSplitter(int maxLineBytes)
{
    private readonly byte[] _partial = new byte[maxLineBytes];
    private int _partialLength;

    /// <summary>Adds the complete lines in <paramref name="span"/> (and before it) to <paramref name="lines"/>.</summary>
    public void Push(ReadOnlySpan<byte> span, List<string> lines)
    {
        int i;
        while ((i = span.IndexOf((byte)'\n')) >= 0)
        {
            var piece = span[..i];
            if (_partialLength > 0)
            {
                var take = Math.Min(piece.Length, _partial.Length - _partialLength);
                piece[..take].CopyTo(_partial.AsSpan(_partialLength));
                lines.Add(Decode(_partial.AsSpan(0, _partialLength + take)));
                _partialLength = 0;
            }
            else
            {
                lines.Add(Decode(piece.Length > _partial.Length ? piece[.._partial.Length] : piece));
            }
            span = span[(i + 1)..];
        }
        while (span.Length > 0)
        {
            var take = Math.Min(span.Length, _partial.Length - _partialLength);
            span[..take].CopyTo(_partial.AsSpan(_partialLength));
            _partialLength += take;
            span = span[take..];
            if (_partialLength == _partial.Length)
            {
                lines.Add(Decode(_partial));
                _partialLength = 0;
            }
        }
    }

    /// <summary>The stream ended: a last line without newline is still a line.</summary>
    public void Flush(List<string> lines)
    {
        if (_partialLength > 0)
            lines.Add(Decode(_partial.AsSpan(0, _partialLength)));
        _partialLength = 0;
    }

    private static string Decode(ReadOnlySpan<byte> line)
    {
        if (line.Length > 0 && line[^1] == (byte)'\r')
            line = line[..^1];
        return Encoding.UTF8.GetString(line);
    }
}
