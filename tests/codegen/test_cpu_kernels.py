"""Generated cpu kernels, built and run for real, against the float64 reference.

Each test builds an artifact with tests.support.local_build (no farm) and runs
it through kiln.runtime.Model exactly as a user would.
"""
from __future__ import annotations

import ctypes

import numpy as np
import pytest

from codegen_worker import build
from codegen_worker.backends import get_backend
from kiln import reference
from kiln.builder import GraphBuilder, linear, relu, symbol, tanh
from kiln.dtypes import DType
from kiln.ir import IntVar
from kiln.manifest import Manifest
from kiln.ops import BINARY, UNARY
from kiln.runtime import Model, RunError
from kiln.targets import get_target
from profile_worker.runner import run_all
from tests.support import local_build as lb

TARGET = "cpu"
DTYPES = [pytest.param(DType.F32, id="f32"), pytest.param(DType.F16, id="f16")]


def tol(dtype: DType) -> float:
    return lb.TOLERANCE["cpu"][dtype]


def run_case(tmp_path, graph, dtype, sizes_list=(None,), configs=None) -> lb.LocalBuild:
    built = lb.build_local(graph, TARGET, tmp_path / "artifact", configs)
    model = Model(built.dir)
    try:
        lb.check_model(model, graph, tol(dtype), sizes_list)
    finally:
        model.close()
    return built


# --- fused elementwise -------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
def test_every_pointwise_op_in_one_fused_kernel(tmp_path, dtype):
    graph = lb.graph("chain", lambda b: lb.add_pointwise_chain(b, dtype))
    built = run_case(tmp_path, graph, dtype)
    assert built.ops() == ["fused_elementwise"], "the chain should fuse into one kernel"
    program = {i.op for i in built.plan.calls[0].spec.attrs.program}
    assert program == set(UNARY) | set(BINARY), f"ops not covered: {set(UNARY) | set(BINARY) - program}"


@pytest.mark.parametrize("dtype", DTYPES)
def test_each_pointwise_op_alone(tmp_path, dtype):
    graph = lb.graph("each", lambda b: lb.add_each_pointwise_op(b, dtype))
    built = run_case(tmp_path, graph, dtype, [None, None])
    assert len(built.plan.calls) == len(UNARY) + len(BINARY)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", lb.BROADCAST_KINDS)
def test_broadcasting(tmp_path, dtype, kind):
    graph = lb.graph(kind, lambda b: lb.add_broadcast(b, dtype, kind, IntVar("batch", 1, 16)))
    sizes = [{"batch": 1}, {"batch": 3}, {"batch": 16}]
    built = run_case(tmp_path, graph, dtype, sizes)
    assert built.ops() == ["fused_elementwise"]


@pytest.mark.parametrize("dtype", DTYPES)
def test_unfused_chain_with_shared_producer(tmp_path, dtype):
    """A producer with two users stays its own kernel and goes through the arena."""
    b = GraphBuilder("diamond")
    x = b.input("x", (symbol("n", 1, 100), 9), dtype)
    t = b.op("exp", [b.op("tanh", [relu(x) * x])])
    out = t * t + t  # t has three uses: its own kernel
    graph = b.build(out)
    built = run_case(tmp_path, graph, dtype, [{"n": 1}, {"n": 100}])
    assert len(built.plan.calls) == 2


@pytest.mark.parametrize("dtype", DTYPES)
def test_fused_kernel_with_64_inputs(tmp_path, dtype):
    graph = lb.graph("wide", lambda b: tanh(lb.add_sum_chain(b, dtype, 64, (symbol("n", 1, 9), 5))))
    built = run_case(tmp_path, graph, dtype, [{"n": 1}, {"n": 9}])
    assert built.ops() == ["fused_elementwise"] and len(built.plan.calls[0].spec.inputs) == 64


@pytest.mark.parametrize("dtype", DTYPES)
def test_rank0_output(tmp_path, dtype):
    run_case(tmp_path, lb.graph("scalar", lambda b: lb.add_scalar(b, dtype)), dtype, [None, None])


def test_fusion_of_a_chain_with_65_inputs(tmp_path):
    graph = lb.graph("wider", lambda b: lb.add_sum_chain(b, DType.F32, 65, (3, 5)))  # 64 valid adds
    run_case(tmp_path, graph, DType.F32)


def test_epilogue_with_20_extra_inputs(tmp_path):
    b = GraphBuilder("epi")
    h = linear(b.input("x", (4, 8), DType.F32), b.constant("w", np.eye(8), DType.F32))
    for i in range(20):
        h = h + b.input(f"r{i}", (4, 8), DType.F32)
    run_case(tmp_path, b.build(h), DType.F32)


# --- linear ------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", lb.LINEAR_KINDS)
def test_linear(tmp_path, dtype, kind):
    graph = lb.graph(kind, lambda b: lb.add_linear(b, dtype, kind))  # 7 x 33 x 65: no tile divides any
    built = run_case(tmp_path, graph, dtype)
    assert built.ops() == ["linear"], "the epilogue should fuse into the GEMM"


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", ["bias", "add_relu", "broadcast_extras"])
def test_linear_symbolic_batch(tmp_path, dtype, kind):
    m = IntVar("batch", 1, 37)
    graph = lb.graph(kind, lambda b: lb.add_linear(b, dtype, kind, m=m, n=19, k=24))
    run_case(tmp_path, graph, dtype, [{"batch": 1}, {"batch": 2}, {"batch": 5}, {"batch": 36}, {"batch": 37}])


@pytest.mark.parametrize("dtype", DTYPES)
def test_linear_rank3_input(tmp_path, dtype):
    graph = lb.graph("rank3", lambda b: lb.add_linear_rank3(b, dtype, IntVar("batch", 1, 9)))
    run_case(tmp_path, graph, dtype, [{"batch": 1}, {"batch": 4}, {"batch": 9}])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mnk", [(1, 1, 1), (1, 5, 3), (13, 1, 7), (9, 17, 1), (33, 9, 130)])
def test_linear_degenerate_sizes(tmp_path, dtype, mnk):
    m, n, k = mnk
    run_case(tmp_path, lb.graph("lin", lambda b: lb.add_linear(b, dtype, "residual", m=m, n=n, k=k)), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_every_gemm_candidate_config_agrees(tmp_path, dtype):
    target = get_target(TARGET)
    backend = get_backend("cpu")
    m = IntVar("batch", 1, 23)
    graph = lb.graph("lin", lambda b: lb.add_linear(b, dtype, "broadcast_extras", m=m, n=33, k=65))
    first = lb.build_local(graph, TARGET, tmp_path / "default")
    spec = next(c.spec for c in first.plan.calls if c.spec.op == "linear")
    candidates = backend.candidate_configs(spec, target)
    assert len(candidates) >= 4
    feeds = lb.feeds_for(graph, seed=3, sizes={"batch": 23})
    outputs = []
    for i, cfg in enumerate(candidates):
        built = run_case(tmp_path / f"c{i}", graph, dtype, [{"batch": 1}, {"batch": 23}], configs={"linear": cfg})
        assert built.configs["k0"] == cfg
        model = Model(built.dir)
        outputs.append(next(iter(model.run(feeds).values())).astype(np.float64))
        model.close()
    for cfg, out in zip(candidates[1:], outputs[1:], strict=True):
        # Same sums in a different order at most: agreement far inside the tolerance.
        assert lb.rel_err(out, outputs[0]) < tol(dtype) / 10, f"config {cfg} disagrees with {candidates[0]}"


def test_cpu_profiler_runs_every_candidate(tmp_path):
    """The profiler harness itself, on the cpu: every candidate ok, checked against candidate 0."""
    target = get_target(TARGET)
    backend = get_backend("cpu")
    graph = lb.graph("lin", lambda b: lb.add_linear(b, DType.F32, "residual", m=IntVar("batch", 1, 40)))
    built = lb.build_local(graph, TARGET, tmp_path / "a")
    spec = built.plan.calls[0].spec
    candidates = backend.candidate_configs(spec, target)
    kernels = [build.render(backend, target, spec, c) for c in candidates]
    objects = [build.compile_kernel(backend, target, k)[0] for k in kernels]
    work = tmp_path / "prof"
    work.mkdir()
    exe = build.build_profiler(backend, target, spec, kernels, objects, work)
    results = run_all(str(exe), len(candidates), runs=3, timeout_s=60)
    assert [r.index for r in results] == list(range(len(candidates)))
    for cfg, r in zip(candidates, results, strict=True):
        assert r.ok and r.median_ms > 0, f"candidate {cfg}: {r}"


# --- norms -------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("op", ["layernorm", "softmax"])
@pytest.mark.parametrize("cols", lb.ROW_LENGTHS)
def test_row_ops_odd_lengths(tmp_path, dtype, op, cols):
    graph = lb.graph(op, lambda b: lb.add_row_op(b, dtype, op, cols, IntVar("batch", 1, 5)))
    built = run_case(tmp_path, graph, dtype, [{"batch": 1}, {"batch": 5}])
    assert built.ops() == [op]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("op", ["layernorm", "softmax"])
def test_row_ops_rank1(tmp_path, dtype, op):
    graph = lb.graph(op, lambda b: lb.add_row_op(b, dtype, op, 45, None))
    run_case(tmp_path, graph, dtype)


@pytest.mark.parametrize("eps", [1e-12, 0.5, 3.0, 1e20])
def test_layernorm_eps_values(tmp_path, eps):
    """eps is rendered into the source as a float literal."""
    graph = lb.graph("ln", lambda b: lb.add_row_op(b, DType.F32, "layernorm", 9, 2, eps=eps))
    run_case(tmp_path, graph, DType.F32)


@pytest.mark.parametrize("dtype", DTYPES)
def test_softmax_of_large_values_is_stable(tmp_path, dtype):
    b = GraphBuilder("big")
    x = b.input("x", (4, 50), dtype)
    graph = b.build(b.op("softmax", [x]))
    built = lb.build_local(graph, TARGET, tmp_path / "a")
    model = Model(built.dir)
    shift = 2000.0 if dtype is DType.F32 else 60000.0  # exp() of these overflows without the max shift
    x = (lb.feeds_for(graph)["x"].astype(np.float64) * 4 + shift).astype(np.float32)
    got = model.run({"x": x})[graph.outputs[0]]
    ref = reference.run(graph, {"x": x.astype(dtype.value)})[graph.outputs[0]]
    model.close()
    assert np.isfinite(got.astype(np.float64)).all()
    assert lb.rel_err(got, ref) < tol(dtype)


# --- whole graphs --------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
def test_mlp_block_at_min_and_max_batch(tmp_path, dtype):
    graph = lb.graph("mlp", lambda b: lb.add_mlp(b, dtype, IntVar("batch", 1, 64)))
    built = run_case(tmp_path, graph, dtype, [{"batch": 1}, {"batch": 2}, {"batch": 31}, {"batch": 64}])
    assert sorted(set(built.ops())) == ["fused_elementwise", "layernorm", "linear", "softmax"]


@pytest.mark.parametrize("dtype", DTYPES)
def test_two_symbols_bound_per_kernel(tmp_path, dtype):
    graph = lb.graph("two", lambda b: lb.add_two_symbols(b, dtype))
    built = run_case(tmp_path, graph, dtype, [{"seq": 1, "batch": 1}, {"seq": 5, "batch": 3},
                                              {"seq": 12, "batch": 2}, {"seq": 2, "batch": 6}])
    assert [s.name for s in built.plan.symbols] == ["seq", "batch"]
    assert ("batch", "seq") in {c.symbols for c in built.plan.calls}, "no kernel sees the symbols reordered"


def test_twin_kernels_share_one_object(tmp_path):
    """Two linears of one shape render to one fn; the link must see it once and
    each call must still read its own weights."""
    b = GraphBuilder("twins")
    x = b.input("x", (5, 12), DType.F32)
    rng = np.random.default_rng(0)
    w1 = b.constant("w1", rng.standard_normal((12, 12)), DType.F32)
    w2 = b.constant("w2", rng.standard_normal((12, 12)), DType.F32)
    graph = b.build(linear(linear(x, w1), w2))
    built = run_case(tmp_path, graph, DType.F32)
    manifest = Manifest.loads((built.dir / "manifest.json").read_bytes())
    fns = [k.fn for k in manifest.kernels]
    assert len(fns) == 2 and fns[0] == fns[1]


@pytest.mark.parametrize("dtype", DTYPES)
def test_hostile_names_compile_and_run(tmp_path, dtype):
    graph = lb.hostile_graph(dtype)
    built = run_case(tmp_path, graph, dtype, [{"batch": 1}, {"batch": 8}])
    model_src = (built.dir / "build" / "model.cc").read_text()
    for text in ("#include <evil>", "system(", "#define int"):
        assert text not in model_src, f"{text!r} reached the generated C++"
    assert len(built.plan.calls) == 3


# --- symbolic dims out of range ------------------------------------------------
def test_symbolic_dim_out_of_range_names_the_input(tmp_path):
    b = GraphBuilder("ranged")
    x = b.input("tokens", (symbol("batch", 2, 9), 4), DType.F32)
    y = b.input("other", (4,), DType.F32)
    graph = b.build(x + y)
    built = lb.build_local(graph, TARGET, tmp_path / "a")
    model = Model(built.dir)
    for n in (1, 10):
        feeds = lb.feeds_for(graph, sizes={"batch": n})
        with pytest.raises(RunError, match=r"'tokens'.*batch.*\[2, 9\]"):
            model.run(feeds)
    lb.check_model(model, graph, tol(DType.F32), [{"batch": 2}, {"batch": 9}])

    # The container checks the range itself too, for callers that skip the Python.
    a = np.ones((10, 4), np.float32)
    c = np.ones(4, np.float32)
    out = np.zeros((10, 4), np.float32)
    syms = (ctypes.c_int64 * 1)(10)
    with pytest.raises(RunError, match=r"batch = 10 is outside \[2, 9\]"):
        model._call([a.ctypes.data, c.ctypes.data], [out.ctypes.data], syms, None)
    assert not out.any(), "no kernel may run once a symbol is out of range"
    model.close()
