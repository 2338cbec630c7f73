"""Every gpu kernel kind compiles and links for cuda:sm90, cuda:sm80 and rocm:gfx90a.

Nothing runs (no GPU here): tests/gpu runs the cuda kernels on a device.
nvcc costs ~2-3 s a translation unit, so each target's kernels go into one
translation unit; one kernel per target also goes through the farm's own
one-kernel-one-object path (build.compile_kernel).
"""
from __future__ import annotations

import os
import shutil
import subprocess

import numpy as np
import pytest

from codegen_worker import build
from codegen_worker.backends import get_backend
from kiln.builder import GraphBuilder, gelu, layer_norm, linear, silu, softmax, tanh
from kiln.dtypes import DType
from kiln.ir import Graph, IntVar
from kiln.manifest import Manifest
from kiln.targets import get_target
from planner_svc.lower import lower
from planner_svc.pipeline import run_passes
from tests.support import local_build as lb

TARGETS = {
    "cuda:sm90": ("nvcc", [DType.F16, DType.BF16]),
    "cuda:sm80": ("nvcc", [DType.F16, DType.BF16]),
    "rocm:gfx90a": ("hipcc", [DType.F16]),
}
KINDS = {"fused_elementwise", "linear", "layernorm", "softmax"}


def coverage_graph(dtypes: list[DType]) -> Graph:
    """Per dtype: a fused broadcast chain, a linear with a bias+gelu+residual
    epilogue, a layernorm and a softmax: one of each kernel kind."""
    b = GraphBuilder("gpu_compile")
    batch = IntVar("batch", 1, 128)
    outs = []
    for dt in dtypes:
        tag = dt.value
        x = b.input(f"x_{tag}", (batch, 40), dt)
        v = b.input(f"v_{tag}", (40,), dt)
        r = b.input(f"r_{tag}", (batch, 24), dt)
        w = b.constant(f"w_{tag}", np.random.default_rng(0).uniform(-0.2, 0.2, (24, 40)), dt)
        bias = b.constant(f"b_{tag}", np.linspace(-1, 1, 24), dt)
        h = gelu(linear(x, w, bias)) + r
        z = layer_norm(h, b.constant(f"g_{tag}", np.ones(24), dt), b.constant(f"be_{tag}", np.zeros(24), dt))
        outs += [softmax(z), silu(tanh(x * v) - v)]
    return b.build(*outs)


def _need(tool: str) -> None:
    if shutil.which(tool) is None:
        pytest.skip(f"{tool} is not installed")


@pytest.mark.parametrize("target_name", list(TARGETS))
def test_gpu_kernels_compile_and_link(tmp_path, target_name):
    tool, dtypes = TARGETS[target_name]
    _need(tool)
    graph = coverage_graph(dtypes)
    built = lb.build_local(graph, target_name, tmp_path / "a", single_tu=True)

    covered = {(c.spec.op, c.spec.outputs[0].dtype) for c in built.plan.calls}
    assert covered == {(k, d) for k in KINDS for d in dtypes}, f"kernel kinds x dtypes compiled: {sorted(covered)}"
    linear_call = next(c for c in built.plan.calls if c.spec.op == "linear")
    assert linear_call.spec.attrs.has_bias and len(linear_call.spec.attrs.epilogue) == 2

    # -DNDEBUG dropped, or a kernel that serialises its wgmma pipeline, shows as C7510.
    assert "C7510" not in built.log, built.log[-3000:]
    lib = built.dir / "libmodel.so"
    assert lib.stat().st_size > 0
    exported = subprocess.run(["nm", "-D", "--defined-only", str(lib)], capture_output=True, text=True,
                              check=True).stdout
    for sym in ("kiln_model_create", "kiln_model_run", "kiln_model_destroy", "kiln_model_error",
                "kiln_device_malloc", "kiln_memcpy_h2d", "kiln_memcpy_d2h", "kiln_memset", "kiln_synchronize"):
        assert f" T {sym}\n" in exported, f"{sym} is not exported by {lib.name}"
    manifest = Manifest.loads((built.dir / "manifest.json").read_bytes())
    assert len({k.fn for k in manifest.kernels}) == len(built.plan.calls)
    if target_name.startswith("cuda") and shutil.which("cuobjdump"):
        # Device code for this very arch (sm_90a for sm90), not just PTX to JIT.
        arch = get_target(target_name).arch.replace("sm", "sm_")
        listing = subprocess.run(["cuobjdump", "--list-elf", str(lib)], capture_output=True, text=True).stdout
        assert arch in listing, listing


@pytest.mark.parametrize("target_name", list(TARGETS))
def test_one_kernel_alone_through_compile_kernel(target_name):
    """The farm compiles each kernel on its own: the prelude must be enough."""
    tool, dtypes = TARGETS[target_name]
    _need(tool)
    target = get_target(target_name)
    backend = get_backend(target.family)
    graph = coverage_graph(dtypes[-1:])
    plan = lower(run_passes(graph)[0], target_name)
    spec = next(c.spec for c in plan.calls if c.spec.op == "softmax")
    rk = build.render(backend, target, spec, backend.default_config(spec, target))
    obj, log = build.compile_kernel(backend, target, rk)
    assert obj and "C7510" not in log
    if target.family == "rocm":
        assert backend.compiler_env().get("HIP_PLATFORM") == "amd"
    assert os.environ.get("HIP_PLATFORM") in (None, "amd", "nvidia")  # the backend never changes ours
