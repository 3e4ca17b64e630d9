using Microsoft.AspNetCore.Routing;
using Microsoft.Extensions.DependencyInjection;

namespace Switchboard.Server.Rooms;

public static class RoomEndpoints
{
    public static IServiceCollection AddRooms(this IServiceCollection services) => services;

    public static IEndpointRouteBuilder MapRooms(this IEndpointRouteBuilder app) => app;
}
