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

# --- C toolchain and zlib: linking the native (AOT) build, whose CLI tests test.sh runs too ---
command -v gcc >/dev/null 2>&1 || command -v clang >/dev/null 2>&1 || apt_install gcc
[ -f /usr/include/zlib.h ] || apt_install zlib1g-dev

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

# --- podman: a Docker-compatible Engine API on a unix socket with a local image (docker driver tests) ---
if [ -z "${SWITCHBOARD_TEST_DOCKER_HOST:-}" ]; then
  command -v podman >/dev/null 2>&1 && command -v runc >/dev/null 2>&1 || apt_install podman runc
  dpkg -s busybox-static >/dev/null 2>&1 || apt_install busybox-static
  pm_dir=$(mktemp -d /tmp/switchboard-podman.XXXXXX)
  # This kind of machine refuses crun's rlimits and hybrid cgroups: fixed ulimits and runc.
  printf '[containers]\ndefault_ulimits = ["nofile=1024:1024", "nproc=4096:4096"]\n[engine]\nruntime = "runc"\n' >"$pm_dir/containers.conf"
  export CONTAINERS_CONF="$pm_dir/containers.conf"
  if ! podman image exists localhost/switchboard-test:latest; then
    rootfs="$pm_dir/rootfs"
    mkdir -p "$rootfs/bin" "$rootfs/tmp" "$rootfs/root" "$rootfs/etc" "$rootfs/proc" "$rootfs/sys" "$rootfs/dev"
    cp /bin/busybox "$rootfs/bin/busybox"
    for applet in $(/bin/busybox --list); do
      [ "$applet" = busybox ] || ln -sf busybox "$rootfs/bin/$applet"
    done
    printf 'root:x:0:0:root:/root:/bin/sh\n' >"$rootfs/etc/passwd"
    printf 'root:x:0:\n' >"$rootfs/etc/group"
    tar -C "$rootfs" -c . | podman import -q --change 'CMD ["/bin/sh"]' --change 'ENV PATH=/bin' - localhost/switchboard-test:latest >/dev/null
    rm -rf "$rootfs"
  fi
  CONTAINERS_CONF="$pm_dir/containers.conf" setsid podman system service --time=0 "unix://$pm_dir/podman.sock" >"$pm_dir/service.log" 2>&1 &
  pm_pid=$!
  for _ in $(seq 1 100); do [ -S "$pm_dir/podman.sock" ] && break; sleep 0.1; done
  [ -S "$pm_dir/podman.sock" ] || { echo "podman API service did not start:" >&2; cat "$pm_dir/service.log" >&2; }
  echo "CONTAINERS_CONF='$pm_dir/containers.conf' podman rm -f -t 0 --filter label=io.switchboard.environment >/dev/null 2>&1 || true; kill $pm_pid 2>/dev/null || true; for _ in \$(seq 1 50); do kill -0 $pm_pid 2>/dev/null || break; sleep 0.1; done; kill -9 $pm_pid 2>/dev/null || true; rm -rf '$pm_dir'" >>"$cleanup_file"
  echo "export SWITCHBOARD_TEST_DOCKER_HOST='unix://$pm_dir/podman.sock'" >>"$env_file"
  echo "podman API service on unix://$pm_dir/podman.sock (pid $pm_pid)" >&2
fi

# --- nginx: the real load balancer of the cluster tests (started by the tests themselves with deploy/nginx.conf) ---
command -v nginx >/dev/null 2>&1 || apt_install nginx
exit 0
