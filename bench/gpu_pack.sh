#!/usr/bin/env bash
# Builds .gpu/, what bench/gpu_check.sh needs carried to the device machine. .gpu/ is gitignored, so a session's
# fresh checkout may start without it:
#   .gpu/REVISION     the commit under test (the device copy has no git history)
#   .gpu/cutlass.tgz  the nvidia-cutlass wheel's headers (include/, tools/util/include/) and VERSION, packed (2.5 MB)
#   .gpu/wheels/      pytest-xdist and execnet (pure Python; the device box lacks them) for PYTEST_ARGS="-n 16"
# PREPARE="--models resnet50 --picks FILE" also compiles that build's objects here (bench/tune.py --prepare: about
# 20 minutes for ResNet-50 on 2 cores) and packs them as .gpu/objects.tgz.
# Then, for example (carry stays under 64 MiB):
#   run: bash bench/gpu_check.sh tests   carry: .gpu/REVISION .gpu/cutlass.tgz .gpu/wheels .gpu/objects.tgz
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || bash .ci/setup.sh
py=.venv/bin/python
mkdir -p .gpu
git rev-parse --short HEAD > .gpu/REVISION
if [ ! -f .gpu/cutlass.tgz ]; then
  src=$(PYTHONPATH=. "$py" -c "from codegen_worker.backends.cuda import _cutlass_root; print(_cutlass_root())")
  stage=$(mktemp -d)
  mkdir -p "$stage/.cutlass/tools/util"
  cp -r "$src/include" "$stage/.cutlass/"
  cp -r "$src/tools/util/include" "$stage/.cutlass/tools/util/"
  "$py" -c "from importlib.metadata import version; print(version('nvidia-cutlass'))" > "$stage/.cutlass/VERSION"
  tar -czf .gpu/cutlass.tgz -C "$stage" .cutlass
  rm -rf "$stage"
fi
if ! compgen -G ".gpu/wheels/pytest_xdist-*.whl" >/dev/null; then
  "$py" -m pip download -q --no-deps -d .gpu/wheels pytest-xdist execnet
fi
if [ -n "${PREPARE:-}" ]; then
  # shellcheck disable=SC2086  # PREPARE is a list of tune.py arguments
  KILN_OBJECT_CACHE="$PWD/.gpu/objects" PYTHONPATH=. "$py" bench/tune.py --prepare --jobs 2 $PREPARE
  tar -czf .gpu/objects.tgz -C .gpu/objects .
fi
ls -l .gpu
