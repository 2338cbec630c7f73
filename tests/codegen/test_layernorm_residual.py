"""layernorm(x + r) as one kernel: cpu kernels run against the float64 reference,
gpu kernels (cuda:sm90, rocm:gfx90a) compiled and linked (no GPU here; tests/gpu runs them)."""
from __future__ import annotations

import re
import shutil

import numpy as np
import pytest

from kiln.builder import GraphBuilder, Value, layer_norm, softmax
from kiln.dtypes import DType
from kiln.ir import Dim, IntVar
from kiln.ops import LayerNormAttrs
from kiln.runtime import Model
from tests.support import local_build as lb

DTYPES = [pytest.param(DType.F32, id="f32"), pytest.param(DType.F16, id="f16")]
BATCH = IntVar("batch", 1, 6)
SIZES = [{"batch": 1}, {"batch": 6}]


def add_residual_norm(b: GraphBuilder, dtype: DType, cols: int, batch: Dim = BATCH, p: str = "",
                      eps: float = 1e-5) -> Value:
    """layernorm(x + r) written as the exporters write it: an add, then the norm (the pass fuses them)."""
    x = b.input(f"{p}x", (batch, 3, cols), dtype)
    r = b.input(f"{p}r", (batch, 3, cols), dtype)
    rng = np.random.default_rng(cols)
    g = b.constant(f"{p}gamma", 1.0 + 0.1 * rng.standard_normal(cols), dtype)
    beta = b.constant(f"{p}beta", 0.1 * rng.standard_normal(cols), dtype)
    return layer_norm(x + r, g, beta, eps=eps)


def residual_specs(built: lb.LocalBuild) -> list:
    return [c.spec for c in built.plan.calls if c.spec.op == "layernorm" and c.spec.attrs.has_residual]


def run_cpu(tmp_path, graph, dtype) -> lb.LocalBuild:
    built = lb.build_local(graph, "cpu", tmp_path / "artifact")
    model = Model(built.dir)
    try:
        lb.check_model(model, graph, lb.TOLERANCE["cpu"][dtype], SIZES)
    finally:
        model.close()
    return built


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cols", [1, 33, 256])
def test_add_then_layernorm_is_one_kernel(tmp_path, dtype, cols):
    graph = lb.graph("ln_res", lambda b: add_residual_norm(b, dtype, cols))
    built = run_cpu(tmp_path, graph, dtype)
    assert built.ops() == ["layernorm"]
    (spec,) = residual_specs(built)
    assert len(spec.inputs) == 4 and spec.inputs[3] == spec.inputs[0]


@pytest.mark.parametrize("dtype", DTYPES)
def test_residual_made_by_a_kernel_and_norm_output_read_again(tmp_path, dtype):
    """The residual comes from the arena (a softmax), and the norm's output feeds another kernel:
    the output argument follows the four inputs."""
    def add(b: GraphBuilder) -> Value:
        x = b.input("x", (BATCH, 40), dtype)
        g = b.constant("g", np.linspace(0.5, 1.5, 40), dtype)
        beta = b.constant("beta", np.linspace(-0.3, 0.3, 40), dtype)
        y = b.op("layernorm", [x, g, beta, softmax(x)], LayerNormAttrs(1e-6, True))
        return softmax(y)
    graph = lb.graph("arena", add)
    built = run_cpu(tmp_path, graph, dtype)
    assert built.ops() == ["softmax", "layernorm", "softmax"]
    assert len(residual_specs(built)) == 1


def test_rank1_residual_norm(tmp_path):
    def add(b: GraphBuilder) -> Value:
        x, r = b.input("x", (45,), DType.F32), b.input("r", (45,), DType.F32)
        return layer_norm(x + r, b.constant("g", np.linspace(0.5, 1.5, 45)), b.constant("beta", np.linspace(-1, 1, 45)))
    built = run_cpu(tmp_path, lb.graph("rank1", add), DType.F32)
    assert len(residual_specs(built)) == 1


# --- gpu: compile and link only ----------------------------------------------------------------
GPU_TARGETS = {"cuda:sm90": ("nvcc", [DType.F32, DType.F16, DType.BF16]), "rocm:gfx90a": ("hipcc", [DType.F32, DType.F16])}


def gpu_graph(dtypes: list[DType]):
    """Per dtype, residual norms of short, BERT-wide and long rows, and a plain layernorm."""
    adds = [(lambda b, dt=dt, c=c: add_residual_norm(b, dt, c, p=f"{dt.value}_{c}."))
            for dt in dtypes for c in (33, 768, 16384)]
    adds += [(lambda b, dt=dt: lb.add_row_op(b, dt, "layernorm", 768, BATCH, p=f"{dt.value}_plain."))
             for dt in dtypes]
    return lb.graph("ln_res_gpu", *adds)


@pytest.mark.parametrize("target_name", list(GPU_TARGETS))
def test_gpu_residual_layernorm_compiles(tmp_path, target_name):
    tool, dtypes = GPU_TARGETS[target_name]
    if shutil.which(tool) is None:
        pytest.skip(f"{tool} is not installed")
    built = lb.build_local(gpu_graph(dtypes), target_name, tmp_path / "a", single_tu=True)
    assert set(built.ops()) == {"layernorm"}
    assert len(residual_specs(built)) == 3 * len(dtypes)
    assert (built.dir / "libmodel.so").stat().st_size > 0
    source = next(iter(built.sources.values())).read_text()
    assert source.count("rr = res + row * C") == 3 * len(dtypes)  # each residual kernel reads r
    # The 768-wide rows: one warp per row.
    assert len(re.findall(r"kiln_launch\(\w+_warp_kernel,", source)) == 2 * len(dtypes)
