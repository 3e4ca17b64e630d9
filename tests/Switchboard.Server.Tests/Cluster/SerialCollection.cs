namespace Switchboard.Server.Tests.Cluster;

/// <summary>Tests that run alone, after the parallel collections, because the load of other tests distorts their timing.</summary>
[CollectionDefinition("Serial", DisableParallelization = true)]
public sealed class SerialCollection;
