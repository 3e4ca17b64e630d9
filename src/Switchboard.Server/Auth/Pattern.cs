namespace Switchboard.Server.Auth;

/// <summary>Glob matching for grant patterns: <c>*</c> matches any run of characters (including none); everything else is literal.</summary>
public static class Pattern
{
    public static bool Matches(string pattern, string value)
    {
        ArgumentNullException.ThrowIfNull(pattern);
        ArgumentNullException.ThrowIfNull(value);
        return Match(pattern.AsSpan(), value.AsSpan());
    }

    public static bool AnyMatches(IReadOnlyList<string> patterns, string value)
    {
        for (var i = 0; i < patterns.Count; i++)
        {
            if (Matches(patterns[i], value))
                return true;
        }
        return false;
    }

    // Iterative wildcard match with single backtrack point: O(n*m) worst case, no recursion, no regex.
    private static bool Match(ReadOnlySpan<char> p, ReadOnlySpan<char> v)
    {
        int pi = 0, vi = 0, star = -1, mark = 0;
        while (vi < v.Length)
        {
            if (pi < p.Length && p[pi] == '*')
            {
                star = pi++;
                mark = vi;
            }
            else if (pi < p.Length && p[pi] == v[vi])
            {
                pi++;
                vi++;
            }
            else if (star >= 0)
            {
                pi = star + 1;
                vi = ++mark;
            }
            else
            {
                return false;
            }
        }
        while (pi < p.Length && p[pi] == '*')
            pi++;
        return pi == p.Length;
    }
}
