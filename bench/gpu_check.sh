#!/usr/bin/env bash
# Everything that needs a GPU, in one call on the device machine:
#   1. the farm-built cuda:sm90 artifact of examples/mlp.py (fetched by hash into
#      .gpu/mlp_sm90 on the CPU machine) runs and matches the float64 reference;
#   2. pytest -m gpu: every CUDA kernel kind against the reference, the torch
#      path, and the cuda.sm90 profiler runner (no broker needed).
# Results land in $OUT (the device tool brings them back).
set -uo pipefail
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
OUT="${OUT:-bench/results/gpu}"
mkdir -p "$OUT"
status=0
nvidia-smi -L | tee "$OUT/device.txt"
git_rev="$(cat .gpu/REVISION 2>/dev/null || echo unknown)"
echo "commit $git_rev, $(date -u +%FT%TZ)" | tee -a "$OUT/device.txt"
if [ -d .gpu/mlp_sm90 ]; then
  python3 bench/check_artifact.py --dir .gpu/mlp_sm90 --model examples/mlp.py --json "$OUT/mlp_sm90.json" \
    2>&1 | tee "$OUT/mlp_sm90.log" || status=1
fi
timeout 340 python3 -m pytest -q -s -m gpu tests/gpu -p no:cacheprovider 2>&1 | tee "$OUT/pytest_gpu.log" || status=1
# 3. the CUTLASS sm90 GEMM against PyTorch on BERT-base layer shapes (a benchmark, not a test).
timeout 190 python3 bench/gemm_sm90.py --compile --out "$OUT/gemm_sm90.json" 2>&1 | tee "$OUT/gemm_sm90.log" || status=1
exit $status
