"""Generated cuda:sm90 kernels run on a real GPU, against the float64 reference.

The cpu tests' coverage (tests/codegen/test_cpu_kernels.py), in f32, f16 and
bf16. nvcc costs ~2 s a kernel, so each test packs many cases into one graph
(one artifact); a failure message names the output, whose name names the case.
Outputs are poisoned with NaN bytes before each run, so every element must be
finite. Skipped unless `nvidia-smi -L` answers (tests/conftest.py).

Run on a GPU box: pytest -q -s tests/gpu   (-s shows the profiler's table)
"""
from __future__ import annotations

import ctypes
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from codegen_worker import build
from codegen_worker.backends import get_backend
from kiln import reference
from kiln.builder import GraphBuilder
from kiln.dtypes import DType
from kiln.ir import IntVar
from kiln.ops import BINARY, UNARY
from kiln.runtime import Model, RunError
from kiln.shapes import infer_types
from kiln.targets import get_target
from kiln.tuning import profile_points
from planner_svc.lower import lower
from planner_svc.pipeline import run_passes
from profile_worker.runner import run_all
from tests.support import local_build as lb

pytestmark = pytest.mark.gpu

TARGET = "cuda:sm90"
DTYPES = [pytest.param(DType.F32, id="f32"), pytest.param(DType.F16, id="f16"), pytest.param(DType.BF16, id="bf16")]


def tol(dtype: DType) -> float:
    return lb.TOLERANCE["cuda"][dtype]


# These tests cover the portable kernels; CUTLASS's sm90 GEMMs have their own
# file (test_cutlass_sm90.py), so eligible linears are pinned to the SIMT kernel here.
SIMT = {"linear": {"tile": 16}}


def run_case(tmp_path, graph, dtype, sizes_list=(None,), configs=None) -> lb.LocalBuild:
    built = lb.build_local(graph, TARGET, tmp_path / "artifact", SIMT | (configs or {}))
    model = Model(built.dir)
    try:
        lb.check_model(model, graph, tol(dtype), sizes_list)
    finally:
        model.close()
    return built


# --- fused elementwise -------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
def test_pointwise_ops(tmp_path, dtype):
    """The every-op chain in one fused kernel, each op in a kernel of its own, a
    64-input kernel (the most a fused op takes) and a rank-0 one."""
    graph = lb.graph("pointwise", lambda b: lb.add_pointwise_chain(b, dtype, p="chain."),
                     lambda b: lb.add_each_pointwise_op(b, dtype, shape=(3, 1000), p="each."),
                     lambda b: lb.add_sum_chain(b, dtype, 64, (IntVar("n", 1, 300), 7), p="wide."),
                     lambda b: lb.add_scalar(b, dtype, p="scalar."))
    built = run_case(tmp_path, graph, dtype, [{"n": 1}, {"n": 300}])
    chain = built.plan.calls[0]
    assert chain.spec.op == "fused_elementwise"
    assert {i.op for i in chain.spec.attrs.program} == set(UNARY) | set(BINARY)
    assert len(built.plan.calls) == 1 + len(UNARY) + len(BINARY) + 2
    assert max(len(c.spec.inputs) for c in built.plan.calls) == 64


@pytest.mark.parametrize("dtype", DTYPES)
def test_broadcasting(tmp_path, dtype):
    batch = IntVar("batch", 1, 16)
    graph = lb.graph("broadcast", *[(lambda b, k=k: lb.add_broadcast(b, dtype, k, batch, p=f"{k}."))
                                    for k in lb.BROADCAST_KINDS])
    built = run_case(tmp_path, graph, dtype, [{"batch": 1}, {"batch": 3}, {"batch": 16}])
    assert set(built.ops()) == {"fused_elementwise"} and len(built.plan.calls) == len(lb.BROADCAST_KINDS)


@pytest.mark.parametrize("dtype", DTYPES)
def test_large_elementwise_grid_stride(tmp_path, dtype):
    """More elements than one sweep of the capped grid covers (65535 * 8 blocks of 128
    threads = 67,107,840): a kernel without its grid-stride loop leaves NaN poison."""
    b = GraphBuilder("big")
    x = b.input("x", (IntVar("n", 1, 33000), 2048), dtype)
    v = b.input("v", (2048,), dtype)
    graph = b.build(b.op("tanh", [x * v]))
    run_case(tmp_path, graph, dtype, [{"n": 3}, {"n": 33000}], configs={"fused_elementwise": {"block": 128}})


# --- linear ------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
def test_linear(tmp_path, dtype):
    batch = IntVar("batch", 1, 37)
    adds = [(lambda b, k=k: lb.add_linear(b, dtype, k, p=f"{k}.")) for k in lb.LINEAR_KINDS]   # 7 x 33 x 65
    adds += [(lambda b, k=k: lb.add_linear(b, dtype, k, m=batch, n=19, k=24, p=f"sym_{k}."))
             for k in ("bias", "add_relu", "broadcast_extras")]
    adds += [(lambda b, mnk=mnk: lb.add_linear(b, dtype, "residual", *mnk, p=f"mnk{'x'.join(map(str, mnk))}."))
             for mnk in ((1, 1, 1), (13, 1, 7), (9, 17, 1), (33, 9, 130), (100, 130, 257))]
    adds.append(lambda b: lb.add_linear_rank3(b, dtype, batch, p="rank3."))
    graph = lb.graph("linear", *adds)
    built = run_case(tmp_path, graph, dtype, [{"batch": 1}, {"batch": 2}, {"batch": 17}, {"batch": 37}])
    assert set(built.ops()) == {"linear"}, "every epilogue should fuse into its GEMM"


@pytest.mark.parametrize("dtype", DTYPES)
def test_every_candidate_config_agrees(tmp_path, dtype):
    """Each CudaBackend candidate (linear tiles, elementwise blocks) gives the reference's answer."""
    target = get_target(TARGET)
    backend = get_backend("cuda")
    batch = IntVar("batch", 1, 70)
    graph = lb.graph("candidates", lambda b: lb.add_linear(b, dtype, "broadcast_extras", m=batch, n=70, k=65, p="lin."),
                     lambda b: lb.add_broadcast(b, dtype, "b1n_1m1", batch, p="ew."))
    first = lb.build_local(graph, TARGET, tmp_path / "probe", SIMT)
    specs = {c.spec.op: c.spec for c in first.plan.calls}
    cands = {op: [c for c in backend.candidate_configs(spec, target) if "impl" not in c] or [SIMT["linear"]]
             for op, spec in specs.items()}
    assert len(cands["linear"]) >= 2 and len(cands["fused_elementwise"]) >= 2
    feeds = lb.feeds_for(graph, seed=9, sizes={"batch": 70})
    outputs = []
    for i in range(max(map(len, cands.values()))):
        configs = {op: c[i % len(c)] for op, c in cands.items()}
        built = run_case(tmp_path / f"c{i}", graph, dtype, [{"batch": 1}, {"batch": 70}], configs)
        model = Model(built.dir)
        outputs.append((configs, model.run(feeds)))
        model.close()
    base_cfg, base = outputs[0]
    for cfg, out in outputs[1:]:
        for name in base:
            # The same sums in another order at most: agreement well inside the tolerance.
            err = lb.rel_err(out[name], base[name])
            assert err < tol(dtype) / 4, f"{name}: config {cfg} differs from {base_cfg} by {err:.3g}"


@pytest.mark.parametrize("dtype", [pytest.param(DType.F32, id="f32"), pytest.param(DType.F16, id="f16")])
def test_linear_more_row_tiles_than_grid_y_allows(tmp_path, dtype):
    """M = 65535 * 16 + 1 rows: more 16-row tiles than a grid's y dimension may hold
    (65535). A batch x sequence of 1M tokens is not exotic for a dynamic dim."""
    m = 65535 * 16 + 1
    graph = lb.graph("tall", lambda b: lb.add_linear(b, dtype, "residual", m=IntVar("tokens", 1, m), n=5, k=8))
    run_case(tmp_path, graph, dtype, [{"tokens": 3}, {"tokens": m}])


# --- norms -------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
def test_row_ops_odd_lengths(tmp_path, dtype):
    """Rows shorter than a warp, than a block, and longer than a block (256 threads)."""
    batch = IntVar("batch", 1, 5)
    adds = [(lambda b, op=op, c=c: lb.add_row_op(b, dtype, op, c, batch, p=f"{op}{c}."))
            for op in ("layernorm", "softmax") for c in (*lb.ROW_LENGTHS, 4099)]
    adds += [(lambda b, op=op: lb.add_row_op(b, dtype, op, 300, None, p=f"{op}_rank1.")) for op in ("layernorm", "softmax")]
    graph = lb.graph("rows", *adds)
    built = run_case(tmp_path, graph, dtype, [{"batch": 1}, {"batch": 5}])
    assert sorted(set(built.ops())) == ["layernorm", "softmax"]


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
    assert ("batch", "seq") in {c.symbols for c in built.plan.calls}


def test_hostile_names_compile_and_run(tmp_path):
    graph = lb.hostile_graph(DType.F16)
    built = run_case(tmp_path, graph, DType.F16, [{"batch": 1}, {"batch": 8}])
    model_src = (built.dir / "build" / "model.cu").read_text()
    for text in ("#include <evil>", "system(", "#define int"):
        assert text not in model_src, f"{text!r} reached the generated C++"


def test_symbolic_dim_out_of_range_names_the_input(tmp_path):
    b = GraphBuilder("ranged")
    x = b.input("tokens", (IntVar("batch", 2, 9), 4), DType.F32)
    graph = b.build(b.op("relu", [x]))
    built = lb.build_local(graph, TARGET, tmp_path / "a", SIMT)
    model = Model(built.dir)
    for n in (1, 10):
        with pytest.raises(RunError, match=r"'tokens'.*batch.*\[2, 9\]"):
            model.run(lb.feeds_for(graph, sizes={"batch": n}))
    lb.check_model(model, graph, tol(DType.F32), [{"batch": 2}, {"batch": 9}])
    # The container refuses before any launch (so null pointers are never touched).
    with pytest.raises(RunError, match=r"batch = 10 is outside \[2, 9\]"):
        model._call([0], [0], (ctypes.c_int64 * 1)(10), None)
    model.close()


def test_torch_tensors_match_the_numpy_path(tmp_path):
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("torch has no CUDA device")
    batch = IntVar("batch", 1, 64)
    dtypes = (DType.F32, DType.F16, DType.BF16)
    graph = lb.graph("torch", *[(lambda b, dt=dt: lb.add_mlp(b, dt, batch, p=f"{dt.value}.")) for dt in dtypes])
    built = lb.build_local(graph, TARGET, tmp_path / "a", SIMT)
    model = Model(built.dir)
    tdt = {DType.F32: torch.float32, DType.F16: torch.float16, DType.BF16: torch.bfloat16}
    kinds = {t.name: t.type.dtype for t in graph.inputs}
    out_dtypes = {name: t.dtype for name, t in infer_types(graph).items()}
    for n in (1, 64):
        feeds = lb.feeds_for(graph, seed=n, sizes={"batch": n})
        want = model.run(feeds)
        ref = reference.run(graph, feeds)
        tensors = {k: torch.from_numpy(np.asarray(v)).to(device="cuda", dtype=tdt[kinds[k]]).contiguous()
                   for k, v in feeds.items()}
        stream = torch.cuda.Stream()
        with torch.cuda.stream(stream):  # the model must run on the caller's current stream
            got = model.run(tensors)
        stream.synchronize()
        assert set(got) == set(want)
        for name, t in got.items():
            assert t.is_cuda and t.shape == tuple(want[name].shape)
            have = t.float().cpu().numpy()
            assert np.isfinite(have).all(), name
            # Same kernels on the same bytes: the same bits, whichever way in.
            np.testing.assert_array_equal(have, np.asarray(want[name], dtype=np.float32), err_msg=name)
            assert lb.rel_err(have, ref[name]) < tol(out_dtypes[name]), name
    model.close()


# --- the profiler ----------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
def test_profiler_runs_every_candidate(tmp_path, dtype):
    target = get_target(TARGET)
    backend = get_backend("cuda")
    graph = lb.graph("prof", lambda b: lb.add_linear(b, dtype, "gelu", m=IntVar("batch", 1, 4096), n=768, k=512))
    spec = lower(run_passes(graph)[0], TARGET).calls[0].spec
    assert spec.op == "linear" and spec.attrs.epilogue
    candidates = backend.candidate_configs(spec, target)
    if dtype is not DType.F16:  # CUTLASS candidates are profiled once (f16): each takes ~40 s to build
        candidates = [c for c in candidates if "impl" not in c] or [SIMT["linear"]]
    kernels = [build.render(backend, target, spec, c) for c in candidates]
    with ThreadPoolExecutor(len(kernels)) as pool:  # CUTLASS candidates take ~40 s each to compile
        objects = [obj for obj, _ in pool.map(lambda k: build.compile_kernel(backend, target, k), kernels)]
    work = tmp_path / "prof"
    work.mkdir()
    exe = build.build_profiler(backend, target, spec, kernels, objects, work)
    results = run_all(str(exe), len(candidates), runs=20, timeout_s=120)
    print(f"\nprofiler {dtype.value} linear M={profile_points(spec)[-1]} N=768 K=512 (+bias, gelu)")
    print(f"  {'#':>2}  {'config':<14} {'ok':<5} {'median_ms':>10}  error")
    for cfg, r in zip(candidates, results, strict=True):
        print(f"  {r.index:>2}  {str(cfg):<14.60} {str(r.ok):<5} {r.median_ms:>10.4f}  {r.error}")
    for cfg, r in zip(candidates, results, strict=True):
        assert r.ok and r.median_ms > 0, f"candidate {cfg}: {r}"
