"""The pad op: zero borders, on the cpu (run) and gpu targets (compiled; run in tests/gpu)."""
from __future__ import annotations

import shutil

import pytest

from kiln.builder import GraphBuilder, symbol
from kiln.dtypes import DType
from kiln.ir import Graph
from kiln.ops import PadAttrs
from kiln.runtime import Model
from tests.support import local_build as lb


def pad_graph(dtype: DType) -> Graph:
    b = GraphBuilder(f"pad_{dtype.value}")
    x = b.input("x", (symbol("n", 1, 4), 5, 6, 3), dtype)
    # NHWC channels 3 -> 8 (what conv channel alignment needs) plus borders on H and W.
    return b.build(b.op("pad", [x], PadAttrs((0, 0, 1, 2, 0, 1, 0, 5))))


@pytest.mark.parametrize("dtype", [DType.F32, DType.F16])
def test_pad_matches_reference_on_cpu(tmp_path, dtype):
    graph = pad_graph(dtype)
    model = Model(lb.build_local(graph, "cpu", tmp_path / "a").dir)
    try:
        errors = lb.check_model(model, graph, 1e-6, [{"n": 1}, {"n": 3}])
    finally:
        model.close()
    assert max(errors) == 0.0  # a pad only moves values: exact in every dtype


@pytest.mark.parametrize("target", ["cuda:sm90", "rocm:gfx90a"])
def test_pad_compiles_for_gpu_targets(tmp_path, target):
    compiler = "nvcc" if target.startswith("cuda") else "hipcc"
    if shutil.which(compiler) is None:
        pytest.skip(f"{compiler} is not installed")
    built = lb.build_local(pad_graph(DType.F16), target, tmp_path / "a")
    assert (built.dir / "libmodel.so").read_bytes()[:4] == b"\x7fELF"
