"""The cpu kernels of conv, pooling, reductions, layout ops, matmul and attention,
built and run for real against the float64 reference.

The graphs come from tests.support.op_cases (shared with the gpu tests); each
runs at fp32 and fp16, at two batch sizes where the batch is symbolic.
"""
from __future__ import annotations

import numpy as np
import pytest

from kiln import reference
from kiln.dtypes import DType
from kiln.runtime import Model, RunError
from tests.support import local_build as lb
from tests.support import op_cases as oc

TARGET = "cpu"
DTYPES = [pytest.param(DType.F32, id="f32"), pytest.param(DType.F16, id="f16")]
CASES = [pytest.param(fn, id=name) for name, fn in oc.CASES]


def build_and_load(tmp_path, graph) -> tuple[lb.LocalBuild, Model]:
    built = lb.build_local(graph, TARGET, tmp_path / "artifact")
    return built, Model(built.dir)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CASES)
def test_op_case_matches_reference(tmp_path, case, dtype):
    graph = case(dtype)
    built, model = build_and_load(tmp_path, graph)
    try:
        errors = lb.check_model(model, graph, lb.TOLERANCE[TARGET][dtype], oc.case_sizes(graph),
                                feeds_fn=oc.case_feeds)
    finally:
        model.close()
    assert errors
    # One kernel per case: epilogues fuse into the conv, a reshape read by a kernel is a view.
    # (A conv with fewer than 8 input channels is im2col + a GEMM: thin_convs_to_gemm.)
    if built.ops() == ["im2col", "linear"] and graph.name.startswith("conv"):
        assert graph.inputs[0].type.shape[-1] < 8
        return
    # Two outputs, two kernels: the slice with a symbolic end and the permute that binds its symbol.
    assert len(built.ops()) == (2 if graph.name in ("reshape_out", "slice_symend") else 1), built.ops()


@pytest.mark.parametrize("dtype", DTYPES)
def test_reshape_lowering(tmp_path, dtype):
    """A reshape read by a kernel costs nothing; a reshape that is a graph output is a copy kernel."""
    view = lb.build_local(oc.reshape_feeds_kernel(dtype), TARGET, tmp_path / "view")
    assert view.ops() == ["reduce_max"]
    out = lb.build_local(oc.reshape_output(dtype), TARGET, tmp_path / "out")
    assert out.ops() == ["permute", "copy"]


def test_fully_masked_attention_rows_are_zero(tmp_path):
    graph = oc.attention_causal_fully_masked_rows(DType.F32)
    _, model = build_and_load(tmp_path, graph)
    try:
        feeds = oc.case_feeds(graph, sizes={"batch": 2})
        got = next(iter(model.run(feeds).values()))
    finally:
        model.close()
    sq, sk = 7, 4
    assert np.all(got[:, :, :sq - sk, :] == 0.0)
    assert np.all(np.abs(got[:, :, sq - sk:, :]).sum(axis=-1) > 0)


@pytest.mark.parametrize("case", [oc.embedding_int32, oc.embedding_int64], ids=["i32", "i64"])
@pytest.mark.parametrize("bad", [-1, 50, 1 << 30])
def test_embedding_index_out_of_range_fails_the_run(tmp_path, case, bad):
    graph = case(DType.F32)
    _, model = build_and_load(tmp_path, graph)
    sizes = oc.case_sizes(graph)[-1]
    try:
        good = oc.case_feeds(graph, sizes=sizes)
        ref = reference.run(graph, good)
        got = model.run(good)  # the same model still runs valid indices
        assert lb.rel_err(next(iter(got.values())), next(iter(ref.values()))) < 1e-6
        with pytest.raises(RunError, match="failed"):
            model.run(oc.bad_index_feeds(graph, bad, sizes=sizes))
    finally:
        model.close()


def test_case_feeds_are_valid():
    """The shared inputs keep their promises: indices in range, masks finite with some
    masked and some open entries, no all-zero float input."""
    for name, fn in oc.CASES:
        graph = fn(DType.F16)
        for sizes in oc.case_sizes(graph):
            feeds = oc.case_feeds(graph, sizes=sizes)
            for t in graph.inputs:
                v = feeds[t.name]
                assert v.dtype.kind in "fib", (name, t.name)
                if t.type.dtype.is_float:
                    assert np.all(np.isfinite(v)) and np.any(v != 0), (name, t.name)
            for op in graph.ops:
                if op.kind == "embedding":
                    idx = feeds[op.inputs[1]]
                    assert idx.min() >= 0 and idx.max() == 49, name
                if op.kind == "attention" and op.attrs.has_mask:
                    m = feeds[op.inputs[-1]]
                    assert np.any(m == oc.MASKED) and np.all(m[..., 0] != oc.MASKED), name


@pytest.mark.parametrize("dtype", DTYPES)
def test_conv_with_separate_pointwise_ops(tmp_path, dtype):
    """relu(conv(x) + bias-free residual) written as three ops: the planner folds the add and
    relu into the conv's epilogue, and the fused kernel still matches the unfused reference."""
    b = oc.GraphBuilder("conv_then_pointwise")
    x = b.input("x", (oc.batch(), 6, 7, 8), dtype)
    w = b.constant("w", np.random.default_rng(5).uniform(-0.3, 0.3, (8, 3, 3, 8)), dtype)
    r = b.input("r", (oc.batch(), 6, 7, 8), dtype)
    y = b.op("conv2d", [x, w], oc.Conv2dAttrs(pads=(1, 1, 1, 1)))
    graph = b.build(b.op("relu", [y + r]))
    built, model = build_and_load(tmp_path, graph)
    try:
        lb.check_model(model, graph, lb.TOLERANCE[TARGET][dtype], oc.case_sizes(graph), feeds_fn=oc.case_feeds)
    finally:
        model.close()
    assert built.ops() == ["conv2d"] and built.plan.calls[0].spec.attrs.epilogue
