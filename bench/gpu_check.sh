#!/usr/bin/env bash
# Everything that needs a GPU, run on the device machine (H100/H200) in stages,
# each one device-tool call (a call may run 10 minutes):
#   bash bench/gpu_check.sh tests    pytest -m gpu (TESTS=files, TESTS_K=-k expression; every kernel kind, attention,
#                                    CUTLASS GEMM/conv, runtime graph replay) + the
#                                    farm-built artifact in .gpu/ if carried
#   bash bench/gpu_check.sh attention   bench/attention_sm90.py
#   bash bench/gpu_check.sh models      bench/models.py (ResNet-50, BERT-base)
#   bash bench/gpu_check.sh tune        bench/tune.py (profile picks only; MODELS_ARGS=--profile times them)
#   bash bench/gpu_check.sh gemm        bench/gemm_sm90.py
#   bash bench/gpu_check.sh bandwidth   bench/bandwidth.py (read, write and copy rates: the floor of memory-bound kernels)
#   bash bench/gpu_check.sh stem        bench/stem.py (ResNet-50's stem: patch_linear vs im2col + GEMM vs cuDNN)
#   bash bench/gpu_check.sh ncu         ncu on one kernel of bench/kernel_probe.py
#                                       (PROBE_ARGS='--op attention --config {"block_q":128,"block_k":64}': JSON
#                                       without spaces, since PROBE_ARGS is split on them)
#   bash bench/gpu_check.sh sanitize    compute-sanitizer racecheck/memcheck/synccheck on the same probe
# .gpu/REVISION (gitignored) names the commit under test: the device copy has no git history.
# CLOCKS=1 samples SM clock, power and throttle reasons meanwhile into $OUT/clocks.csv.
# CUTLASS headers: carry .cutlass (a copy of the nvidia-cutlass wheel's source/) or .gpu/cutlass.tgz (it packed).
# Pure-Python wheels the box lacks (pytest-xdist, for PYTEST_ARGS="-n 8") travel in .gpu/wheels.
# SAVE_OBJECTS=1 / INDUCTOR_CACHE=1 bring compiled objects / torch.compile caches back for the next call.
# PACK=1 returns $OUT as one results.tgz (the device tool brings back at most 8 files).
# Results land in $OUT (the device tool brings them back): logs and JSON.
set -uo pipefail
if compgen -G ".gpu/wheels/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/kiln_site .gpu/wheels/*.whl \
    && export PYTHONPATH="/tmp/kiln_site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
# CUTLASS headers: a carried .cutlass/, or packed as .gpu/cutlass.tgz (2.5 MB against 28 of the 64 MiB carry limit).
if [ ! -d .cutlass/include ] && [ -f .gpu/cutlass.tgz ]; then
  tar -xzf .gpu/cutlass.tgz
fi
[ -d .cutlass/include ] && export KILN_CUTLASS_DIR="$PWD/.cutlass"
# Objects compiled beforehand (bench/tune.py --prepare, or an earlier call's SAVE_OBJECTS), carried in .gpu/objects
# or, packed (a quarter of the bytes, under the carry limit), as .gpu/objects*.tgz.
# Several packs (objects*.tgz: an older cache and a later call's additions) unpack into one cache.
for pack in .gpu/objects*.tgz; do
  [ -f "$pack" ] && mkdir -p .gpu/objects && tar -xzf "$pack" -C .gpu/objects && touch .gpu/REVISION
done
[ -d .gpu/objects ] && export KILN_OBJECT_CACHE="$PWD/.gpu/objects"
# torch.compile's caches (FX graphs, autotuning results) in .gpu/inductor when INDUCTOR_CACHE=1, so that
# max-autotune's minutes of compiling per shape can be paid in one call and reused by a later one.
# It travels as parts of at most 15 MiB (inductor.tgz.part-*: the tool returns files up to 16 MiB).
if [ -n "${INDUCTOR_CACHE:-}" ]; then
  mkdir -p .gpu/inductor && export TORCHINDUCTOR_CACHE_DIR="$PWD/.gpu/inductor"
  if compgen -G ".gpu/inductor.tgz.part-*" >/dev/null; then
    cat .gpu/inductor.tgz.part-* | tar -xzf - -C .gpu/inductor
  fi
fi
OUT="${OUT:-bench/results/gpu}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
status=0
# CLOCKS=1: the SM clock, power and throttle reasons every 250 ms while the stages run (read only; the card's settings
# stay as they are), to tell a slow kernel from a card that lowered its clocks under sustained load.
sampler=
if [ -n "${CLOCKS:-}" ]; then
  nvidia-smi --query-gpu=timestamp,clocks.sm,clocks.mem,power.draw,temperature.gpu,clocks_event_reasons.active \
    --format=csv -lms 250 > "$OUT/clocks.csv" 2>&1 &
  sampler=$!
fi
{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader; nvcc --version | tail -1;
  echo "commit $(cat .gpu/REVISION 2>/dev/null || echo unknown), $(date -u +%FT%TZ)"
  # The hash of the code that shapes kernels, computed from the copied files themselves: it names the tree even when
  # .gpu/REVISION is stale (s12's call 9). `python3 -c 'from kiln.version import compiler_version as v; print(v())'`
  # at a commit gives the same hash.
  echo "compiler version $(python3 -c 'from kiln.version import compiler_version as v; print(v())' 2>/dev/null)"; } \
  | tee -a "$OUT/device.txt"
for stage in "${@:-tests}"; do
  case "$stage" in
    tests)
      if [ -d .gpu/mlp_sm90 ]; then
        python3 bench/check_artifact.py --dir .gpu/mlp_sm90 --model examples/mlp.py --json "$OUT/mlp_sm90.json" \
          2>&1 | tee "$OUT/mlp_sm90.log" || status=1
      fi
      # A model artifact the farm built for cuda:sm90 (kiln compile bench/farm_models/NAME.py, kiln fetch into
      # .gpu/farm_NAME): its model file imports the seeded torch model again here, and the check says whether
      # that is the very graph (weights included) the artifact was compiled from before it compares outputs.
      for art in .gpu/farm_*/; do
        [ -f "$art/manifest.json" ] || continue
        name=$(basename "$art"); name=${name#farm_}
        python3 bench/check_artifact.py --dir "$art" --model "bench/farm_models/$name.py" --batches 1,2,16 \
          --json "$OUT/farm_$name.json" 2>&1 | tee "$OUT/farm_$name.log" || status=1
      done
      # -v: each test's outcome is printed as it ends, so a run cut short by the timeout still names its failures
      # (pytest's own summary comes only at the end).
      timeout "${TESTS_TIMEOUT:-500}" python3 -m pytest -v -rf -m gpu ${PYTEST_ARGS:-} ${TESTS:-tests/gpu} ${TESTS_K:+-k "$TESTS_K"} -p no:cacheprovider 2>&1 \
        | tee "$OUT/pytest_gpu.log" || status=1 ;;
    attention)
      timeout "${ATTN_TIMEOUT:-400}" python3 bench/attention_sm90.py ${ATTN_ARGS:-} --out "$OUT/attention_sm90.json" 2>&1 \
        | tee "$OUT/attention_sm90.log" || status=1 ;;
    models)
      timeout "${MODELS_TIMEOUT:-560}" python3 bench/models.py ${MODELS_ARGS:-} --out "$OUT/models.json" 2>&1 \
        | tee "$OUT/models.log" || status=1 ;;
    tune)
      timeout 560 python3 bench/tune.py ${TUNE_ARGS:-} --out "$OUT/picks.json" 2>&1 | tee "$OUT/tune.log" || status=1 ;;
    gemm)
      timeout 400 python3 bench/gemm_sm90.py ${GEMM_ARGS:-} --out "$OUT/gemm_sm90.json" 2>&1 | tee "$OUT/gemm_sm90.log" || status=1 ;;
    stem)
      timeout 300 python3 bench/stem.py --out "$OUT/stem.json" 2>&1 | tee "$OUT/stem.log" || status=1 ;;
    bandwidth)
      timeout 120 python3 bench/bandwidth.py --out "$OUT/bandwidth.json" 2>&1 | tee "$OUT/bandwidth.log" || status=1 ;;
    ncu)
      # Hardware counters of one kernel (bench/kernel_probe.py, PROBE_ARGS): utilisation of each pipe, stall reasons,
      # occupancy, memory traffic, and (NCU_METRICS; empty for none) the warps stalled on each reason per issue,
      # which the sections leave out. Clocks stay as they are (--clock-control none).
      ncu_metrics=${NCU_METRICS-'regex:smsp__average_warps_issue_stalled_.*_per_issue_active\.ratio'}
      timeout "${NCU_TIMEOUT:-300}" ncu --clock-control none --target-processes application-only \
        --kernel-name regex:"${NCU_KERNEL:-_kernel}" --launch-skip "${NCU_SKIP:-1}" --launch-count "${NCU_COUNT:-1}" \
        --section SpeedOfLight --section Occupancy --section LaunchStats --section WarpStateStats \
        --section ComputeWorkloadAnalysis --section MemoryWorkloadAnalysis --section SchedulerStats \
        ${ncu_metrics:+--metrics "$ncu_metrics"} \
        python3 bench/kernel_probe.py ${PROBE_ARGS:-} > "$OUT/ncu.txt" 2>&1 || status=1
      tail -80 "$OUT/ncu.txt" ;;
    sanitize)
      # Shared-memory races, out-of-bounds accesses and barrier misuse in the same kernel (PROBE_ARGS).
      for tool in ${SANITIZE_TOOLS:-racecheck memcheck synccheck}; do
        timeout "${SANITIZE_TIMEOUT:-200}" compute-sanitizer --tool "$tool" --error-exitcode 3 \
          python3 bench/kernel_probe.py ${PROBE_ARGS:-} --runs 0 > "$OUT/sanitize_$tool.log" 2>&1 || status=1
        echo "$tool: $(tail -2 "$OUT/sanitize_$tool.log" | tr '\n' ' ')"
      done ;;
    *) echo "unknown stage $stage"; status=2 ;;
  esac
done
[ -n "$sampler" ] && kill "$sampler" 2>/dev/null
# Objects compiled here come back too (SAVE_OBJECTS=1), for the next call's carried cache: one
# tarball, since the tool returns at most 8 files (16 MiB each). Unpack with tar -xzf -C .gpu/objects.
if [ -n "${SAVE_OBJECTS:-}" ] && [ -d .gpu/objects ]; then
  (cd .gpu/objects && find . -name '*.o' -newer ../REVISION -print0 | tar -czf "$OUT/objects.tgz" --null -T -)
  ls -l "$OUT/objects.tgz"
fi
# The inductor cache comes back the same way (INDUCTOR_CACHE=1), in parts: carry them in .gpu as they are.
if [ -n "${INDUCTOR_CACHE:-}" ] && [ -d .gpu/inductor ]; then
  (cd .gpu/inductor && tar -czf - .) | split -b 15M - "$OUT/inductor.tgz.part-"
  ls -l "$OUT"/inductor.tgz.part-*
fi
# PACK=1: everything under $OUT as one results.tgz (the device tool returns at most 8 files a call, so a call with
# several stages lost its test log in s11). Unpack with tar -xzf results.tgz.
if [ -n "${PACK:-}" ]; then
  tar -czf /tmp/kiln_results.tgz -C "$OUT" . && find "$OUT" -mindepth 1 -delete && mv /tmp/kiln_results.tgz "$OUT/results.tgz"
  ls -l "$OUT/results.tgz"
fi
exit $status
