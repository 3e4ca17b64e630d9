namespace Switchboard.Server.Tests.Environments;

/// <summary>
/// Environment tests run real process floods and PTYs and measure rates and stalls: they run alone, after the parallel
/// collections, so another test's load cannot starve them (or be starved by them).
/// </summary>
[CollectionDefinition("Environments", DisableParallelization = true)]
public sealed class EnvironmentsCollection;
