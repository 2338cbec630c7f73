"""pointwise_convs_to_linear: 1x1 stride-1 unpadded convs become linears, with their epilogue."""
from __future__ import annotations

import numpy as np

from kiln.builder import GraphBuilder
from kiln.ops import Conv2dAttrs, EwInstr
from planner_svc.passes.pointwise_conv import pointwise_convs_to_linear
from tests.passes.helpers import B, assert_same_meaning, const, kernels, kinds


def _conv(kernel: int = 1, stride: int = 1, pads: int = 0, groups: int = 1, residual: bool = False):
    b = GraphBuilder("pw")
    x = b.input("x", (B, 5, 6, 16))
    w = const(b, "w", 24, kernel, kernel, 16 // groups, seed=1, scale=0.2)
    bias = const(b, "bias", 24, seed=2)
    inputs = [x, w, bias]
    epilogue: tuple[EwInstr, ...] = (EwInstr("relu", (0,)),)
    if residual:
        inputs.append(b.input("r", (B, 5, 6, 24)))
        epilogue = (EwInstr("add", (0, 1)), EwInstr("relu", (2,)))
    attrs = Conv2dAttrs(stride=(stride, stride), pads=(pads,) * 4, groups=groups, has_bias=True, epilogue=epilogue)
    return b.build(b.op("conv2d", inputs, attrs))


def test_pointwise_conv_becomes_a_linear_with_the_same_epilogue():
    for residual in (False, True):
        before = _conv(residual=residual)
        after = pointwise_convs_to_linear(before)
        assert kinds(after) == ["linear"]
        lin = after.ops[0]
        assert after.constant_map()[lin.inputs[1]].type.shape == (24, 16)
        assert lin.attrs.has_bias and lin.attrs.epilogue == before.ops[0].attrs.epilogue
        assert_same_meaning(before, after)


def test_other_convs_are_left_alone():
    for graph in (_conv(kernel=3, pads=1), _conv(stride=2), _conv(pads=1), _conv(groups=2)):
        assert pointwise_convs_to_linear(graph) is graph


def test_the_pipeline_runs_a_fused_pointwise_conv_as_one_gemm():
    b = GraphBuilder("block")
    x = b.input("x", (B, 4, 4, 8))
    w = const(b, "w", 8, 1, 1, 8, seed=3, scale=0.3)
    y = b.op("conv2d", [x, w], Conv2dAttrs())
    y = b.op("relu", [b.op("add", [y, x])])
    assert kernels(b.build(y)) == ["linear"]


def test_weight_bytes_are_shared_not_copied():
    before = _conv()
    after = pointwise_convs_to_linear(before)
    w4, w2 = before.constant_map()["w"], after.constant_map()[after.ops[0].inputs[1]]
    assert w4.data == w2.data
    assert np.frombuffer(w2.data, dtype=np.float32).size == 24 * 16
