"""Conv2d graphs whose every conv is CUTLASS-eligible on sm90 (fp16/bf16, C and O multiples of 8).

Each conv carries its bias and epilogue in its attrs (what the planner's
conv-epilogue fusion produces), so the tests do not depend on that pass.
"""
from __future__ import annotations

import numpy as np

from kiln.builder import GraphBuilder, Value
from kiln.dtypes import DType
from kiln.ir import Graph, IntVar
from kiln.ops import Conv2dAttrs, EwInstr

RELU = (EwInstr("relu", (0,)),)
ADD_RELU = (EwInstr("add", (0, 1)), EwInstr("relu", (2,)))
ADD = (EwInstr("add", (0, 1)),)

# name, (H, W, C), (O, KH, KW), stride, pads, dilation, epilogue kind
CASES = [
    ("3x3_s1", (14, 14, 64), (64, 3, 3), (1, 1), (1, 1, 1, 1), (1, 1), "relu"),
    ("1x1_expand", (14, 14, 64), (256, 1, 1), (1, 1), (0, 0, 0, 0), (1, 1), "bias"),
    ("1x1_s2_residual", (14, 14, 128), (256, 1, 1), (2, 2), (0, 0, 0, 0), (1, 1), "add_relu"),
    ("3x3_s2_odd", (15, 15, 64), (128, 3, 3), (2, 2), (1, 1, 1, 1), (1, 1), "add_relu"),
    ("7x7_s2_stem", (32, 32, 8), (64, 7, 7), (2, 2), (3, 3, 3, 3), (1, 1), "relu"),
    ("3x3_dilated_asym", (12, 13, 32), (40, 3, 3), (1, 1), (2, 1, 2, 3), (2, 2), "none"),
]


def add_conv(b: GraphBuilder, dtype: DType, case: tuple, batch: IntVar, p: str) -> Value:
    name, (h, w, c), (o, kh, kw), stride, pads, dilation, kind = case
    rng = np.random.default_rng(len(p))
    x = b.input(f"{p}x", (batch, h, w, c), dtype)
    bound = 1.0 / np.sqrt(c * kh * kw)
    wt = b.constant(f"{p}w", rng.uniform(-bound, bound, (o, kh, kw, c)), dtype)
    ins = [x, wt]
    has_bias = kind not in ("none", "add")
    if has_bias:
        ins.append(b.constant(f"{p}b", rng.uniform(-0.5, 0.5, o), dtype))
    epilogue: tuple[EwInstr, ...] = {"relu": RELU, "add_relu": ADD_RELU, "add": ADD}.get(kind, ())
    probe = Conv2dAttrs(stride, pads, dilation, 1, has_bias, ())
    if kind in ("add_relu", "add"):
        out_shape = b.op("conv2d", ins, probe).type.shape  # only to learn the output shape
        b.ops.pop()
        ins.append(b.input(f"{p}r", out_shape, dtype))
    return b.op("conv2d", ins, Conv2dAttrs(stride, pads, dilation, 1, has_bias, epilogue), name=f"{p}conv")


# What CUTLASS 2.x's conv serves: one pad for both sides of each dim, and C holding the bias or a residual, not both.
SM80_ELIGIBLE = [c for c in CASES if c[4][0] == c[4][2] and c[4][1] == c[4][3] and c[6] != "add_relu"]
# Those, and a strided conv adding a residual (no bias).
SM80_CASES = SM80_ELIGIBLE + [("3x3_s2_add", (15, 15, 64), (128, 3, 3), (2, 2), (1, 1, 1, 1), (1, 1), "add")]


def conv_graph(dtype: DType, batch_max: int = 8, cases: list[tuple] | None = None) -> Graph:
    b = GraphBuilder(f"convs_{dtype.value}")
    batch = IntVar("batch", 1, batch_max)
    outs = [add_conv(b, dtype, case, batch, f"{case[0]}.") for case in (CASES if cases is None else cases)]
    return b.build(*outs)


# What gpu/conv2d_halo.j2 serves (3x3, stride 1, one pixel of padding, 64 input channels), in each epilogue kind:
# whole 8x8 tiles, partial tiles in either dim, one to three blocks of 64 output channels, and an image of 49 tiles
# so that at batch 16 blocks loop over several tiles (double-buffered windows).
def _halo(name: str, h: int, w: int, o: int, kind: str) -> tuple:
    return (name, (h, w, 64), (o, 3, 3), (1, 1), (1, 1, 1, 1), (1, 1), kind)


HALO_CASES = [
    _halo("halo_relu", 16, 16, 64, "relu"),
    _halo("halo_partial_add_relu", 13, 10, 128, "add_relu"),
    _halo("halo_small_add", 7, 9, 64, "add"),
    _halo("halo_three_blocks", 8, 8, 192, "none"),
    _halo("halo_resnet", 56, 56, 64, "relu"),
]
