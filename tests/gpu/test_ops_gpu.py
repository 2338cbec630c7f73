"""The op cases of tests/support/op_cases.py run as cuda:sm90 kernels on a real
GPU, against the float64 reference, in f32, f16 and bf16.

Cases are grouped by op family and each group is merged into one graph (one
artifact, kernels compiled in parallel) instead of one nvcc run per case; a
failure names the output, whose prefix names the case. Ops that only move or
convert values (layout, embedding, cast) must match the reference rounded to
the output dtype bit for bit; the others within lb.TOLERANCE["cuda"]. Outputs
are poisoned with NaN before each run (the runtime does it), so an element a
kernel never writes fails. Skipped unless `nvidia-smi -L` answers.

Run on a GPU box: pytest -q tests/gpu/test_ops_gpu.py
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from codegen_worker.backends.base import GPU_BLOCK_OPS
from kiln import reference
from kiln.builder import GraphBuilder, matmul
from kiln.dtypes import DType, bf16_bits_from_f32, f32_from_bf16_bits
from kiln.ir import Graph, IntVar
from kiln.ops import Conv2dAttrs, EwInstr, PatchLinearAttrs, PermuteAttrs, ReduceAttrs
from kiln.runtime import Model
from kiln.shapes import infer_types
from tests.codegen.test_gpu_ops_compile import merge_graphs
from tests.support import local_build as lb
from tests.support import op_cases

pytestmark = pytest.mark.gpu

TARGET = "cuda:sm90"
DTYPES = [pytest.param(DType.F32, id="f32"), pytest.param(DType.F16, id="f16"), pytest.param(DType.BF16, id="bf16")]
# The portable conv kernel is under test here; the CUTLASS conv sm90 picks by default has its own tests.
SIMT = {"conv2d": {"block": 256}}
GROUPS = {
    "conv": ("conv_",),
    "im2col": ("im2col_",),
    "patch_linear": ("patch_linear_",),
    "pool": ("pool_",),
    "reduce": ("reduce_", "reshape_feeds_kernel"),
    "layout": ("permute_", "slice_", "concat_", "reshape_output"),
    "embedding": ("embedding_",),
    "cast": ("cast_",),
    "matmul": ("matmul_",),
    "attention": ("attention_",),
    "elementwise": ("elementwise_",),
}
EXACT = {"layout", "embedding", "cast", "im2col"}


def group_cases(group: str) -> list[tuple[str, op_cases.CaseFn]]:
    cases = [(name, fn) for name, fn in op_cases.CASES if name.startswith(GROUPS[group])]
    assert cases, f"no op case in group {group}"
    return cases


def rounded(values: np.ndarray, dtype: DType) -> np.ndarray:
    """float64 values as a kernel that computes in float32 stores them in `dtype`."""
    v32 = np.asarray(values, dtype=np.float64).astype(np.float32)
    if dtype is DType.F16:
        return v32.astype(np.float16).astype(np.float64)
    if dtype is DType.BF16:
        return f32_from_bf16_bits(bf16_bits_from_f32(v32)).reshape(v32.shape).astype(np.float64)
    return v32.astype(np.float64)


def feeds(graph: Graph, seed: int, sizes: dict[str, int] | None) -> dict[str, np.ndarray]:
    """op_cases' valid inputs, bf16 ones rounded to bf16 so the reference sees what the kernel reads."""
    out = op_cases.case_feeds(graph, seed=seed, sizes=sizes)
    for t in graph.inputs:
        if t.type.dtype is DType.BF16:
            out[t.name] = rounded(out[t.name], DType.BF16).astype(np.float32)
    return out


def run_and_compare(model: Model, graph: Graph, exact: bool, tol: float, seed: int = 0) -> None:
    out_types = infer_types(graph)
    for n, sizes in enumerate(op_cases.case_sizes(graph)):
        fed = feeds(graph, seed + n, sizes)
        got = model.run(fed)
        ref = reference.run(graph, fed)
        assert set(got) == set(ref)
        for name, want in ref.items():
            have = np.asarray(got[name], dtype=np.float64)
            if exact:
                expect = rounded(want, out_types[name].dtype)
                np.testing.assert_array_equal(have, expect, err_msg=f"{name} at sizes {sizes}")
                continue
            bad = ~np.isfinite(have)
            assert not bad.any(), f"{name} at sizes {sizes}: {int(bad.sum())} of {have.size} elements are not finite"
            err = lb.rel_err(have, want)
            assert err < tol, f"{name} at sizes {sizes}: rel err {err:.3g} >= {tol:g}"


def build_and_check(tmp_path, graph: Graph, dtype: DType, exact: bool, configs: dict | None = None) -> lb.LocalBuild:
    built = lb.build_local(graph, TARGET, tmp_path / "artifact", SIMT | (configs or {}))
    model = Model(built.dir)
    try:
        run_and_compare(model, graph, exact, lb.TOLERANCE["cuda"][dtype])
    finally:
        model.close()
    return built


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("group", list(GROUPS))
def test_op_cases(tmp_path, group, dtype):
    cases = group_cases(group)
    graph = merge_graphs(f"ops_{group}", [(name, fn(dtype)) for name, fn in cases])
    built = build_and_check(tmp_path, graph, dtype, group in EXACT)
    assert len({c.source_ops[0].split(".")[0] for c in built.plan.calls}) == len(cases), "a case made no kernel"


@pytest.mark.parametrize("dtype", [pytest.param(DType.F32, id="f32"), pytest.param(DType.F16, id="f16")])
def test_embedding_out_of_range_index_gives_a_nan_row(tmp_path, dtype):
    """An index outside [0, V) is never read through: its output row is NaN, every other row exact."""
    graph = op_cases.embedding_int64(dtype)
    built = lb.build_local(graph, TARGET, tmp_path / "artifact")
    model = Model(built.dir)
    try:
        (out_name,) = graph.outputs
        good = model.run(op_cases.case_feeds(graph))[out_name]
        for index in (-1, 50, 2**40):
            bad_feeds = op_cases.bad_index_feeds(graph, index)
            got = np.asarray(model.run(bad_feeds)[out_name], dtype=np.float64)
            row = bad_feeds[graph.inputs[0].name].size // 2  # where bad_index_feeds puts it
            flat = got.reshape(-1, got.shape[-1])
            assert np.isnan(flat[row]).all(), f"index {index}: row {row} is {flat[row]}"
            keep = np.arange(flat.shape[0]) != row
            np.testing.assert_array_equal(flat[keep], np.asarray(good, np.float64).reshape(flat.shape)[keep])
    finally:
        model.close()


# --- kernel paths the small cases do not reach -------------------------------------
def _reduce(b: GraphBuilder, kind: str, x_shape: tuple, axes: tuple[int, ...], dtype: DType, p: str):
    return b.op(kind, [b.input(f"{p}x", x_shape, dtype)], ReduceAttrs(axes=axes))


def _paths(dtype: DType) -> list[Callable[[GraphBuilder], object]]:
    batch = IntVar("batch", 1, 3)
    rng = np.random.default_rng(11)

    def conv_wide(b: GraphBuilder):
        """40 input channels (a CG loop past its unroll), 3 x 3 stride 2, bias + residual + relu."""
        x = b.input("convw.x", (batch, 11, 9, 40), dtype)
        w = b.constant("convw.w", rng.uniform(-1, 1, (36, 3, 3, 40)) / np.sqrt(360), dtype)
        bias = b.constant("convw.b", rng.uniform(-1, 1, 36), dtype)
        r = b.input("convw.r", (batch, 6, 5, 36), dtype)
        attrs = Conv2dAttrs(stride=(2, 2), pads=(1, 1, 1, 1), has_bias=True,
                            epilogue=(EwInstr("add", (0, 1)), EwInstr("relu", (2,))))
        return b.op("conv2d", [x, w, bias, r], attrs)

    return [
        # INNER == 1 rows past 4096: one block per output
        lambda b: _reduce(b, "reduce_sum", (batch, 5000), (1,), dtype, "rsum_long."),
        lambda b: _reduce(b, "reduce_max", (3, 4500), (1,), dtype, "rmax_long."),
        # INNER > 32 and RED longer than a block's 32-lane rows: the strided kernel's column tiles and row split
        lambda b: _reduce(b, "reduce_mean", (batch, 70, 45), (1,), dtype, "rmean_strided."),
        lambda b: _reduce(b, "reduce_max", (2, 300, 33), (1,), dtype, "rmax_strided."),
        # several register tiles in M, N and K, a symbolic M
        lambda b: matmul(b.input("mm.a", (2, IntVar("rows", 1, 130), 70), dtype), b.input("mm.b", (2, 70, 150), dtype)),
        # a permute whose last axis moves (strided reads)
        lambda b: b.op("permute", [b.input("perm.x", (batch, 33, 70), dtype)], PermuteAttrs((0, 2, 1))),
        conv_wide,
    ]


@pytest.mark.parametrize("block", [64, 256, 1024])
@pytest.mark.parametrize("dtype", DTYPES)
def test_kernel_paths_at_each_block_size(tmp_path, dtype, block):
    """Long and strided reductions, multi-tile matmuls, a wide conv: at 64 (two AMD
    wavefronts, the fewest a reduction's shared slots assume), 256 and 1024 threads."""
    graph = lb.graph(f"paths{block}", *_paths(dtype))
    configs = {op: {"block": block} for op in GPU_BLOCK_OPS}
    built = lb.build_local(graph, TARGET, tmp_path / "artifact", configs)
    assert all(cfg == {"block": block} for cfg in built.configs.values())
    model = Model(built.dir)
    try:
        lb.check_model(model, graph, lb.TOLERANCE["cuda"][dtype], [{"batch": 1, "rows": 1}, {"batch": 3, "rows": 130}])
    finally:
        model.close()


PATCH_CONFIGS = [{"block_m": 32}, {"block_m": 64}, {"block_m": 128}, {"block_m": 128, "row_tiles": True}]


@pytest.mark.parametrize("config", PATCH_CONFIGS, ids=lambda c: "-".join(f"{k}{v}" for k, v in c.items()))
@pytest.mark.parametrize("dtype", [pytest.param(DType.F16, id="f16"), pytest.param(DType.BF16, id="bf16")])
def test_patch_linear_stem_at_each_config(tmp_path, dtype, config):
    """ResNet-50's stem at full size through the tensor-core path, in every config: batch 8 is more pixel tiles
    than the GPU holds blocks, so blocks loop over tiles; batch 1 leaves most of the GPU's blocks unused."""
    graph = op_cases._patch_linear(
        dtype, "stem224", (IntVar("batch", 1, 8), 3, 224, 224), 64, 152,
        PatchLinearAttrs(kernel=(7, 7), stride=(2, 2), pads=(3, 3, 3, 3), channels_first=True, has_bias=True,
                         epilogue=(EwInstr("relu", (0,)),)))
    built = lb.build_local(graph, TARGET, tmp_path / "artifact", {"patch_linear": config})
    assert list(built.configs.values()) == [config]
    assert "mma.sync" in next(iter(built.sources.values())).read_text()
    model = Model(built.dir)
    try:
        lb.check_model(model, graph, lb.TOLERANCE["cuda"][dtype], [{"batch": 1}, {"batch": 8}],
                       feeds_fn=feeds)
    finally:
        model.close()


@pytest.mark.parametrize("block_m", [32, 128])
@pytest.mark.parametrize("dtype", [pytest.param(DType.F16, id="f16"), pytest.param(DType.BF16, id="bf16")])
def test_patch_linear_cases_in_row_tiles(tmp_path, dtype, block_m):
    """Every patch_linear case (NHWC and NCHW inputs, padding rows and columns, an epilogue input) with a tile an
    output row: the window staged in shared memory, rows shorter than the tile."""
    graph = merge_graphs("ops_patch_rows", [(name, fn(dtype)) for name, fn in group_cases("patch_linear")])
    build_and_check(tmp_path, graph, dtype, False, {"patch_linear": {"block_m": block_m, "row_tiles": True}})
