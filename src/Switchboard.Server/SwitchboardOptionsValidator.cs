using System.Text;
using Microsoft.Extensions.Options;

namespace Switchboard.Server;

/// <summary>Validates <see cref="SwitchboardOptions"/> once, at start-up, with messages that say what to change.</summary>
internal sealed class SwitchboardOptionsValidator : IValidateOptions<SwitchboardOptions>
{
    public ValidateOptionsResult Validate(string? name, SwitchboardOptions o)
    {
        var errors = new List<string>();
        if (Encoding.UTF8.GetByteCount(o.Auth.JwtSecret) < 32)
            errors.Add("Switchboard:Auth:JwtSecret (SWITCHBOARD_JWT_SECRET) must be at least 32 bytes for HS256.");
        if (o.Auth.ApiKey.Length < 16)
            errors.Add("Switchboard:Auth:ApiKey (SWITCHBOARD_API_KEY) must be at least 16 characters.");
        if (string.IsNullOrWhiteSpace(o.Auth.Audience))
            errors.Add("Switchboard:Auth:Audience must not be empty.");
        if (o.Heartbeat.Interval <= TimeSpan.Zero)
            errors.Add("Switchboard:Heartbeat:Interval must be positive.");
        if (o.Heartbeat.Timeout <= o.Heartbeat.Interval)
            errors.Add("Switchboard:Heartbeat:Timeout must be longer than Heartbeat:Interval, or every idle client is closed before its first pong.");
        if (o.Channels.HistoryTtl <= TimeSpan.Zero)
            errors.Add("Switchboard:Channels:HistoryTtl must be positive.");
        if (o.ShutdownDrainTimeout < TimeSpan.Zero)
            errors.Add("Switchboard:ShutdownDrainTimeout must not be negative.");
        if (o.Limits.MaxQueuedBytes < o.Limits.MaxMessageBytes)
            errors.Add("Switchboard:Limits:MaxQueuedBytes must be at least MaxMessageBytes, or one maximal message closes its reader.");
        if (o.Rooms.DefaultMaxClients > o.Rooms.MaxClientsLimit)
            errors.Add("Switchboard:Rooms:DefaultMaxClients must not exceed Rooms:MaxClientsLimit.");
        return errors.Count == 0 ? ValidateOptionsResult.Success : ValidateOptionsResult.Fail(errors);
    }
}
