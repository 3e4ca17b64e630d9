namespace Switchboard.Server.Nodes;

/// <summary>
/// Something that must resynchronize from the store after the bus may have lost messages (its listening connection
/// dropped and came back). A bus calls every registered <see cref="IBusCatchUp"/> after it listens again, so no local
/// subscriber misses what was published meanwhile.
/// </summary>
public interface IBusCatchUp
{
    Task CatchUpAsync(CancellationToken cancellationToken);
}
