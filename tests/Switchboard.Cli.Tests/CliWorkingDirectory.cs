namespace Switchboard.Cli.Tests;

/// <summary>A fresh working directory for each test (the CLI's default <c>./data</c> lives in it), deleted afterwards.</summary>
public abstract class CliWorkingDirectory : IDisposable
{
    protected string WorkDir { get; } = Directory.CreateTempSubdirectory("switchboard-cli-").FullName;

    public void Dispose()
    {
        Dispose(disposing: true);
        GC.SuppressFinalize(this);
    }

    protected virtual void Dispose(bool disposing)
    {
        if (disposing)
            Directory.Delete(WorkDir, recursive: true);
    }
}
