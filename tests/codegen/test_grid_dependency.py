"""Programmatic dependent launch on Hopper (templates/gpu/grid_dependency.h).

A kernel launched early must not touch global memory before its predecessor has
finished, or it reads stale activations and overwrites arena bytes still being
read. So every kernel Kiln renders for sm90 waits first, and every launch goes
through kiln_launch (the only place the launch attribute is set). Nothing runs
here; tests/gpu/test_runtime_gpu.py runs a model with the mode on and off.
"""
from __future__ import annotations

import re
import shutil
import subprocess

import pytest

from codegen_worker import build
from codegen_worker.backends import cutlass_sm80, get_backend
from kiln.dtypes import DType
from kiln.targets import get_target
from planner_svc.lower import lower
from planner_svc.pipeline import run_passes
from tests.codegen import test_attention_compile, test_gpu_ops_compile, test_gpu_targets_compile
from tests.support import local_build as lb
from tests.support.conv_cases import HALO_CASES, conv_graph


def _every_rendering(target_name: str) -> list[str]:
    """Every GPU template as the profiler would render it: each spec of the op-case,
    coverage and attention graphs under each of its candidate configs."""
    backend, target = get_backend("cuda"), get_target(target_name)
    graphs = [test_gpu_ops_compile.all_cases_graph([DType.F16]),
              test_gpu_targets_compile.coverage_graph([DType.F16, DType.BF16]),
              test_attention_compile.coverage_graph([DType.F16, DType.F32]),
              conv_graph(DType.F16, cases=HALO_CASES)]
    sources = {}
    for graph in graphs:
        for call in lower(run_passes(graph)[0], target_name).calls:
            spec = call.spec
            configs = [backend.default_config(spec, target), *backend.candidate_configs(spec, target)]
            if spec.op == "conv2d":
                # Not candidates on sm90, but a conv may be pinned to CUTLASS 2.x there.
                configs += [test_gpu_ops_compile.SIMT["conv2d"], cutlass_sm80.CONV_DEFAULT]
            for config in configs:
                if backend.fits(spec, target, config):
                    rk = build.render(backend, target, spec, config)
                    sources[rk.object_key] = rk.source
    return list(sources.values())


def _kernel_bodies(source: str) -> list[tuple[str, str]]:
    """(kernel name, first statement) of every __global__ function."""
    out = []
    for m in re.finditer(r"__global__[^{;]*?(\w+)\((?:[^()]|\([^()]*\))*\)\s*\{\n\s*([^\n]*)", source):
        out.append((m.group(1), m.group(2).strip()))
    return out


def test_every_sm90_kernel_waits_before_it_touches_memory():
    sources = _every_rendering("cuda:sm90")
    kernels = [k for s in sources for k in _kernel_bodies(s)]
    assert len(kernels) > 40, "the renderings should cover every template"
    late = [(name, first) for name, first in kernels if first != "kiln_pdl_enter();"]
    assert not late, f"kernels whose first statement is not kiln_pdl_enter(): {late[:5]}"
    # The triple-chevron launch cannot carry the attribute: every launch is kiln_launch,
    # the CUTLASS GEMM's adapter (told through launch_with_pdl) or a CUTLASS conv's entry.
    chevrons = [s.splitlines()[0] for s in sources if "<<<" in s]
    assert not chevrons, f"launches that bypass kiln_launch: {chevrons[:3]}"
    gemms = [s for s in sources if "GemmUniversalAdapter" in s]
    convs = [s for s in sources if "ConvUniversalAdapter" in s]
    early = "gemm.run(static_cast<cudaStream_t>(stream), nullptr, kiln_pdl_mode != 0)"
    # Stream-K is built without CUTLASS's hooks (they do not compile there), so never launched early.
    streamk = [s for s in gemms if "StreamKScheduler" in s]
    assert streamk and all("#undef CUTLASS_ENABLE_GDC_FOR_SM90" in s and early not in s for s in streamk)
    assert all(early in s for s in gemms if s not in streamk)
    assert convs and all("cudaLaunchKernelEx(&cfg, entry, params)" in s and "conv.initialize" not in s for s in convs)
    assert any("Halo conv (mma.sync" in s for s in sources), "the halo conv is a candidate there"
    # CUTLASS 2.x convs: the device class's run() would launch with triple chevrons inside the header.
    convs_2x = [s for s in sources if "ImplicitGemmConvolution<Kernel>" in s]
    assert convs_2x and all("kiln_launch(entry, grid" in s and "conv.run" not in s for s in convs_2x)


def test_only_hopper_builds_launch_early():
    backend = get_backend("cuda")
    sm90, sm80 = backend.flags(get_target("cuda:sm90")), backend.flags(get_target("cuda:sm80"))
    assert {"-DKILN_GRID_DEPENDENCY", "-DCUTLASS_ENABLE_GDC_FOR_SM90"} <= set(sm90)
    assert not any("GRID_DEPENDENCY" in f or "GDC" in f for f in sm80)


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc is not installed")
@pytest.mark.parametrize("target_name", ["cuda:sm90", "cuda:sm80"])
def test_the_wait_is_in_the_device_code(tmp_path, target_name):
    """The PTX holds griddepcontrol.wait on sm90 and nothing of it on sm80 (whose PTX
    Hopper also runs: those kernels are never launched early)."""
    backend, target = get_backend("cuda"), get_target(target_name)
    graph = test_gpu_targets_compile.coverage_graph([DType.F16])
    spec = next(c.spec for c in lower(run_passes(graph)[0], target_name).calls if c.spec.op == "softmax")
    src = tmp_path / "k.cu"
    src.write_text(build.render(backend, target, spec, backend.default_config(spec, target)).source)
    arch = {"cuda:sm90": "compute_90a", "cuda:sm80": "compute_80"}[target_name]
    flags = [f for f in backend.flags(target) if f != "-gencode" and not f.startswith("arch=")]
    subprocess.run(["nvcc", *flags, f"-arch={arch}", "-ptx", str(src), "-o", str(tmp_path / "k.ptx")], check=True)
    ptx = (tmp_path / "k.ptx").read_text()
    assert ("griddepcontrol.wait" in ptx) == (target_name == "cuda:sm90")
    assert ("griddepcontrol.launch_dependents" in ptx) == (target_name == "cuda:sm90")


def test_the_switch_reports_where_it_does_nothing(tmp_path):
    """A cpu artifact exports kiln_model_set_pdl too, and says it changed nothing."""
    from kiln.runtime import Model

    graph = test_gpu_targets_compile.coverage_graph([DType.F32])
    built = lb.build_local(graph, "cpu", tmp_path / "a")
    m = Model(built.dir)
    try:
        assert m.set_pdl(True) is False
        assert m.set_pdl(False) is False
    finally:
        m.close()
