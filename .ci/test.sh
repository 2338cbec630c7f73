#!/usr/bin/env bash
# Set up, lint, and run the whole test suite (GPU tests skip without a GPU).
set -uo pipefail
cd "$(dirname "$0")/.."
bash .ci/setup.sh || exit 1
.venv/bin/ruff check . || exit 1
.venv/bin/python -m pytest -q -p no:cacheprovider "$@"
rc=$?
[ $rc -eq 5 ] && { echo "no tests ran"; exit 1; }
exit $rc
