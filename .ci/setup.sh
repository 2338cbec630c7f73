#!/usr/bin/env bash
# Installs everything Kiln needs on Debian 12 (idempotent): system packages,
# then a virtualenv at .venv with Kiln and its pinned dependencies.
set -euo pipefail
cd "$(dirname "$0")/.."
need=()
for pkg in redis-server hipcc docker-compose g++; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
done
if [ ${#need[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi
command -v nvcc >/dev/null || echo "note: nvcc not found; the cuda target cannot compile here" >&2
[ -x .venv/bin/python ] || python3.11 -m venv .venv 2>/dev/null || python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip 2>&1 | grep -v -i warning || true
.venv/bin/python -m pip install -q -e ".[test]" 2>&1 | grep -v -i -e warning -e '!!' -e wheel_obj -e '^ *$' || true
.venv/bin/python -c "import kiln.v1.farm_pb2, celery, boto3, grpc" >/dev/null
