"""fold_batchnorm: batch norm never survives; into the GEMM when it alone reads the GEMM's output."""
from __future__ import annotations

import numpy as np
import pytest

from kiln.builder import GraphBuilder, linear, relu
from kiln.dtypes import DType
from kiln.ops import BatchNormAttrs, Conv2dAttrs
from planner_svc.passes import fold_batchnorm
from tests.passes.helpers import B, assert_same_meaning, const, kernels, kinds

# Folded weights are stored in their own dtype (float32 here), so the match is to float32 rounding.
FOLDED_RTOL = 1e-6
FOLDED_ATOL = 1e-5


def stats(b: GraphBuilder, prefix: str, c: int, dtype: DType = DType.F32):
    rng = np.random.default_rng(7)
    return [b.constant(f"{prefix}.scale", 1 + 0.2 * rng.standard_normal(c), dtype),
            b.constant(f"{prefix}.bias", 0.3 * rng.standard_normal(c), dtype),
            b.constant(f"{prefix}.mean", 0.5 * rng.standard_normal(c), dtype),
            b.constant(f"{prefix}.var", rng.uniform(0.2, 2.0, c), dtype)]


def batchnorm(b: GraphBuilder, x, prefix: str, c: int, eps: float = 1e-3):
    return b.op("batchnorm", [x, *stats(b, prefix, c)], BatchNormAttrs(eps), name=prefix)


def conv_graph(has_bias: bool, second_user: bool = False):
    b = GraphBuilder("conv_bn")
    x = b.input("x", (B, 6, 6, 4))
    ins = [x, const(b, "w", 8, 3, 3, 4, seed=1)] + ([const(b, "cb", 8, seed=2)] if has_bias else [])
    y = b.op("conv2d", ins, Conv2dAttrs(pads=(1, 1, 1, 1), has_bias=has_bias), name="conv")
    out = batchnorm(b, y, "bn", 8)
    return b.build(out, relu(y)) if second_user else b.build(out)


@pytest.mark.parametrize("has_bias", [False, True])
def test_batchnorm_folds_into_the_conv(has_bias):
    before = conv_graph(has_bias)
    after = fold_batchnorm(before)
    assert kinds(after) == ["conv2d"]
    conv = after.ops[0]
    assert conv.name == "conv+bn" and conv.outputs == ("bn.out",) and conv.attrs.has_bias
    assert conv.attrs.pads == (1, 1, 1, 1)
    weights = {c.name: c for c in after.constants}
    assert weights[conv.inputs[1]].type.dtype is DType.F32 and weights[conv.inputs[1]].type.shape == (8, 3, 3, 4)
    assert_same_meaning(before, after, rtol=FOLDED_RTOL, atol=FOLDED_ATOL)


def test_batchnorm_folds_into_a_linear():
    b = GraphBuilder("lin_bn")
    x = b.input("x", (B, 5, 12))
    y = linear(x, const(b, "w", 16, 12, seed=3), const(b, "bias", 16, seed=4), name="fc")
    before = b.build(batchnorm(b, y, "bn", 16))
    after = fold_batchnorm(before)
    assert kinds(after) == ["linear"]
    assert_same_meaning(before, after, rtol=FOLDED_RTOL, atol=FOLDED_ATOL)


def test_conv_read_twice_gets_a_multiply_add_instead():
    before = conv_graph(False, second_user=True)
    after = fold_batchnorm(before)
    assert kinds(after) == ["conv2d", "mul", "add", "relu"]
    assert after.ops[0].name == "conv" and not after.ops[0].attrs.has_bias
    assert_same_meaning(before, after, rtol=FOLDED_RTOL, atol=FOLDED_ATOL)
    assert kernels(before).count("batchnorm") == 0


def test_batchnorm_of_an_input_becomes_one_fused_multiply_add_kernel():
    b = GraphBuilder("bn_in")
    x = b.input("x", (B, 3, 10))
    before = b.build(relu(batchnorm(b, x, "bn", 10)))
    after = fold_batchnorm(before)
    assert kinds(after) == ["mul", "add", "relu"]
    assert_same_meaning(before, after, rtol=FOLDED_RTOL, atol=FOLDED_ATOL)
    assert kernels(before) == ["fused_elementwise"]


def test_runtime_statistics_spell_out_the_formula():
    b = GraphBuilder("bn_dyn")
    x = b.input("x", (B, 10))
    params = [b.input(n, (10,)) for n in ("scale", "bias", "mean")] + [b.input("var", (10,))]
    before = b.build(b.op("batchnorm", [x, *params], BatchNormAttrs(0.5), name="bn"))
    after = fold_batchnorm(before)
    assert "batchnorm" not in kinds(after)
    # var is standard normal here; eps = 0.5 keeps var + eps mostly positive, NaNs must agree too.
    import kiln.reference as ref
    feeds = ref.random_inputs(before, seed=3, sizes={"B": 2})
    feeds["var"] = np.abs(feeds["var"]) + 0.1
    want, got = ref.run(before, feeds), ref.run(after, feeds)
    assert np.allclose(got["bn.out"], want["bn.out"], rtol=1e-7)


def test_folded_weights_keep_float16():
    b = GraphBuilder("conv_bn16")
    x = b.input("x", (B, 5, 5, 4), DType.F16)
    w = b.constant("w", np.random.default_rng(1).standard_normal((6, 1, 1, 4)), DType.F16)
    y = b.op("conv2d", [x, w], Conv2dAttrs(), name="conv")
    st = [b.constant(f"s{i}", v, DType.F16) for i, v in enumerate(
        (np.linspace(0.5, 1.5, 6), np.linspace(-1, 1, 6), np.linspace(0.1, 0.3, 6), np.linspace(0.5, 2, 6)))]
    before = b.build(b.op("batchnorm", [y, *st], BatchNormAttrs(), name="bn"))
    after = fold_batchnorm(before)
    conv = after.ops[0]
    consts = after.constant_map()
    assert [consts[n].type.dtype for n in conv.inputs[1:]] == [DType.F16, DType.F16]
    assert_same_meaning(before, after, rtol=2e-3, atol=2e-3)


def test_nothing_to_fold_is_the_same_graph():
    b = GraphBuilder("plain")
    before = b.build(relu(b.input("x", (B, 4))))
    assert fold_batchnorm(before) is before
