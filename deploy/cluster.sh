#!/usr/bin/env bash
# A local Switchboard cluster on loopback: a throwaway PostgreSQL, N gateway nodes and nginx in front of them.
#
#   deploy/cluster.sh start [N]   start (default 3 nodes); prints the URL, API key and a dev token
#   deploy/cluster.sh stop        stop everything and delete the state dir
#   deploy/cluster.sh status      list live nodes through the load balancer
#
# Environment: CLUSTER_DIR (state, default /tmp/switchboard-cluster), CLUSTER_PORT (nginx, default 8080),
# NODE_BASE_PORT (first node, default CLUSTER_PORT+1), SWITCHBOARD_DATABASE (use this PostgreSQL instead of starting one),
# SWITCHBOARD_BIN (the switchboard executable; default: build src/Switchboard.Cli in Release).
# Needs root for the throwaway PostgreSQL (it runs as the postgres user), postgresql and nginx installed (apt-get).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
dir=${CLUSTER_DIR:-/tmp/switchboard-cluster}
port=${CLUSTER_PORT:-8080}
base=${NODE_BASE_PORT:-$((port + 1))}
cmd=${1:-start}
count=${2:-3}

pg_bin() { ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n1; }

stop() {
  [ -d "$dir" ] || return 0
  [ -f "$dir/nginx.conf" ] && nginx -c "$dir/nginx.conf" -p "$dir" -s stop 2>/dev/null || true
  for f in "$dir"/node-*.pid; do [ -f "$f" ] && kill "$(cat "$f")" 2>/dev/null || true; done
  for f in "$dir"/node-*.pid; do
    [ -f "$f" ] || continue
    for _ in $(seq 50); do kill -0 "$(cat "$f")" 2>/dev/null || break; sleep 0.1; done
  done
  [ -d "$dir/pg/data" ] && runuser -u postgres -- "$(pg_bin)/pg_ctl" -D "$dir/pg/data" -m fast -w stop >/dev/null 2>&1 || true
  rm -rf "$dir"
}

write_nginx_conf() {
  local servers=""
  for i in $(seq "$count"); do servers+="        server 127.0.0.1:$((base + i - 1)) max_fails=1 fail_timeout=5s;"$'\n'; done
  sed -e "s#listen 127.0.0.1:8080;#listen 127.0.0.1:$port;#" \
      -e '/server 127.0.0.1:808[1-9]/d' \
      -e "s#worker_processes 1;#worker_processes 1;\npid $dir/nginx.pid;\nerror_log $dir/nginx-error.log;#" \
      "$root/deploy/nginx.conf" |
    awk -v servers="$servers" '{print} /least_conn;/{printf "%s", servers}' |
    sed -e "s#^http {#http {\n    access_log off;\n    client_body_temp_path $dir/tmp/body;\n    proxy_temp_path $dir/tmp/proxy;\n    fastcgi_temp_path $dir/tmp/fastcgi;\n    uwsgi_temp_path $dir/tmp/uwsgi;\n    scgi_temp_path $dir/tmp/scgi;#" \
    >"$dir/nginx.conf"
}

start() {
  stop
  mkdir -p "$dir/tmp"
  command -v nginx >/dev/null || { echo "nginx is not installed (apt-get install -y nginx)" >&2; exit 1; }
  local db=${SWITCHBOARD_DATABASE:-}
  if [ -z "$db" ]; then
    [ -x "$(pg_bin)/initdb" ] || { echo "PostgreSQL is not installed (apt-get install -y postgresql)" >&2; exit 1; }
    local pg_port=$((port + 100 + count))
    mkdir -p "$dir/pg" && chown postgres "$dir/pg"
    chmod 755 "$dir"
    runuser -u postgres -- "$(pg_bin)/initdb" -D "$dir/pg/data" -U postgres --auth=trust -E UTF8 --locale=C.UTF-8 >/dev/null
    runuser -u postgres -- "$(pg_bin)/pg_ctl" -D "$dir/pg/data" -l "$dir/pg/log" -w \
      -o "-p $pg_port -k $dir/pg -c listen_addresses=127.0.0.1 -c max_connections=300" start >/dev/null
    runuser -u postgres -- "$(pg_bin)/createdb" -h 127.0.0.1 -p "$pg_port" -U postgres switchboard
    db="Host=127.0.0.1;Port=$pg_port;Username=postgres;Database=switchboard"
  fi
  local bin=${SWITCHBOARD_BIN:-}
  if [ -z "$bin" ]; then
    dotnet build "$root/src/Switchboard.Cli" -c Release -nologo -v quiet >/dev/null
    bin="$root/src/Switchboard.Cli/bin/Release/net10.0/switchboard"
  fi
  # Every node must share the credentials: one API key and one JWT secret for the whole cluster.
  export SWITCHBOARD_API_KEY=${SWITCHBOARD_API_KEY:-$(head -c 24 /dev/urandom | base64 | tr '+/' '-_')}
  export SWITCHBOARD_JWT_SECRET=${SWITCHBOARD_JWT_SECRET:-$(head -c 48 /dev/urandom | base64 | tr '+/' '-_')}
  echo "$SWITCHBOARD_API_KEY" >"$dir/api-key" && chmod 600 "$dir/api-key"
  for i in $(seq "$count"); do
    local p=$((base + i - 1))
    "$bin" serve --database "$db" --node-id "node-$i" --urls "http://127.0.0.1:$p" --advertise-url "http://127.0.0.1:$p" \
      --data-dir "$dir/node-$i" >"$dir/node-$i.log" 2>&1 &
    echo $! >"$dir/node-$i.pid"
  done
  for i in $(seq "$count"); do
    local ok=0
    for _ in $(seq 100); do
      if curl -fsS "http://127.0.0.1:$((base + i - 1))/healthz" >/dev/null 2>&1; then ok=1; break; fi
      sleep 0.1
    done
    [ "$ok" -eq 1 ] || { echo "node-$i did not start; see $dir/node-$i.log" >&2; tail -n 20 "$dir/node-$i.log" >&2; exit 1; }
  done
  write_nginx_conf
  nginx -c "$dir/nginx.conf" -p "$dir"
  echo "Switchboard cluster: $count nodes behind http://127.0.0.1:$port (state in $dir)"
  echo "  PostgreSQL  $db"
  echo "  API key     $SWITCHBOARD_API_KEY"
  echo "  Dev token   $("$bin" token --sub dev --channels '*' --publish '*' --data-dir "$dir/node-1" 2>/dev/null | tail -n1 || true)"
  echo "  Stop with   $0 stop"
}

case "$cmd" in
  start) start ;;
  stop) stop ;;
  status) curl -fsS -H "Authorization: Bearer $(cat "$dir/api-key")" "http://127.0.0.1:$port/api/v1/nodes"; echo ;;
  *) echo "usage: $0 start [N] | stop | status" >&2; exit 2 ;;
esac
