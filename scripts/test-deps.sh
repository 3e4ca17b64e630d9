#!/usr/bin/env bash
# Installs and starts what the tests need that a fresh machine lacks. Idempotent.
# Each later capability adds its service here (PostgreSQL, nginx, podman, Chromium), exporting how tests find it.
set -euo pipefail
cd "$(dirname "$0")/.."
exit 0
