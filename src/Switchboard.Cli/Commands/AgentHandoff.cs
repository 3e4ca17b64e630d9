using System.Runtime.InteropServices;

namespace Switchboard.Cli.Commands;

/// <summary>
/// <c>switchboard tunnel …</c> in the native build hands the process over to the standalone agent when
/// <c>switchboard-agent</c> sits next to the executable (what <c>scripts/publish-native.sh</c> writes): the same
/// command and options, the same process id, half the memory (docs/tunnels.md). <c>SWITCHBOARD_AGENT_HANDOFF=0</c>
/// keeps the agent in this process.
/// </summary>
internal static partial class AgentHandoff
{
    /// <summary>Replaces this process with <c>switchboard-agent</c> (execv); returns only when that is not possible.</summary>
    public static void TryExec(string[] args)
    {
        if (args is not ["tunnel", ..] || Environment.GetEnvironmentVariable("SWITCHBOARD_AGENT_HANDOFF") == "0")
            return;
        if (!(OperatingSystem.IsLinux() || OperatingSystem.IsMacOS()) || Environment.ProcessPath is not { } self
            || !string.Equals(Path.GetFileName(self), "switchboard", StringComparison.Ordinal))
            return; // `dotnet switchboard.dll` (managed) or a renamed executable: run here
        var agent = Path.Combine(Path.GetDirectoryName(self)!, "switchboard-agent");
        if (!File.Exists(agent))
            return;
        Console.Out.Flush();
        Console.Error.Flush();
        var argv = new IntPtr[args.Length + 2];
        try
        {
            argv[0] = Marshal.StringToCoTaskMemUTF8(agent);
            for (var i = 0; i < args.Length; i++)
                argv[i + 1] = Marshal.StringToCoTaskMemUTF8(args[i]);
            Execv(agent, argv); // only returns on failure (not executable, ...): then the agent runs in this process
        }
        finally
        {
            foreach (var p in argv)
                Marshal.FreeCoTaskMem(p);
        }
    }

    [LibraryImport("libc", EntryPoint = "execv", StringMarshalling = StringMarshalling.Utf8)]
    private static partial int Execv(string path, IntPtr[] argv);
}
