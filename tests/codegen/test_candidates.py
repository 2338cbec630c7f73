"""Candidate pruning (before anything compiles) and the profiler harness built from the candidates."""
from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
from pathlib import Path

import pytest

from codegen_worker import build
from codegen_worker.backends import UnsupportedKernel, get_backend
from codegen_worker.backends.base import gemm_tile_smem_bytes, rotation_copies
from codegen_worker.backends.cpu import CpuBackend
from kiln.dtypes import DType
from kiln.ir import IntVar
from kiln.plan import KernelSpec
from kiln.targets import TARGETS, get_target
from planner_svc.lower import lower
from planner_svc.pipeline import run_passes
from tests.support import local_build as lb

MiB = 1 << 20


def specs(target_name: str, dtype: DType = DType.F32) -> dict[str, KernelSpec]:
    """One spec of each kernel kind, lowered for target_name."""
    graph = lb.graph("kinds", lambda b: lb.add_linear(b, dtype, "bias", m=IntVar("batch", 1, 64), p="lin."),
                     lambda b: lb.add_broadcast(b, dtype, "bias_n", 7, p="ew."),
                     lambda b: lb.add_row_op(b, dtype, "layernorm", 33, p="ln."),
                     lambda b: lb.add_row_op(b, dtype, "softmax", 33, p="sm."))
    found = {c.spec.op: c.spec for c in lower(run_passes(graph)[0], target_name).calls}
    assert set(found) == {"linear", "fused_elementwise", "layernorm", "softmax"}
    return found


@pytest.mark.parametrize("target_name", list(TARGETS))
def test_registered_candidates_fit_their_target(target_name):
    """What the farm profiles today: default first, no repeats, within the cap, nothing pruned away."""
    target = get_target(target_name)
    backend = get_backend(target.family)
    for op, spec in specs(target_name).items():
        cands = backend.candidate_configs(spec, target)
        assert cands[0] == backend.default_config(spec, target), op
        assert len(cands) <= backend.max_candidates
        assert all(backend.fits(spec, target, c) for c in cands), op
        assert len({json.dumps(c, sort_keys=True) for c in cands}) == len(cands), op
    # The cpu GEMM table survives the register cap whole: the farm tests count its five candidates.
    if target.family == "cpu":
        assert len(backend.candidate_configs(specs(target_name)["linear"], target)) == 5


def test_cpu_register_tile_cap():
    target = get_target("cpu")
    backend = get_backend("cpu")
    spec = specs("cpu")["linear"]
    configs = [{"tm": 4, "tn": 4}, {"tm": 8, "tn": 8}, {"tm": 4, "tn": 8}, {"tm": 16, "tn": 4}, {"tm": 1, "tn": 32},
               {"tm": 3, "tn": 11}]
    # 64, 64 and 33 accumulators would spill; 32 (4 x 8, 1 x 32) is the most kept.
    assert backend.prune(spec, target, configs) == [{"tm": 4, "tn": 4}, {"tm": 4, "tn": 8}, {"tm": 1, "tn": 32}]
    roomy = dataclasses.replace(target, max_register_tile=64)
    assert {"tm": 8, "tn": 8} in backend.prune(spec, roomy, configs)


@pytest.mark.parametrize("target_name", ["cuda:sm90", "cuda:sm80", "rocm:gfx90a"])
def test_gpu_gemm_tile_limits(target_name):
    target = get_target(target_name)
    backend = get_backend(target.family)
    spec = specs(target_name)["linear"]
    assert gemm_tile_smem_bytes(16) == 2176 and gemm_tile_smem_bytes(32) == 8448
    tiles = [{"tile": t} for t in (8, 16, 32, 33, 64)]
    # 33 x 33 and 64 x 64 threads are over 1024 a block.
    assert backend.prune(spec, target, tiles) == [{"tile": 8}, {"tile": 16}, {"tile": 32}]
    # Shared memory alone: with the thread limit out of the way, 64 (33,280 B) fits 48 KiB and 80 (51,840 B) does not.
    many_threads = dataclasses.replace(target, smem_per_block=48 * 1024, max_threads_per_block=1 << 20)
    assert backend.prune(spec, many_threads, [{"tile": 64}, {"tile": 80}]) == [{"tile": 64}]
    small_smem = dataclasses.replace(target, smem_per_block=8 * 1024)
    assert backend.prune(spec, small_smem, tiles) == [{"tile": 8}, {"tile": 16}]


def test_gpu_block_sizes_are_whole_warps_and_launchable():
    blocks = [{"block": b} for b in (0, 32, 96, 100, 128, 256, 1024, 2048)]
    for op in ("fused_elementwise", "layernorm", "softmax"):
        cuda = get_target("cuda:sm90")
        assert get_backend("cuda").prune(specs("cuda:sm90")[op], cuda, blocks) == [
            {"block": b} for b in (32, 96, 128, 256, 1024)], op
        # CDNA wavefronts are 64 wide: 32 and 96 leave half a wavefront idle.
        rocm = get_target("rocm:gfx90a")
        assert rocm.warp_size == 64
        assert get_backend("rocm").prune(specs("rocm:gfx90a")[op], rocm, blocks) == [
            {"block": b} for b in (128, 256, 1024)], op


def test_candidate_configs_prunes_dedupes_and_caps(monkeypatch):
    target = get_target("cpu")
    spec = specs("cpu")["linear"]
    table = [{"tm": 4, "tn": 4}, {"tm": 16, "tn": 16}] + [{"tm": 1, "tn": n} for n in range(1, 33)]
    monkeypatch.setattr(CpuBackend, "candidate_table", {"linear": table})
    cands = get_backend("cpu").candidate_configs(spec, target)
    # The default once and first, 16 x 16 pruned, then the table in order up to the cap.
    assert cands == [{"tm": 4, "tn": 4}] + [{"tm": 1, "tn": n} for n in range(1, 8)]
    assert len(cands) == get_backend("cpu").max_candidates == 8


def test_no_fitting_config_is_an_unsupported_kernel():
    target = dataclasses.replace(get_target("cuda:sm90"), max_threads_per_block=16)
    with pytest.raises(UnsupportedKernel, match="no linear config .* fits target cuda:sm90"):
        get_backend("cuda").candidate_configs(specs("cuda:sm90")["linear"], target)


# --- the profiler harness ---------------------------------------------------------
def test_rotation_copies_pass_twice_the_l2_and_stay_bounded():
    assert rotation_copies(1024) == 8            # tiny inputs: the cap
    assert rotation_copies(20 * MiB) == 7        # 7 x 20 MiB >= 128 MiB
    assert rotation_copies(64 * MiB) == 2
    assert rotation_copies(128 * MiB) == 1
    assert rotation_copies(3 << 30) == 1         # never more than one copy of a huge input
    assert rotation_copies(0) == 8               # rank-0 or empty inputs do not divide by zero


def _profiler(tmp_path: Path, target_name: str, dtype: DType, configs: list[dict] | None = None) -> tuple[Path, list]:
    target = get_target(target_name)
    backend = get_backend(target.family)
    graph = lb.graph("prof", lambda b: lb.add_linear(b, dtype, "gelu", m=IntVar("batch", 1, 64), n=40, k=24))
    spec = lower(run_passes(graph)[0], target_name).calls[0].spec
    configs = configs or backend.candidate_configs(spec, target)
    kernels = [build.render(backend, target, spec, c) for c in configs]
    objects = [build.compile_kernel(backend, target, k)[0] for k in kernels]
    return build.build_profiler(backend, target, spec, kernels, objects, tmp_path), configs


def test_cpu_profiler_reports_its_timer_and_rotation(tmp_path):
    exe, configs = _profiler(tmp_path, "cpu", DType.F32)
    source = (tmp_path / "harness.cc").read_text()
    assert "kCopies = 8;" in source  # 64 x 24 and 40 x 24 floats: far below 128 MiB
    for i in range(len(configs)):
        out = subprocess.run([str(exe), str(i), "4"], capture_output=True, text=True, timeout=60).stdout
        result = json.loads(out.splitlines()[-1])
        assert result["ok"] and result["runs"] == 4 and result["median_ms"] > 0, (configs[i], result)
        assert result["timer"] == "steady_clock" and result["copies"] == 8


@pytest.mark.parametrize("target_name,tool,api", [("cuda:sm90", "nvcc", "cuda"), ("rocm:gfx90a", "hipcc", "hip")])
def test_gpu_profiler_builds_with_device_events(tmp_path, target_name, tool, api):
    """Compile and link only (no GPU here); tests/gpu runs the cuda one on a device."""
    if shutil.which(tool) is None:
        pytest.skip(f"{tool} is not installed")
    exe, _ = _profiler(tmp_path, target_name, DType.F16, [{"tile": 16}, {"tile": 32}])
    source = (tmp_path / f"harness{get_backend(get_target(target_name).family).source_suffix}").read_text()
    for call in ("EventRecord", "EventSynchronize", "EventElapsedTime"):
        assert f"{api}{call}(" in source
    assert '"device_events"' in source and "steady_clock::now" not in source
    assert exe.stat().st_size > 0


@pytest.mark.parametrize(("n", "widest"), [(64, 128), (128, 128), (192, 128), (768, 256)])
def test_sm90_gemm_tiles_wider_than_the_output_are_pruned(n, widest):
    target = get_target("cuda:sm90")
    graph = lb.graph("narrow", lambda b: lb.add_linear(b, DType.F16, "bias", m=IntVar("batch", 1, 64), n=n, k=64))
    (call,) = lower(run_passes(graph)[0], "cuda:sm90").calls
    cands = get_backend("cuda").candidate_configs(call.spec, target)
    assert cands[0]["impl"] == "cutlass_sm90" and max(c["tile"][1] for c in cands) == widest
    assert {tuple(c["tile"]) for c in cands} >= {(128, 128, 64), (128, 64, 64)}
