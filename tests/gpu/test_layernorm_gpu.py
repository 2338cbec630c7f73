"""cuda:sm90 layernorm with and without a residual, on a real GPU, against the float64 reference.

Row lengths short, odd, BERT-wide and long. Skipped unless `nvidia-smi -L` answers.
"""
from __future__ import annotations

import numpy as np
import pytest

from kiln.builder import GraphBuilder, Value, layer_norm
from kiln.dtypes import DType
from kiln.ir import IntVar
from kiln.runtime import Model
from tests.codegen.test_layernorm_residual import add_residual_norm
from tests.support import local_build as lb

pytestmark = pytest.mark.gpu

TARGET = "cuda:sm90"
DTYPES = [pytest.param(DType.F32, id="f32"), pytest.param(DType.F16, id="f16"), pytest.param(DType.BF16, id="bf16")]
BATCH = IntVar("batch", 1, 6)
# Row lengths from one element to 16384, even and odd, around the 256 threads of a block.
COLS = (1, 7, 768, 1001, 1024, 4099, 12289, 16384)


# The warp-per-row kernel (rows up to 2048 halves / 1024 floats held in registers) is the
# default where it applies; the block-per-row kernel serves the rest and misaligned pointers.
PATHS = [pytest.param(None, id="default"), pytest.param({"layernorm": {"block": 256, "warp_row": False}}, id="block")]


def run_case(tmp_path, graph, dtype, configs=None) -> lb.LocalBuild:
    built = lb.build_local(graph, TARGET, tmp_path / "artifact", configs)
    model = Model(built.dir)
    try:
        lb.check_model(model, graph, lb.TOLERANCE["cuda"][dtype], [{"batch": 1}, {"batch": 6}])
    finally:
        model.close()
    return built


@pytest.mark.parametrize("configs", PATHS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_residual_layernorm_rows(tmp_path, dtype, configs):
    adds = [(lambda b, c=c: add_residual_norm(b, dtype, c, p=f"res{c}.")) for c in COLS]
    built = run_case(tmp_path, lb.graph("ln_res", *adds), dtype, configs)
    specs = [c.spec for c in built.plan.calls]
    assert [s.op for s in specs] == ["layernorm"] * len(COLS)
    assert all(s.attrs.has_residual for s in specs)


@pytest.mark.parametrize("configs", PATHS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_plain_layernorm_rows(tmp_path, dtype, configs):
    adds = [(lambda b, c=c: lb.add_row_op(b, dtype, "layernorm", c, BATCH, p=f"ln{c}.")) for c in COLS]
    built = run_case(tmp_path, lb.graph("ln", *adds), dtype, configs)
    assert built.ops() == ["layernorm"] * len(COLS)
    warp = [c for c in built.plan.calls if "_warp_kernel" in built.sources[c.kernel].read_text()]
    assert len(warp) == (0 if configs else 2)  # rows of 768 and 1024; odd or longer rows never


def test_misaligned_input_takes_the_block_kernel(tmp_path):
    torch = pytest.importorskip("torch")
    graph = lb.graph("ln", lambda b: lb.add_row_op(b, DType.F16, "layernorm", 768, BATCH, p="ln."))
    built = lb.build_local(graph, TARGET, tmp_path / "artifact")
    feeds = lb.feeds_for(graph, sizes={"batch": 3})
    (name,) = feeds
    flat = torch.empty(3 * 3 * 768 + 1, dtype=torch.float16, device="cuda")
    x = flat[1:].view(3, 3, 768)  # 2 bytes past a 16-byte boundary
    x.copy_(torch.from_numpy(feeds[name]))
    assert x.data_ptr() % 16 != 0
    model = Model(built.dir)
    try:
        (got,) = model.run({name: x}).values()
    finally:
        model.close()
    (want,) = lb.reference.run(graph, feeds).values()
    assert lb.rel_err(got.float().cpu().numpy(), want) < lb.TOLERANCE["cuda"][DType.F16]


def test_large_mean_is_not_cancelled(tmp_path):
    """f32 rows of mean ~100 and spread ~1, the residual carrying the mean: the two-pass
    variance keeps the spread. (In f16 the inputs themselves could not hold it.)"""
    def add(b: GraphBuilder) -> Value:
        x, r = b.input("x", (BATCH, 768)), b.input("r", (BATCH, 768))
        return layer_norm(x + r, b.constant("g", np.linspace(0.5, 1.5, 768)),
                          b.constant("beta", np.linspace(-0.2, 0.2, 768)))

    def shifted(graph, seed=0, sizes=None):
        feeds = lb.feeds_for(graph, seed=seed, sizes=sizes)
        return feeds | {"r": (feeds["r"] + 100.0).astype(np.float32)}

    graph = lb.graph("shifted", add)
    built = lb.build_local(graph, TARGET, tmp_path / "artifact")
    assert [c.spec.attrs.has_residual for c in built.plan.calls] == [True]
    model = Model(built.dir)
    try:
        lb.check_model(model, graph, lb.TOLERANCE["cuda"][DType.F32], [{"batch": 1}, {"batch": 6}], feeds_fn=shifted)
    finally:
        model.close()
