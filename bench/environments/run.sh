#!/usr/bin/env bash
# Environments benchmark: log throughput and line latency from a process to one WebSocket client, and terminal
# keystroke echo, each next to its ceiling in the same run (the producer's pipe read directly, a bare PTY).
# Builds in Release, starts one `switchboard serve` on 127.0.0.1 (killed at the end), prints a table and writes
# bench/results/environments-latest.md. About 1 minute on 2 cores.
#   bench/environments/run.sh                 defaults: 3,000,000 lines, 100,000 lines/s for 6 s, 2,000 keystrokes
#   bench/environments/run.sh --quick         1,000,000 lines, 3 s, 500 keystrokes
#   bench/environments/run.sh --repeat 3      (a) three times (pipe and gateway alternate)
#   options: --lines N --rate R --seconds S --keys K --out FILE
set -euo pipefail
cd "$(dirname "$0")/../.."
export DOTNET_CLI_TELEMETRY_OPTOUT=1 DOTNET_NOLOGO=1

echo "building (Release)..."
dotnet build src/Switchboard.Cli -c Release -m:1 -nologo -v q
dotnet build bench/environments -c Release -m:1 -nologo -v q

# The benchmark starts and kills the gateway itself, in its own process group (see bench/process-group.sh).
# shellcheck source=../process-group.sh
. bench/process-group.sh
trap bench_cleanup EXIT INT TERM

run_in_group dotnet bench/environments/bin/Release/net10.0/EnvironmentsBench.dll \
  --switchboard src/Switchboard.Cli/bin/Release/net10.0/switchboard.dll "$@"
