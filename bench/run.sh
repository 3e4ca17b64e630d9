#!/usr/bin/env bash
# Fan-out benchmark: builds in Release, runs Switchboard and a raw Kestrel broadcast server through the same
# scenarios on 127.0.0.1, prints a table and writes bench/results/latest.md.
#   bench/run.sh            full run (about 3-5 minutes on 2 cores)
#   bench/run.sh --quick    smaller counts, for a smoke test
#   bench/run.sh --targets switchboard,raw-wks --scenarios c   a subset of targets and of scenarios (a, b, c)
#   bench/run.sh --warmup 0   no unmeasured warm-up before (a)/(b) (default 15 s at full speed per server; 3 s with --quick)
#   bench/run.sh --cluster  cross-node fan-out instead: 1 node (SQLite), 1 node and 3 nodes on one PostgreSQL
#                           (uses $SWITCHBOARD_DATABASE, else starts a throwaway PostgreSQL with scripts/test-deps.sh;
#                           writes bench/results/cluster-latest.md; about 2 minutes)
#   bench/run.sh --environments [OPTIONS]  the environments benchmark instead (bench/environments/run.sh: log
#                           throughput and latency, terminal echo; writes bench/results/environments-latest.md)
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ "${1:-}" == "--environments" ]]; then
  shift
  exec bench/environments/run.sh "$@"
fi

# 10,000 server sockets + 10,000 client sockets, each process needs ~10k descriptors.
want=25000
hard=$(ulimit -Hn)
if [[ "$hard" != unlimited && "$hard" -lt "$want" ]]; then want=$hard; fi
ulimit -n "$want" || true
echo "open files limit: $(ulimit -n)"

export DOTNET_CLI_TELEMETRY_OPTOUT=1 DOTNET_NOLOGO=1

echo "building (Release)..."
dotnet build src/Switchboard.Cli -c Release -m:1 -nologo -v q
dotnet build bench/RawKestrelBroadcast -c Release -m:1 -nologo -v q
dotnet build bench/Switchboard.Bench -c Release -m:1 -nologo -v q

# The load generator starts and kills the servers itself, in its own process group (see bench/process-group.sh).
# shellcheck source=process-group.sh
. bench/process-group.sh
trap bench_cleanup EXIT INT TERM

extra=()
if [[ " $* " == *" --cluster "* ]]; then
  db=${SWITCHBOARD_DATABASE:-}
  if [[ -z "$db" ]]; then
    pg_state=$(mktemp -d /tmp/switchboard-bench-pg.XXXXXX)
    : >"$pg_state/env"; : >"$pg_state/cleanup"
    SWITCHBOARD_TEST_POSTGRES='' SWITCHBOARD_TEST_ENV="$pg_state/env" SWITCHBOARD_TEST_CLEANUP="$pg_state/cleanup" scripts/test-deps.sh
    # shellcheck disable=SC1091
    source "$pg_state/env"
    db=$SWITCHBOARD_TEST_POSTGRES
    trap 'bench_cleanup; bash "$pg_state/cleanup"; rm -rf "$pg_state"' EXIT INT TERM
  fi
  extra=(--database "$db" --out bench/results/cluster-latest.md)
fi

run_in_group dotnet bench/Switchboard.Bench/bin/Release/net10.0/Switchboard.Bench.dll \
  --switchboard src/Switchboard.Cli/bin/Release/net10.0/switchboard.dll \
  --raw bench/RawKestrelBroadcast/bin/Release/net10.0/RawKestrelBroadcast.dll \
  --out bench/results/latest.md "${extra[@]}" "$@"
