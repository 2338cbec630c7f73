"""align_conv_channels: a 3-channel stem conv gets a zero-padded 8-channel input and filter."""
from __future__ import annotations

import numpy as np

from kiln.builder import GraphBuilder
from kiln.dtypes import DType
from kiln.ops import Conv2dAttrs
from planner_svc.passes.align_channels import align_conv_channels
from tests.passes.helpers import B, assert_same_meaning, kinds


def _stem(channels: int, groups: int = 1, dtype: DType = DType.F16):
    b = GraphBuilder("stem")
    x = b.input("x", (B, 16, 16, channels), dtype)
    w = b.constant("w", 0.1 * np.random.default_rng(1).standard_normal((8, 7, 7, channels // groups)), dtype)
    bias = b.constant("bias", np.random.default_rng(2).standard_normal(8), dtype)
    y = b.op("conv2d", [x, w, bias], Conv2dAttrs(stride=(2, 2), pads=(3, 3, 3, 3), groups=groups, has_bias=True))
    return b.build(y)


def test_thin_conv_input_is_padded_to_eight_channels_without_changing_results():
    before = _stem(3)
    after = align_conv_channels(before)
    assert kinds(after) == ["pad", "conv2d"]
    conv = after.ops[1]
    assert after.constant_map()[conv.inputs[1]].type.shape == (8, 7, 7, 8)
    assert_same_meaning(before, after)


def test_aligned_or_grouped_convs_are_left_alone():
    for graph in (_stem(8), _stem(16), _stem(6, groups=2), _stem(3, dtype=DType.F32)):
        assert align_conv_channels(graph) is graph
