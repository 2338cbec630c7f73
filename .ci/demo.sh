#!/usr/bin/env bash
# The main job: start the local cluster, compile examples/mlp.py for cpu and
# cuda:sm90 on it, fetch both artifacts by hash, run the cpu one and check it
# against the NumPy reference.
set -euo pipefail
cd "$(dirname "$0")/.."
bash .ci/setup.sh
K=.venv/bin/kiln
$K cluster up
declare -A ART
for target in cpu cuda:sm90; do
  line=$($K compile examples/mlp.py --target "$target" --json | tail -n 1)
  ART[$target]=$(.venv/bin/python -c 'import json,sys; d=json.loads(sys.argv[1]); assert d["state"]=="SUCCEEDED", d; print(d["artifact"])' "$line")
  echo "$target artifact sha256: ${ART[$target]}"
done
out=.state/demo
rm -rf "$out"
for target in cpu cuda:sm90; do
  $K fetch "${ART[$target]}" -o "$out/${target/:/_}"
done
.venv/bin/python - "$out/inputs.npz" <<'PY'
import sys
import numpy as np
rng = np.random.default_rng(0)
np.savez(sys.argv[1], x_f32=rng.standard_normal((8, 256)).astype(np.float32),
         x_f16=rng.standard_normal((8, 256)).astype(np.float16))
PY
$K run "$out/cpu" --inputs "$out/inputs.npz" --outputs "$out/outputs.npz"
PYTHONPATH=. .venv/bin/python bench/check_artifact.py --dir "$out/cpu" --model examples/mlp.py --batches 1,8,128
echo "the cuda:sm90 artifact is in $out/cuda_sm90 (run it on an H100/H200 with kiln run)."
echo "cluster still up: '.venv/bin/kiln cluster status', stop it with '.venv/bin/kiln cluster down'"
