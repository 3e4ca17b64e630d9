using Microsoft.Extensions.Options;
using Switchboard.Server.Environments;
using Switchboard.Server.Tunnels;

namespace Switchboard.Server;

// The [Range] and other data annotations of the options, checked by code generated at compile time: no reflection at
// start-up (the native build of the CLI has none to offer), and nested sections (Limits, Channels, Rooms, ...) are
// checked too, which reflection-based ValidateDataAnnotations never did.

/// <summary>Data annotations of <see cref="SwitchboardOptions"/> and its sections.</summary>
[OptionsValidator]
internal sealed partial class SwitchboardOptionsAnnotations : IValidateOptions<SwitchboardOptions>;

/// <summary>Data annotations of <see cref="TunnelOptions"/>.</summary>
[OptionsValidator]
internal sealed partial class TunnelOptionsAnnotations : IValidateOptions<TunnelOptions>;

/// <summary>Data annotations of <see cref="EnvironmentOptions"/>.</summary>
[OptionsValidator]
internal sealed partial class EnvironmentOptionsAnnotations : IValidateOptions<EnvironmentOptions>;
