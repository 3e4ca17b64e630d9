# Sourced by the benchmark runners. run_in_group CMD... starts a load generator in its own process group and waits
# for it; whatever happens (Ctrl+C, kill, a crash, the end of the script) the trap ends it and every server or
# producer it started, and nothing else.
bench_pid=""
bench_cleanup() {
  if [[ -n "$bench_pid" ]] && kill -0 "$bench_pid" 2>/dev/null; then
    kill -TERM "$bench_pid" 2>/dev/null || true
    for _ in 1 2 3 4 5 6 7 8 9 10; do
      kill -0 "$bench_pid" 2>/dev/null || break
      sleep 0.5
    done
  fi
  if [[ -n "$bench_pid" ]]; then
    kill -KILL -- "-$bench_pid" 2>/dev/null || true
  fi
}
run_in_group() {
  setsid "$@" &
  bench_pid=$!
  wait "$bench_pid"
}
