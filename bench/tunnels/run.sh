#!/usr/bin/env bash
# Tunnel benchmark: the same local server reached directly, through Switchboard, and through pipenet
# (a localtunnel-style peer), on loopback. Needs: dotnet, node/npm, wrk, curl.
# Usage: bench/tunnels/run.sh [duration_seconds=10] [connections=50] [big_mb=1024]
# The direct and Switchboard variants first get an unmeasured warm-up (WARMUP seconds of the same wrk load and a 256 MiB
# download, default 10 s), so the numbers are steady state, not the .NET tiered JIT's first seconds. WARMUP=0 turns it
# off. pipenet is measured first and without warm-up (see VARIANTS).
# The large downloads run after all wrk measurements, BIG_RUNS rounds (default 5) of one download per variant in turn
# (direct, the relays, switchboard, switchboard-cli; pipenet downloads right after its wrk run, see VARIANTS), so every
# variant sees the same machine: a 2-core machine shared with other work drifts by a third within minutes. Each
# variant's median is reported, and Switchboard's share of direct in each round.
# relay-x2 and relay-splice-x2 are the same server through two bare TCP relays (bench/tunnels/relay.c, copying and
# splicing): the ceiling for any tunnel of two processes on loopback. Two Switchboard variants share the gateway:
# "switchboard" through the standalone agent (switchboard-agent tunnel http,
# the lighter executable, which the native `switchboard tunnel` also hands its process over to when it is installed next
# to it) and "switchboard-cli" through the full CLI's own agent (switchboard tunnel http with SWITCHBOARD_AGENT_HANDOFF=0,
# what runs when switchboard-agent is not installed); each agent's peak RSS is reported, and the CPU seconds the gateway
# and the agent spent per GiB of the large downloads.
set -euo pipefail
DUR=${1:-10}; CONN=${2:-50}; BIG=${3:-1024}; WARMUP=${WARMUP:-10}; BIG_RUNS=${BIG_RUNS:-5}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
WORK=$(mktemp -d); PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT
LOCAL=19000; GW=19080; PN=19090; R1=19101; R2=19102; S1=19111; S2=19112
PEER=${PIPENET_DIR:-${TMPDIR:-/tmp}/switchboard-bench-pipenet}

# The gateway and agents under test: the native builds by default (what scripts/publish-native.sh ships),
# NATIVE=0 for the managed builds (dotnet build), SWITCHBOARD_BIN=PATH for any other switchboard executable (with
# SWITCHBOARD_AGENT_BIN=PATH for its standalone agent; default: the switchboard-agent next to it).
if [ -n "${SWITCHBOARD_BIN:-}" ]; then
  SB=$(command -v "$SWITCHBOARD_BIN")
  AGENT=${SWITCHBOARD_AGENT_BIN:-$(dirname "$SB")/switchboard-agent}
elif [ "${NATIVE:-1}" = 1 ]; then
  SB=$("$ROOT/scripts/publish-native.sh" "$ROOT/bench/tunnels/bin/native")
  AGENT=$(dirname "$SB")/switchboard-agent
else
  dotnet build "$ROOT/src/Switchboard.Cli" -c Release -m:1 -v q -nologo >/dev/null
  dotnet build "$ROOT/src/Switchboard.Agent" -c Release -m:1 -v q -nologo >/dev/null
  SB="$ROOT/src/Switchboard.Cli/bin/Release/net10.0/switchboard"
  AGENT="$ROOT/src/Switchboard.Agent/bin/Release/net10.0/switchboard-agent"
fi
for exe in "$SB" "$AGENT"; do
  [ -x "$exe" ] || { echo "not an executable: $exe (set SWITCHBOARD_AGENT_BIN for a build without switchboard-agent next to switchboard)" >&2; exit 1; }
done
echo "switchboard under test: ${SB#"$ROOT"/}, agent: ${AGENT#"$ROOT"/}" >&2
if [ ! -x "$PEER/node_modules/.bin/pipenet" ]; then
  mkdir -p "$PEER" && (cd "$PEER" && npm init -y >/dev/null && npm install --silent pipenet@1.4.3 >/dev/null)
fi

node "$ROOT/bench/tunnels/local-server.js" $LOCAL & PIDS+=($!)
# Two bare TCP relays in a row (bench/tunnels/relay.c), copying and splicing: what two extra processes on loopback cost
# with no tunnel work.
RELAY_VARIANT=()
if command -v cc >/dev/null 2>&1 && cc -O2 -o "$WORK/relay" "$ROOT/bench/tunnels/relay.c"; then
  "$WORK/relay" $R1 $LOCAL & PIDS+=($!)
  "$WORK/relay" $R2 $R1 & PIDS+=($!)
  "$WORK/relay" $S1 $LOCAL splice & PIDS+=($!)
  "$WORK/relay" $S2 $S1 splice & PIDS+=($!)
  RELAY_VARIANT=("relay-x2|http://127.0.0.1:$R2||no" "relay-splice-x2|http://127.0.0.1:$S2||no")
else
  echo "no C compiler: the relay-x2 ceiling is not measured" >&2
fi
"$SB" serve --urls http://127.0.0.1:$GW --data-dir "$WORK/data" >"$WORK/serve.log" 2>&1 & GWPID=$!; PIDS+=($GWPID)
for _ in $(seq 50); do curl -s -o /dev/null http://127.0.0.1:$GW/healthz && break; sleep 0.2; done
TOKEN=$("$SB" tokens create --kind agent --data-dir "$WORK/data" 2>"$WORK/token.log") || { cat "$WORK/token.log" >&2; exit 1; }
"$AGENT" tunnel http $LOCAL --server http://127.0.0.1:$GW --token "$TOKEN" --subdomain bench >"$WORK/agent.log" 2>&1 & AGPID=$!; PIDS+=($AGPID)
SWITCHBOARD_AGENT_HANDOFF=0 "$SB" tunnel http $LOCAL --server http://127.0.0.1:$GW --token "$TOKEN" --subdomain bench-cli >"$WORK/agent-cli.log" 2>&1 & CLIPID=$!; PIDS+=($CLIPID)
"$PEER/node_modules/.bin/pipenet" server --port $PN --domain localhost >"$WORK/pipenet-server.log" 2>&1 & PIDS+=($!)
sleep 1
"$PEER/node_modules/.bin/pipenet" client --port $LOCAL --host http://localhost:$PN --subdomain bench >"$WORK/pipenet-client.log" 2>&1 & PIDS+=($!)
for _ in $(seq 50); do grep -q Forwarding "$WORK/agent.log" && grep -q Forwarding "$WORK/agent-cli.log" && curl -sf -o /dev/null -H "Host: bench.localhost:$PN" http://127.0.0.1:$PN/small && break; sleep 0.2; done

# name | url | extra wrk/curl header | warm up first
# pipenet goes first: its client stops forwarding (every request gets an error) when left idle for a few tens of
# seconds, which is how long the other variants' warm-ups take.
VARIANTS=("pipenet|http://127.0.0.1:$PN|Host: bench.localhost:$PN|no" "direct|http://127.0.0.1:$LOCAL||yes" "${RELAY_VARIANT[@]}" "switchboard|http://127.0.0.1:$GW/t/bench||yes" "switchboard-cli|http://127.0.0.1:$GW/t/bench-cli||yes")
rss() { awk '/VmHWM/{printf "%.0f", $2/1024}' /proc/$1/status; }
ticks() { awk '{print $14 + $15}' /proc/$1/stat; }
CPU_LINES=()
lat() { # prints p50 p99 in ms from wrk --latency output
  awk '/^ +50%/{p50=$2} /^ +99%/{p99=$2} END{print p50, p99}' | sed -E 's/([0-9.]+)us/\1e-3/g; s/([0-9.]+)ms/\1/g; s/([0-9.]+)s/\1e3/g' | awk '{printf "%.3f %.3f", $1, $2}'
}
declare -A RPS P50 P99 L50 L99 ERRS SPEEDS TICKS
alive() { # the agent of a Switchboard variant must still run when that variant is measured
  for a in "switchboard $AGPID agent.log" "switchboard-cli $CLIPID agent-cli.log"; do
    read -r an ap al <<<"$a"
    if [ "$1" = "$an" ] && ! kill -0 "$ap" 2>/dev/null; then
      echo "the $an agent exited before its measurement; its log and the gateway's:" >&2
      tail -n 30 "$WORK/$al" "$WORK/serve.log" >&2
      exit 1
    fi
  done
}
download() { # prints MB/s of one large download; name url header
  local H=(); [ -n "$3" ] && H=(-H "$3")
  curl -s -o /dev/null "${H[@]}" -w '%{speed_download}' "$2/big?mb=$BIG" | awk '{printf "%.0f", $1/1e6}'
}
cpu_pids() { case "$1" in switchboard) echo "$GWPID $AGPID" ;; switchboard-cli) echo "$GWPID $CLIPID" ;; esac; }
median() { tr ' ' '\n' | grep . | sort -n | awk '{v[NR]=$1} END{printf "%.0f", v[int((NR+1)/2)]}'; }
for v in "${VARIANTS[@]}"; do
  IFS='|' read -r name url header warm <<<"$v"
  alive "$name"
  H=(); [ -n "$header" ] && H=(-H "$header")
  if [ "$WARMUP" -gt 0 ] && [ "$warm" = yes ]; then
    wrk -t2 -c"$CONN" -d"${WARMUP}s" "${H[@]}" "$url/small" >/dev/null
    curl -s -o /dev/null "${H[@]}" "$url/big?mb=256"
  fi
  out=$(wrk -t2 -c"$CONN" -d"${DUR}s" --latency "${H[@]}" "$url/small")
  RPS[$name]=$(awk '/Requests\/sec/{printf "%.0f", $2}' <<<"$out"); read -r "P50[$name]" "P99[$name]" <<<"$(lat <<<"$out")"
  ERRS[$name]=$(awk '/Non-2xx|Socket errors/{print}' <<<"$out" | tr '\n' ' ')
  light=$(wrk -t1 -c1 -d"$(( DUR / 2 > 2 ? DUR / 2 : 2 ))s" --latency "${H[@]}" "$url/small"); read -r "L50[$name]" "L99[$name]" <<<"$(lat <<<"$light")"
  if [ "$name" = pipenet ]; then # now, before its client idles (see VARIANTS)
    for _ in $(seq "$BIG_RUNS"); do SPEEDS[$name]+="$(download "$name" "$url" "$header") "; done
  fi
done
# The large downloads, in rounds: one per variant in turn. CPU seconds per GiB downloaded for the gateway and the agent
# (utime + stime of each process over its variant's downloads): less noisy than MB/s on a shared machine, and what
# decides MB/s when the cores are the limit.
ROUNDS=()
for r in $(seq "$BIG_RUNS"); do
  round=""
  for v in "${VARIANTS[@]}"; do
    IFS='|' read -r name url header warm <<<"$v"
    [ "$name" = pipenet ] && continue
    alive "$name"
    pids=$(cpu_pids "$name"); before=(); for p in $pids; do before+=("$(ticks "$p")"); done
    speed=$(download "$name" "$url" "$header")
    SPEEDS[$name]+="$speed "
    i=0; for p in $pids; do TICKS[$name.$i]=$(( ${TICKS[$name.$i]:-0} + $(ticks "$p") - before[i] )); i=$((i + 1)); done
    round+="$name=$speed "
  done
  ROUNDS+=("$round")
done
echo "| variant | req/s (c=$CONN) | p50 ms (c=$CONN) | p99 ms (c=$CONN) | p50 ms (c=1) | p99 ms (c=1) | ${BIG} MiB download MB/s (median of $BIG_RUNS) |"
echo "|---|---|---|---|---|---|---|"
for v in "${VARIANTS[@]}"; do
  IFS='|' read -r name url header warm <<<"$v"
  echo "| $name | ${RPS[$name]} | ${P50[$name]} | ${P99[$name]} | ${L50[$name]} | ${L99[$name]} | $(median <<<"${SPEEDS[$name]}") |${ERRS[$name]:+ ${ERRS[$name]}}"
done
echo
echo "Large downloads, MB/s per round (variants in turn):"
shares=""
for round in "${ROUNDS[@]}"; do
  echo "  $round"
  d=$(grep -o 'direct=[0-9]*' <<<"$round" | cut -d= -f2); sb=$(grep -o ' switchboard=[0-9]*' <<<" $round" | cut -d= -f2)
  [ -n "$d" ] && [ -n "$sb" ] && [ "$d" -gt 0 ] && shares+="$(( 100 * sb / d )) "
done
echo "switchboard / direct per round: $(sed -E 's/([0-9]+) /\1 %, /g; s/, $//' <<<"$shares") (median $(median <<<"$shares") %)"
for name in switchboard switchboard-cli; do
  cpu=(); for i in 0 1; do cpu+=("$(awk -v d="${TICKS[$name.$i]:-0}" -v hz="$(getconf CLK_TCK)" -v mib="$(( BIG * BIG_RUNS ))" 'BEGIN{printf "%.2f", d / hz / (mib / 1024)}')"); done
  CPU_LINES+=("$name: gateway ${cpu[0]} s, agent ${cpu[1]} s of CPU per GiB downloaded")
done
echo
for a in "$AGPID agent.log" "$CLIPID agent-cli.log"; do
  read -r ap al <<<"$a"
  if ! kill -0 "$ap" 2>/dev/null; then
    echo "an agent exited during the run; its log:" >&2
    tail -n 30 "$WORK/$al" >&2
    exit 1
  fi
done
echo "Switchboard peak RSS: gateway $(rss $GWPID) MB (both variants), switchboard-agent $(rss $AGPID) MB, switchboard tunnel (CLI) $(rss $CLIPID) MB"
for line in "${CPU_LINES[@]}"; do echo "$line"; done
