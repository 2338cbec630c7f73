"""CUTLASS 3.x sm90 implicit-GEMM convs (NHWC) with fused epilogues, on Hopper; and CUTLASS 2.x's (mma.sync),
which are conv candidates on sm90 and the convs of an sm80 artifact."""
from __future__ import annotations

import shutil
import subprocess

import pytest

from codegen_worker.backends import cutlass_sm80
from codegen_worker.backends.base import CONV_HALO
from kiln.dtypes import DType
from kiln.runtime import Model
from tests.support import local_build as lb
from tests.support.conv_cases import CASES, HALO_CASES, SM80_CASES, SM80_ELIGIBLE, conv_graph

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("dtype", [DType.F16, DType.BF16])
def test_convs_on_tensor_cores_match_reference(tmp_path, dtype):
    graph = conv_graph(dtype)
    built = lb.build_local(graph, "cuda:sm90", tmp_path / "a")
    impls = [built.configs[c.kernel].get("impl") for c in built.plan.calls]
    assert impls == ["cutlass_sm90"] * len(CASES), impls
    assert "C7510" not in built.log
    model = Model(built.dir)
    try:
        lb.check_model(model, graph, 1e-2, [{"batch": 1}, {"batch": 5}])
    finally:
        model.close()
    if shutil.which("cuobjdump"):
        sass = subprocess.run(["cuobjdump", "-sass", str(built.dir / "libmodel.so")], capture_output=True,
                              text=True).stdout
        assert "HGMMA" in sass, "no wgmma instructions in the convs"


def _pointwise(case: tuple) -> bool:
    _, _, (_, kh, kw), stride, pads, dilation, _ = case
    return (kh, kw) == (1, 1) and stride == (1, 1) and not any(pads)


# Every candidate in f16, the default in bf16 too.
SM80_RUNS = [(DType.F16, c) for c in cutlass_sm80.CONV_CANDIDATES] + [(DType.BF16, cutlass_sm80.CONV_DEFAULT)]


@pytest.mark.parametrize(("dtype", "config"), SM80_RUNS,
                         ids=[f"{d.value}-{'x'.join(map(str, c['tile']))}" for d, c in SM80_RUNS])
def test_cutlass_2x_convs_on_hopper_in_each_candidate(tmp_path, dtype, config):
    """Bias + relu, bias alone, a residual, stride 2, a 7x7 filter: each CUTLASS 2.x conv candidate of an sm90 build."""
    graph = conv_graph(dtype, cases=SM80_CASES)
    built = lb.build_local(graph, "cuda:sm90", tmp_path / "a", {"conv2d": config})
    # The 1x1 stride-1 conv is a linear by then (pointwise_convs_to_linear), which the conv pin does not reach.
    convs = [c for c in built.plan.calls if c.spec.op == "conv2d"]
    assert len(convs) == sum(1 for c in SM80_CASES if not _pointwise(c))
    assert [built.configs[c.kernel] for c in convs] == [config] * len(convs)
    model = Model(built.dir)
    try:
        lb.check_model(model, graph, 1e-2, [{"batch": 1}, {"batch": 5}])
    finally:
        model.close()


def test_sm80_artifact_convs_take_cutlass_2x(tmp_path):
    """An sm80 artifact (its PTX JIT-compiled here) serves every conv CUTLASS 2.x can with it by default, the others
    (asymmetric padding; bias and residual together) with the SIMT kernel."""
    graph = conv_graph(DType.F16)
    built = lb.build_local(graph, "cuda:sm80", tmp_path / "a")
    impls = {c.source_ops[0].split(".")[0]: built.configs[c.kernel].get("impl") for c in built.plan.calls}
    assert impls == {c[0]: ("cutlass_sm80" if c in SM80_ELIGIBLE else None) for c in CASES}, impls
    model = Model(built.dir)
    try:
        lb.check_model(model, graph, 1e-2, [{"batch": 1}, {"batch": 5}])
    finally:
        model.close()


HALO_RUNS = [("cuda:sm90", DType.F16), ("cuda:sm90", DType.BF16), ("cuda:sm80", DType.F16)]


@pytest.mark.parametrize(("target", "dtype"), HALO_RUNS, ids=[f"{t[5:]}-{d.value}" for t, d in HALO_RUNS])
def test_halo_convs_match_reference(tmp_path, target, dtype):
    """Kiln's own 3x3 conv (gpu/conv2d_halo.j2) pinned on every case it serves; the sm80 build runs here through its
    PTX. Batch 16 makes the 56x56 image's 784 tiles outnumber the blocks, so blocks loop and swap window buffers."""
    graph = conv_graph(dtype, batch_max=16, cases=HALO_CASES)
    built = lb.build_local(graph, target, tmp_path / "a", {"conv2d": CONV_HALO})
    assert [built.configs[c.kernel] for c in built.plan.calls] == [CONV_HALO] * len(HALO_CASES)
    model = Model(built.dir)
    try:
        lb.check_model(model, graph, 1e-2, [{"batch": 1}, {"batch": 5}, {"batch": 16}])
    finally:
        model.close()
