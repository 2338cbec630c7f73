"""Profile points of a kernel spec, and per-point picks combined into one (dispatch) config."""
from __future__ import annotations

import numpy as np
import pytest

from codegen_worker import build
from codegen_worker.backends import get_backend
from kiln.builder import GraphBuilder, linear, relu, symbol
from kiln.dtypes import DType
from kiln.ir import IntVar
from kiln.runtime import Model
from kiln.targets import get_target
from kiln.tuning import DISPATCH, dispatch_config, profile_points
from planner_svc.lower import lower
from planner_svc.pipeline import run_passes
from tests.support import local_build as lb

A, B = {"tm": 4, "tn": 4}, {"tm": 1, "tn": 8}


def gemm(batch: IntVar | int):
    b = GraphBuilder("tuned")
    x = b.input("x", (batch, 24), DType.F32)
    w = b.constant("w", np.random.default_rng(0).uniform(-1, 1, (20, 24)), DType.F32)
    return b.build(relu(linear(x, w)))


def spec_of(graph):
    (call,) = lower(run_passes(graph)[0], "cpu").calls
    return call.spec


@pytest.mark.parametrize(("lo", "hi", "points"), [(1, 64, [[1], [8], [64]]), (1, 4096, [[1], [16], [256]]),
                                                 (32, 32, [[32]]), (2, 3, [[2], [3]])])
def test_points_span_a_dynamic_dim_geometrically(lo, hi, points):
    assert profile_points(spec_of(gemm(symbol("n", lo, hi)))) == points


def test_a_static_spec_has_one_point():
    assert profile_points(spec_of(gemm(7))) == [[]]


def test_equal_picks_need_no_dispatch_and_unequal_ones_split_at_geometric_middles():
    pts = [[1], [16], [256]]
    assert dispatch_config(pts, [A, A, A]) == A
    assert dispatch_config(pts, [A, B, B]) == {"impl": DISPATCH, "cases": [{"upto": 4, "config": A},
                                                                           {"upto": None, "config": B}]}
    assert dispatch_config(pts, [A, B, A])["cases"] == [{"upto": 4, "config": A}, {"upto": 64, "config": B},
                                                        {"upto": None, "config": A}]


def test_a_dispatch_kernel_runs_each_ranges_own_kernel(tmp_path):
    """cpu: the dispatcher and its two kernels link into one artifact, right at every batch."""
    graph = gemm(symbol("n", 1, 64))
    spec = spec_of(graph)
    config = dispatch_config(profile_points(spec), [A, B, B])
    rk = build.render(get_backend("cpu"), get_target("cpu"), spec, config)
    assert [p.fn for p in rk.parts] == [build.kernel_fn_name(spec, A), build.kernel_fn_name(spec, B)]
    assert "if (value <= 2)" in rk.source
    built = lb.build_local(graph, "cpu", tmp_path / "a", {spec.key(): config})
    model = Model(built.dir)
    try:
        lb.check_model(model, graph, 1e-5, [{"n": 1}, {"n": 2}, {"n": 3}, {"n": 64}])
    finally:
        model.close()
