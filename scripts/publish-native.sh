#!/usr/bin/env bash
# Builds the native (ahead-of-time compiled) executables: switchboard (everything) and switchboard-agent (the tunnel
# agent alone, for machines that only expose a local server). One file each, no .NET runtime needed where they run,
# about half the memory of the managed build (docs/benchmarks-tunnels.md). Needs a C toolchain (gcc or clang) and
# zlib headers: apt-get install gcc zlib1g-dev.
#   scripts/publish-native.sh [--no-pie] [OUTPUT_DIR]     default: dist/<rid>; prints OUTPUT_DIR/switchboard, and
#                                                           OUTPUT_DIR/switchboard-agent is next to it
# --no-pie links a position-dependent executable with its type data stored ready to use instead of rebuilt at start:
# about 7 MB less memory per process (gateway + agent under the tunnel benchmark's load 90 instead of 100 MB), at the
# price of address-space layout randomisation for the executable itself. The default keeps ASLR.
set -euo pipefail
extra=()
if [ "${1:-}" = "--no-pie" ]; then
  extra=(-p:PositionIndependentExecutable=false -p:IlcDehydrate=false)
  shift
fi
cd "$(dirname "$0")/.."
case "$(uname -m)" in
  x86_64) rid=linux-x64 ;;
  aarch64|arm64) rid=linux-arm64 ;;
  *) echo "unsupported architecture: $(uname -m)" >&2; exit 2 ;;
esac
out=${1:-dist/$rid}
if ! command -v gcc >/dev/null 2>&1 && ! command -v clang >/dev/null 2>&1; then
  echo "a C toolchain is needed to link the native executable: apt-get install gcc zlib1g-dev" >&2
  exit 2
fi
export DOTNET_CLI_TELEMETRY_OPTOUT=1 DOTNET_NOLOGO=1
dotnet publish src/Switchboard.Cli -c Release -r "$rid" -p:PublishAot=true "${extra[@]}" -nologo -v quiet -o "$out" >&2
dotnet publish src/Switchboard.Agent -c Release -r "$rid" -p:PublishAot=true "${extra[@]}" -nologo -v quiet -o "$out" >&2
rm -f "$out"/*.pdb "$out"/*.dbg
echo "$out/switchboard"
