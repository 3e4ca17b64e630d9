#!/usr/bin/env bash
# Installs and starts what the tests need that a fresh machine lacks. Idempotent.
# Each capability adds its service here (PostgreSQL, nginx, podman, Chromium).
# How tests find a service: `export NAME=value` lines appended to the file named by $SWITCHBOARD_TEST_ENV
# (test.sh sources it); how it is stopped: shell commands appended to $SWITCHBOARD_TEST_CLEANUP (test.sh runs it on exit).
set -euo pipefail
cd "$(dirname "$0")/.."
env_file=${SWITCHBOARD_TEST_ENV:-/dev/null}
cleanup_file=${SWITCHBOARD_TEST_CLEANUP:-/dev/null}

apt_updated=0
apt_install() {
  if [ "$apt_updated" -eq 0 ]; then apt-get update -qq >/dev/null; apt_updated=1; fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])' 2>/dev/null \
  || echo $((20000 + RANDOM % 20000)); }

# --- PostgreSQL: a throwaway cluster on a free loopback port (store specification, bus and cluster tests) ---
if [ -z "${SWITCHBOARD_TEST_POSTGRES:-}" ]; then
  pg_bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n1 || true)
  if [ -z "$pg_bin" ] || [ ! -x "$pg_bin/initdb" ]; then
    apt_install postgresql
    pg_bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n1)
  fi
  pg_dir=$(mktemp -d /tmp/switchboard-pg.XXXXXX)
  chown postgres "$pg_dir"
  pg_port=$(free_port)
  runuser -u postgres -- "$pg_bin/initdb" -D "$pg_dir/data" -U postgres --auth=trust -E UTF8 --locale=C.UTF-8 >/dev/null
  runuser -u postgres -- "$pg_bin/pg_ctl" -D "$pg_dir/data" -l "$pg_dir/log" -w -o \
    "-p $pg_port -k $pg_dir -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=300" start >/dev/null
  echo "runuser -u postgres -- '$pg_bin/pg_ctl' -D '$pg_dir/data' -m fast -w stop >/dev/null 2>&1 || true; rm -rf '$pg_dir'" >>"$cleanup_file"
  echo "export SWITCHBOARD_TEST_POSTGRES='Host=127.0.0.1;Port=$pg_port;Username=postgres;Database=postgres'" >>"$env_file"
  echo "PostgreSQL test cluster on 127.0.0.1:$pg_port ($pg_dir)" >&2
fi

# --- nginx: the real load balancer of the cluster tests (started by the tests themselves with deploy/nginx.conf) ---
command -v nginx >/dev/null 2>&1 || apt_install nginx
exit 0
