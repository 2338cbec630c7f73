"""Small graphs, one op kind each across its variants, shared by the cpu and gpu tests.

Each case is a function `dtype -> Graph` (dtype: the float type of the
activations); `CASES` lists them by name. `case_feeds` draws inputs that are
valid for a graph (indices in range, masks finite and never all zero) and
`case_sizes` the symbolic sizes to run at, so each test only picks tolerances.
Imports only kiln and NumPy: the gpu box runs these as they are.
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np

from kiln.builder import GraphBuilder, Value, sigmoid, symbol, tanh
from kiln.dtypes import DType, storage_dtype
from kiln.ir import Graph, IntVar
from kiln.ops import (
    AttentionAttrs,
    CastAttrs,
    ConcatAttrs,
    Conv2dAttrs,
    EwInstr,
    Im2colAttrs,
    PatchLinearAttrs,
    PermuteAttrs,
    Pool2dAttrs,
    ReduceAttrs,
    ReshapeAttrs,
    SliceAttrs,
)
from kiln.ops.conv import out_size

CaseFn = Callable[[DType], Graph]

# A masked score: large enough that exp() of it vanishes, finite in fp16.
MASKED = -1.0e4


def batch(max_size: int = 3) -> IntVar:
    return symbol("batch", 1, max_size)


def _const(b: GraphBuilder, name: str, shape: tuple[int, ...], dtype: DType, seed: int, scale: float = 1.0) -> Value:
    values = np.random.default_rng(seed).uniform(-1, 1, shape) * scale
    return b.constant(name, values, dtype)


# --- conv2d ------------------------------------------------------------------
def _conv(dtype: DType, name: str, x_shape: tuple, o: int, k: tuple[int, int], *, stride=(1, 1), pads=(0, 0, 0, 0),
          dilation=(1, 1), groups: int = 1, bias: bool = False, epilogue: tuple[EwInstr, ...] = (),
          extras: tuple[str, ...] = ()) -> Graph:
    """extras: 'full' (an output-shaped input) or 'channel' (an [O] input), in epilogue order."""
    b = GraphBuilder(name)
    x = b.input("x", x_shape, dtype)
    c = x_shape[3]
    fan_in = k[0] * k[1] * (c // groups)
    w = _const(b, "w", (o, k[0], k[1], c // groups), dtype, seed=1, scale=1 / np.sqrt(fan_in))
    ins = [x, w] + ([_const(b, "bias", (o,), dtype, seed=2)] if bias else [])
    attrs = Conv2dAttrs(stride=tuple(stride), pads=tuple(pads), dilation=tuple(dilation), groups=groups,
                        has_bias=bias, epilogue=epilogue)
    oh = out_size(x_shape[1], k[0], stride[0], pads[0], pads[2], dilation[0])
    ow = out_size(x_shape[2], k[1], stride[1], pads[1], pads[3], dilation[1])
    for i, kind in enumerate(extras):
        ins.append(b.input(f"e{i}", (x_shape[0], oh, ow, o) if kind == "full" else (o,), dtype))
    return b.build(b.op("conv2d", ins, attrs))


def conv_3x3_pad1(dtype: DType) -> Graph:
    return _conv(dtype, "conv_3x3_pad1", (batch(), 10, 9, 8), 12, (3, 3), pads=(1, 1, 1, 1))


def conv_7x7_stride2_pad3(dtype: DType) -> Graph:
    return _conv(dtype, "conv_7x7_s2", (1, 17, 16, 3), 8, (7, 7), stride=(2, 2), pads=(3, 3, 3, 3))


def conv_1x1(dtype: DType) -> Graph:
    return _conv(dtype, "conv_1x1", (batch(), 6, 5, 16), 24, (1, 1))


def conv_dilation2(dtype: DType) -> Graph:
    return _conv(dtype, "conv_dil2", (1, 11, 12, 6), 5, (3, 3), pads=(2, 2, 2, 2), dilation=(2, 2))


def conv_groups2(dtype: DType) -> Graph:
    return _conv(dtype, "conv_groups2", (1, 8, 8, 8), 6, (3, 3), pads=(1, 1, 1, 1), groups=2)


def conv_depthwise(dtype: DType) -> Graph:
    return _conv(dtype, "conv_depthwise", (batch(), 9, 9, 6), 6, (3, 3), stride=(2, 2), pads=(1, 1, 1, 1), groups=6)


def conv_asymmetric(dtype: DType) -> Graph:
    """Pads (top 0, left 1, bottom 2, right 1), a 3x2 window, strides (2, 1)."""
    return _conv(dtype, "conv_asym", (1, 7, 8, 5), 4, (3, 2), stride=(2, 1), pads=(0, 1, 2, 1), bias=True)


def conv_bias(dtype: DType) -> Graph:
    return _conv(dtype, "conv_bias", (batch(), 6, 7, 8), 16, (3, 3), pads=(1, 1, 1, 1), bias=True)


def conv_bias_relu(dtype: DType) -> Graph:
    return _conv(dtype, "conv_bias_relu", (2, 6, 7, 8), 16, (3, 3), pads=(1, 1, 1, 1), bias=True,
                 epilogue=(EwInstr("relu", (0,)),))


def conv_bias_residual_relu(dtype: DType) -> Graph:
    return _conv(dtype, "conv_residual", (batch(), 6, 7, 8), 8, (3, 3), pads=(1, 1, 1, 1), bias=True,
                 epilogue=(EwInstr("add", (0, 1)), EwInstr("relu", (2,))), extras=("full",))


def conv_channel_scale_residual(dtype: DType) -> Graph:
    """relu(acc * s[O] + r): an extra broadcast along the channel dim and a full one."""
    return _conv(dtype, "conv_scale_residual", (2, 5, 6, 4), 10, (3, 3), stride=(2, 2), pads=(1, 1, 1, 1),
                 epilogue=(EwInstr("mul", (0, 1)), EwInstr("add", (3, 2)), EwInstr("relu", (4,))),
                 extras=("channel", "full"))


# --- pool2d ------------------------------------------------------------------
def _pool(dtype: DType, name: str, x_shape: tuple, **attrs) -> Graph:
    b = GraphBuilder(name)
    x = b.input("x", x_shape, dtype)
    return b.build(b.op("pool2d", [x], Pool2dAttrs(**attrs)))


def pool_max_3x3_s2_p1(dtype: DType) -> Graph:
    return _pool(dtype, "maxpool", (batch(), 9, 10, 6), mode="max", kernel=(3, 3), stride=(2, 2), pads=(1, 1, 1, 1))


def pool_max_vector_channels(dtype: DType) -> Graph:
    # 24 channels: the GPU kernel's 16-byte path (8 halves or 4 floats a load), 3 chunks a pixel.
    return _pool(dtype, "maxpool_vec", (batch(), 9, 10, 24), mode="max", kernel=(3, 3), stride=(2, 2),
                 pads=(1, 1, 1, 1))


def pool_avg_vector_channels(dtype: DType) -> Graph:
    return _pool(dtype, "avgpool_vec", (batch(), 8, 9, 16), mode="avg", kernel=(3, 3), stride=(2, 2),
                 pads=(1, 1, 1, 1), count_include_pad=False)


def pool_avg_include_pad(dtype: DType) -> Graph:
    return _pool(dtype, "avgpool_incl", (batch(), 9, 10, 6), mode="avg", kernel=(3, 3), stride=(2, 2),
                 pads=(1, 1, 1, 1), count_include_pad=True)


def pool_avg_exclude_pad(dtype: DType) -> Graph:
    return _pool(dtype, "avgpool_excl", (2, 9, 10, 6), mode="avg", kernel=(3, 3), stride=(2, 2),
                 pads=(1, 1, 1, 1), count_include_pad=False)


def pool_avg_ceil_include_pad(dtype: DType) -> Graph:
    """ceil_mode: the last window runs past input + padding, so its divisor is clipped."""
    return _pool(dtype, "avgpool_ceil_incl", (1, 8, 8, 4), mode="avg", kernel=(3, 3), stride=(2, 2),
                 pads=(1, 1, 1, 1), ceil_mode=True, count_include_pad=True)


def pool_avg_ceil_exclude_pad(dtype: DType) -> Graph:
    return _pool(dtype, "avgpool_ceil_excl", (1, 8, 7, 4), mode="avg", kernel=(3, 3), stride=(2, 2),
                 pads=(1, 0, 1, 0), ceil_mode=True, count_include_pad=False)


def pool_max_ceil(dtype: DType) -> Graph:
    return _pool(dtype, "maxpool_ceil", (1, 7, 7, 3), mode="max", kernel=(2, 2), stride=(2, 2), ceil_mode=True)


def pool_avg_global(dtype: DType) -> Graph:
    return _pool(dtype, "avgpool_global", (batch(), 7, 7, 16), mode="avg", kernel=(7, 7), stride=(1, 1))


# --- reductions --------------------------------------------------------------
def _reduce(dtype: DType, kind: str, x_shape: tuple, axes: tuple[int, ...], keepdims: bool) -> Graph:
    b = GraphBuilder(kind)
    x = b.input("x", x_shape, dtype)
    return b.build(b.op(kind, [x], ReduceAttrs(axes=axes, keepdims=keepdims)))


def reduce_sum_last(dtype: DType) -> Graph:
    return _reduce(dtype, "reduce_sum", (batch(), 5, 37), (2,), False)


def reduce_mean_middle_keepdims(dtype: DType) -> Graph:
    return _reduce(dtype, "reduce_mean", (batch(), 4, 6, 7), (1, 2), True)


def reduce_max_middle(dtype: DType) -> Graph:
    return _reduce(dtype, "reduce_max", (3, 9, 5), (1,), False)


def reduce_max_last_keepdims(dtype: DType) -> Graph:
    return _reduce(dtype, "reduce_max", (batch(), 3, 20), (2,), True)


def reduce_sum_all(dtype: DType) -> Graph:
    """Every axis: a rank-0 output."""
    return _reduce(dtype, "reduce_sum", (6, 7), (0, 1), False)


def reduce_mean_first(dtype: DType) -> Graph:
    return _reduce(dtype, "reduce_mean", (8, 5, 3), (0,), False)


# --- layout ------------------------------------------------------------------
def _unary(dtype: DType, name: str, kind: str, x_shape: tuple, attrs: object) -> Graph:
    b = GraphBuilder(name)
    x = b.input("x", x_shape, dtype)
    return b.build(b.op(kind, [x], attrs))


def permute_0213(dtype: DType) -> Graph:
    return _unary(dtype, "permute_0213", "permute", (batch(), 3, 4, 5), PermuteAttrs((0, 2, 1, 3)))


def permute_0312(dtype: DType) -> Graph:
    return _unary(dtype, "permute_0312", "permute", (batch(), 4, 5, 6), PermuteAttrs((0, 3, 1, 2)))


def permute_201(dtype: DType) -> Graph:
    return _unary(dtype, "permute_201", "permute", (7, 3, 5), PermuteAttrs((2, 0, 1)))


def slice_steps(dtype: DType) -> Graph:
    """A symbolic axis kept whole, a start with step 2, an end short of the dim with step 3."""
    n = batch()
    return _unary(dtype, "slice_steps", "slice", (n, 10, 12),
                  SliceAttrs(starts=(0, 1, 2), ends=(n.max, 9, 11), steps=(1, 2, 3)))


# --- fused elementwise ----------------------------------------------------------
def elementwise_vector_rows(dtype: DType) -> Graph:
    """Rows of 24 (a multiple of 8 halves and of 4 floats): the GPU's 16-byte path,
    with inputs along the row ([B, 5, 24] and [24]), across it ([B, 5, 1]) and a scalar."""
    b = GraphBuilder("ew_rows")
    n = batch()
    x, y = b.input("x", (n, 5, 24), dtype), b.input("y", (n, 5, 24), dtype)
    bias, col, s = b.input("bias", (24,), dtype), b.input("col", (n, 5, 1), dtype), b.input("s", (), dtype)
    return b.build(tanh(x * bias + y) * col - s)


def elementwise_vector_position_add(dtype: DType) -> Graph:
    """BERT's x + position table [1, S, D], and a sigmoid gate: rows of 16."""
    b = GraphBuilder("ew_pos")
    n = batch()
    x = b.input("x", (n, 6, 16), dtype)
    pos = _const(b, "pos", (1, 6, 16), dtype, seed=3)
    return b.build(sigmoid(x + pos) * x)


def slice_static(dtype: DType) -> Graph:
    return _unary(dtype, "slice_static", "slice", (7, 8), SliceAttrs(starts=(2, 1), ends=(7, 8), steps=(2, 3)))


def slice_symbolic_end(dtype: DType) -> Graph:
    # position_ids[:, :seq]: the leading `batch` rows of a static tensor; y binds the symbol.
    b = GraphBuilder("slice_symend")
    n = batch()
    x = b.input("x", (7, 5), dtype)
    y = b.input("y", (n, 2), dtype)
    return b.build(b.op("slice", [x], SliceAttrs(starts=(0, 0), ends=(n, 5), steps=(1, 1))),
                   b.op("permute", [y], PermuteAttrs((1, 0))))


def permute_after_moved_symbol(dtype: DType) -> Graph:
    # mask[:, None, None, :]-style reshape that moves the symbolic dim ([B, 5] -> [1, B, 1, 5]), then a kernel.
    b = GraphBuilder("moved_symbol")
    x = b.input("x", (batch(), 5), dtype)
    r = b.op("reshape", [x], ReshapeAttrs((1, 0, 1, 5), sources=(-1, 0, -1, -1)))
    return b.build(b.op("permute", [r], PermuteAttrs((0, 2, 1, 3))))


def concat_middle(dtype: DType) -> Graph:
    b = GraphBuilder("concat_middle")
    n = batch()
    xs = [b.input(f"x{i}", (n, width, 5), dtype) for i, width in enumerate((2, 3, 1))]
    return b.build(b.op("concat", xs, ConcatAttrs(axis=1)))


def concat_last(dtype: DType) -> Graph:
    b = GraphBuilder("concat_last")
    xs = [b.input(f"x{i}", (4, width), dtype) for i, width in enumerate((3, 5, 2))]
    return b.build(b.op("concat", xs, ConcatAttrs(axis=1)))


def concat_first(dtype: DType) -> Graph:
    b = GraphBuilder("concat_first")
    xs = [b.input(f"x{i}", (rows, 3, 4), dtype) for i, rows in enumerate((2, 1, 3))]
    return b.build(b.op("concat", xs, ConcatAttrs(axis=0)))


def _im2col(dtype: DType, name: str, x_shape: tuple, attrs: Im2colAttrs) -> Graph:
    b = GraphBuilder(name)
    return b.build(b.op("im2col", [b.input("x", x_shape, dtype)], attrs))


def im2col_stem(dtype: DType) -> Graph:
    # ResNet's stem in small: 7x7 taps of 3 channels, stride 2, zero columns 147..151.
    return _im2col(dtype, "im2col_stem", (batch(), 13, 11, 3),
                   Im2colAttrs(kernel=(7, 7), stride=(2, 2), pads=(3, 3, 3, 3), cols=152))


def im2col_patches_dilated(dtype: DType) -> Graph:
    return _im2col(dtype, "im2col_dil", (1, 9, 10, 5),
                   Im2colAttrs(kernel=(3, 2), stride=(1, 2), pads=(2, 0, 1, 1), dilation=(2, 3), cols=32))


def im2col_nchw(dtype: DType) -> Graph:
    # The stem reading a model's NCHW input directly (gather_im2col_from_nchw).
    return _im2col(dtype, "im2col_nchw", (batch(), 3, 13, 11),
                   Im2colAttrs(kernel=(7, 7), stride=(2, 2), pads=(3, 3, 3, 3), cols=152, channels_first=True))


def im2col_odd_columns(dtype: DType) -> Graph:
    # 27 columns (3x3x3, no padding columns): no vector store divides a row, so one element per store.
    return _im2col(dtype, "im2col_odd", (batch(), 6, 7, 3),
                   Im2colAttrs(kernel=(3, 3), stride=(1, 1), pads=(1, 1, 1, 1), cols=27))


# --- patch_linear: im2col and its GEMM as one op (fuse_patch_linear) -----------
def _patch_linear(dtype: DType, name: str, x_shape: tuple, o: int, cols: int, attrs: PatchLinearAttrs,
                  extras: tuple[str, ...] = ()) -> Graph:
    """Weights [o, cols] as the planner makes them: zero in the columns past KH*KW*C.
    extras: 'full' (an output-shaped input) or 'channel' (an [o] input), in epilogue order."""
    b = GraphBuilder(name)
    x = b.input("x", x_shape, dtype)
    c = x_shape[1] if attrs.channels_first else x_shape[3]
    h, w_ = (x_shape[2], x_shape[3]) if attrs.channels_first else (x_shape[1], x_shape[2])
    k = attrs.kernel[0] * attrs.kernel[1] * c
    values = np.zeros((o, cols))
    values[:, :k] = np.random.default_rng(1).uniform(-1, 1, (o, k)) / np.sqrt(k)
    ins = [x, b.constant("w", values, dtype)] + ([_const(b, "bias", (o,), dtype, seed=2)] if attrs.has_bias else [])
    oh = out_size(h, attrs.kernel[0], attrs.stride[0], attrs.pads[0], attrs.pads[2], attrs.dilation[0])
    ow = out_size(w_, attrs.kernel[1], attrs.stride[1], attrs.pads[1], attrs.pads[3], attrs.dilation[1])
    for i, kind in enumerate(extras):
        ins.append(b.input(f"e{i}", (x_shape[0], oh, ow, o) if kind == "full" else (o,), dtype))
    return b.build(b.op("patch_linear", ins, attrs))


def patch_linear_stem(dtype: DType) -> Graph:
    # ResNet's stem in small: 7x7 taps of 3 channels, stride 2, 64 channels out, bias + relu; 42 pixels an image.
    return _patch_linear(dtype, "patch_linear_stem", (batch(), 13, 11, 3), 64, 152,
                         PatchLinearAttrs(kernel=(7, 7), stride=(2, 2), pads=(3, 3, 3, 3), has_bias=True,
                                          epilogue=(EwInstr("relu", (0,)),)))


def patch_linear_nchw_residual(dtype: DType) -> Graph:
    # Gathered from an NCHW input, 32 channels out, bias + residual + relu.
    return _patch_linear(dtype, "patch_linear_nchw", (batch(), 3, 13, 11), 32, 152,
                         PatchLinearAttrs(kernel=(7, 7), stride=(2, 2), pads=(3, 3, 3, 3), channels_first=True,
                                          has_bias=True, epilogue=(EwInstr("add", (0, 1)), EwInstr("relu", (2,)))),
                         extras=("full",))


def patch_linear_wide(dtype: DType) -> Graph:
    # 128 channels out (two warps of 64), 3x3 over 4 channels: 36 of 40 columns, not a multiple of 32 lanes.
    return _patch_linear(dtype, "patch_linear_wide", (batch(), 10, 9, 4), 128, 40,
                         PatchLinearAttrs(kernel=(3, 3), pads=(1, 1, 1, 1), has_bias=True))


def patch_linear_dilated(dtype: DType) -> Graph:
    # 24 channels out (the SIMT path on a GPU), dilated uneven window, a per-channel scale and no bias.
    return _patch_linear(dtype, "patch_linear_dil", (batch(), 9, 10, 5), 24, 32,
                         PatchLinearAttrs(kernel=(3, 2), stride=(1, 2), pads=(2, 0, 1, 1), dilation=(2, 3),
                                          epilogue=(EwInstr("mul", (0, 1)),)), extras=("channel",))


def concat_broadcast(dtype: DType) -> Graph:
    # ViT's class token: one [1, 1, D] row repeated over the batch before the patches.
    b = GraphBuilder("concat_broadcast")
    n = batch()
    token = _const(b, "token", (1, 1, 6), dtype, seed=5)
    xs = [token, b.input("x", (n, 4, 6), dtype), b.input("y", (1, 2, 6), dtype)]
    return b.build(b.op("concat", xs, ConcatAttrs(axis=1)))


def _embedding(dtype: DType, name: str, idx_dtype: DType, idx_shape: tuple, width: int = 16) -> Graph:
    b = GraphBuilder(name)
    table = _const(b, "table", (50, width), dtype, seed=3)
    idx = b.input("idx", idx_shape, idx_dtype)
    return b.build(b.op("embedding", [table, idx]))


def embedding_int32(dtype: DType) -> Graph:
    return _embedding(dtype, "embedding_i32", DType.I32, (batch(), 7))


def embedding_int64(dtype: DType) -> Graph:
    return _embedding(dtype, "embedding_i64", DType.I64, (3, 4))


def embedding_odd_width(dtype: DType) -> Graph:
    # Rows of 6: no 16-byte chunks (the GPU kernel copies element by element).
    return _embedding(dtype, "embedding_w6", DType.I64, (batch(), 5), width=6)


def _cast_graph(name: str, src: DType, dst: DType) -> Graph:
    b = GraphBuilder(name)
    x = b.input("x", (batch(), 5, 6), src)
    return b.build(b.op("cast", [x], CastAttrs(dst.value)))


def cast_from_int64(dtype: DType) -> Graph:
    return _cast_graph("cast_i64", DType.I64, dtype)


def cast_from_int32(dtype: DType) -> Graph:
    return _cast_graph("cast_i32", DType.I32, dtype)


def cast_from_bool(dtype: DType) -> Graph:
    return _cast_graph("cast_bool", DType.BOOL, dtype)


def cast_from_other_float(dtype: DType) -> Graph:
    """float32 -> float16 when dtype is float16, float16 -> float32 when it is float32 (and float32 -> bf16)."""
    return _cast_graph("cast_float", DType.F16 if dtype is DType.F32 else DType.F32, dtype)


# --- reshape: a view, or a copy when it is a graph output ----------------------
def reshape_feeds_kernel(dtype: DType) -> Graph:
    """[B, 4, 6] viewed as [B, 24], then a reduction reads the view (no copy kernel)."""
    b = GraphBuilder("reshape_view")
    x = b.input("x", (batch(), 4, 6), dtype)
    flat = b.op("reshape", [x], ReshapeAttrs((0, 24)))
    return b.build(b.op("reduce_max", [flat], ReduceAttrs(axes=(1,))))


def reshape_output(dtype: DType) -> Graph:
    """A graph output that is a reshape of an activation: lowered to a copy kernel."""
    b = GraphBuilder("reshape_out")
    x = b.input("x", (batch(), 3, 4, 5), dtype)
    p = b.op("permute", [x], PermuteAttrs((0, 2, 1, 3)))
    return b.build(b.op("reshape", [p], ReshapeAttrs((0, 60))))


# --- matmul ------------------------------------------------------------------
def matmul_broadcast_batch(dtype: DType) -> Graph:
    """[2, 1, M, K] @ [3, K, N] -> [2, 3, M, N]."""
    b = GraphBuilder("matmul_bcast")
    a = b.input("a", (2, 1, 5, 7), dtype)
    c = b.input("b", (3, 7, 6), dtype)
    return b.build(b.op("matmul", [a, c]))


def matmul_symbolic_batch(dtype: DType) -> Graph:
    """[B, 3, M, K] @ [B, 3, K, N]: both operands batched the same."""
    b = GraphBuilder("matmul_batched")
    n = batch()
    a = b.input("a", (n, 3, 4, 9), dtype)
    c = b.input("b", (n, 3, 9, 5), dtype)
    return b.build(b.op("matmul", [a, c]))


def matmul_weight_2d(dtype: DType) -> Graph:
    """[B, M, K] @ [K, N] (a constant): the rank-2 operand is shared by every batch."""
    b = GraphBuilder("matmul_2d")
    a = b.input("a", (batch(), 6, 17), dtype)
    w = _const(b, "w", (17, 11), dtype, seed=4, scale=1 / np.sqrt(17))
    return b.build(b.op("matmul", [a, w]))


# --- attention ---------------------------------------------------------------
HEADS, SEQ, HEAD_DIM = 2, 6, 8


def _attention(dtype: DType, name: str, layout: str, *, mask: bool = False, causal: bool = False,
               sq: int = SEQ, sk: int = SEQ, dv: int = HEAD_DIM) -> Graph:
    b = GraphBuilder(name)
    n = batch()
    h, d = HEADS, HEAD_DIM

    def shape(s: int, last: int) -> tuple:
        return (n, h, s, last) if layout == "bhsd" else (n, s, h, last)

    if layout == "bs3hd":
        ins = [b.input("qkv", (n, sq, 3, h, d), dtype)]
    else:
        ins = [b.input("q", shape(sq, d), dtype), b.input("k", shape(sk, d), dtype), b.input("v", shape(sk, dv), dtype)]
    if mask:
        ins.append(b.input("mask", (n, 1, 1, sk), dtype))
    attrs = AttentionAttrs(scale=1 / np.sqrt(d), causal=causal, has_mask=mask, layout=layout)
    return b.build(b.op("attention", ins, attrs))


def _attention_case(layout: str, **kw) -> CaseFn:
    def fn(dtype: DType) -> Graph:
        return _attention(dtype, f"attn_{layout}", layout, **kw)
    return fn


def attention_cross_causal(dtype: DType) -> Graph:
    """SK > SQ with causal: the queries align with the end of the keys; v's head dim differs."""
    return _attention(dtype, "attn_cross", "bhsd", causal=True, mask=True, sq=4, sk=7, dv=5)


def attention_bshd_cross(dtype: DType) -> Graph:
    return _attention(dtype, "attn_bshd_cross", "bshd", sq=3, sk=9, dv=6)


def attention_causal_fully_masked_rows(dtype: DType) -> Graph:
    """SK < SQ with causal: the first SQ - SK queries see no key and must come out as zeros."""
    return _attention(dtype, "attn_empty_rows", "bhsd", causal=True, sq=7, sk=4)


ATTENTION_CASES: list[tuple[str, CaseFn]] = [
    (f"attention_{layout}_{variant}", _attention_case(layout, **kw))
    for layout in ("bhsd", "bshd", "bs3hd")
    for variant, kw in (("plain", {}), ("mask", {"mask": True}), ("causal", {"causal": True}),
                        ("mask_causal", {"mask": True, "causal": True}))
]


CASES: list[tuple[str, CaseFn]] = [
    ("conv_3x3_pad1", conv_3x3_pad1),
    ("conv_7x7_stride2_pad3", conv_7x7_stride2_pad3),
    ("conv_1x1", conv_1x1),
    ("conv_dilation2", conv_dilation2),
    ("conv_groups2", conv_groups2),
    ("conv_depthwise", conv_depthwise),
    ("conv_asymmetric", conv_asymmetric),
    ("conv_bias", conv_bias),
    ("conv_bias_relu", conv_bias_relu),
    ("conv_bias_residual_relu", conv_bias_residual_relu),
    ("conv_channel_scale_residual", conv_channel_scale_residual),
    ("pool_max_3x3_s2_p1", pool_max_3x3_s2_p1),
    ("pool_max_vector_channels", pool_max_vector_channels),
    ("pool_avg_vector_channels", pool_avg_vector_channels),
    ("pool_avg_include_pad", pool_avg_include_pad),
    ("pool_avg_exclude_pad", pool_avg_exclude_pad),
    ("pool_avg_ceil_include_pad", pool_avg_ceil_include_pad),
    ("pool_avg_ceil_exclude_pad", pool_avg_ceil_exclude_pad),
    ("pool_max_ceil", pool_max_ceil),
    ("pool_avg_global", pool_avg_global),
    ("reduce_sum_last", reduce_sum_last),
    ("reduce_mean_middle_keepdims", reduce_mean_middle_keepdims),
    ("reduce_max_middle", reduce_max_middle),
    ("reduce_max_last_keepdims", reduce_max_last_keepdims),
    ("reduce_sum_all", reduce_sum_all),
    ("reduce_mean_first", reduce_mean_first),
    ("permute_0213", permute_0213),
    ("permute_0312", permute_0312),
    ("permute_201", permute_201),
    ("elementwise_vector_rows", elementwise_vector_rows),
    ("elementwise_vector_position_add", elementwise_vector_position_add),
    ("slice_steps", slice_steps),
    ("slice_static", slice_static),
    ("slice_symbolic_end", slice_symbolic_end),
    ("permute_after_moved_symbol", permute_after_moved_symbol),
    ("concat_middle", concat_middle),
    ("concat_last", concat_last),
    ("concat_first", concat_first),
    ("concat_broadcast", concat_broadcast),
    ("im2col_stem", im2col_stem),
    ("im2col_patches_dilated", im2col_patches_dilated),
    ("im2col_odd_columns", im2col_odd_columns),
    ("im2col_nchw", im2col_nchw),
    ("patch_linear_stem", patch_linear_stem),
    ("patch_linear_nchw_residual", patch_linear_nchw_residual),
    ("patch_linear_wide", patch_linear_wide),
    ("patch_linear_dilated", patch_linear_dilated),
    ("embedding_int32", embedding_int32),
    ("embedding_int64", embedding_int64),
    ("embedding_odd_width", embedding_odd_width),
    ("cast_from_int64", cast_from_int64),
    ("cast_from_int32", cast_from_int32),
    ("cast_from_bool", cast_from_bool),
    ("cast_from_other_float", cast_from_other_float),
    ("reshape_feeds_kernel", reshape_feeds_kernel),
    ("reshape_output", reshape_output),
    ("matmul_broadcast_batch", matmul_broadcast_batch),
    ("matmul_symbolic_batch", matmul_symbolic_batch),
    ("matmul_weight_2d", matmul_weight_2d),
    *ATTENTION_CASES,
    ("attention_cross_causal", attention_cross_causal),
    ("attention_bshd_cross", attention_bshd_cross),
    ("attention_causal_fully_masked_rows", attention_causal_fully_masked_rows),
]


# --- inputs ------------------------------------------------------------------
def case_sizes(graph: Graph) -> list[dict[str, int] | None]:
    """Two assignments of the graph's symbols (smallest and largest), or one run when it has none."""
    syms: dict[str, IntVar] = {}
    for t in graph.inputs:
        for d in t.type.symbols():
            syms.setdefault(d.name, d)
    if not syms:
        return [None]
    return [{n: s.min for n, s in syms.items()}, {n: s.max for n, s in syms.items()}]


def _roles(graph: Graph) -> dict[str, tuple[str, int]]:
    """Inputs that need special values: embedding indices (with the table's row
    count) and attention masks."""
    types = {t.name: t.type for t in graph.inputs} | {c.name: c.type for c in graph.constants}
    roles: dict[str, tuple[str, int]] = {}
    for op in graph.ops:
        if op.kind == "embedding":
            roles[op.inputs[1]] = ("index", int(types[op.inputs[0]].shape[0]) if op.inputs[0] in types else 0)
        elif op.kind == "attention" and op.attrs.has_mask:
            roles[op.inputs[-1]] = ("mask", 0)
    return roles


def _mask(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Small noise with ~30% large-negative entries; key 0 stays open so no row is
    fully masked (with causal and SK >= SQ, key 0 is visible to every query)."""
    m = np.where(rng.random(shape) < 0.3, MASKED, 0.1 * rng.standard_normal(shape))
    m[..., 0] = 0.25
    return m


def case_feeds(graph: Graph, seed: int = 0, sizes: dict[str, int] | None = None) -> dict[str, np.ndarray]:
    """Valid inputs, already rounded to each input's storage dtype (bf16 inputs
    stay float32 arrays holding values a bf16 represents up to the runtime's rounding)."""
    rng = np.random.default_rng(seed)
    roles = _roles(graph)
    feeds: dict[str, np.ndarray] = {}
    for t in graph.inputs:
        shape = tuple(d if isinstance(d, int) else (sizes or {}).get(d.name, d.max) for d in t.type.shape)
        role, rows = roles.get(t.name, ("", 0))
        dt = t.type.dtype
        if role == "index":
            v = rng.integers(0, rows, shape)
            v.flat[0] = rows - 1  # the last row too: an off-by-one bound shows
        elif dt is DType.BOOL:
            v = rng.random(shape) < 0.5
            v.flat[0], v.flat[-1] = True, False
        elif dt in (DType.I32, DType.I64):
            # Exact in every float type the cast may produce (fp16 holds integers up to 2048).
            v = rng.integers(-2048, 2049, shape)
            v.flat[0] = -2048
        elif role == "mask":
            v = _mask(rng, shape)
        else:
            v = rng.standard_normal(shape)
            v = np.where(v == 0, 0.5, v)
        store = np.float32 if dt is DType.BF16 else storage_dtype(dt)
        feeds[t.name] = np.asarray(v).astype(store)
    return feeds


def bad_index_feeds(graph: Graph, index: int, sizes: dict[str, int] | None = None) -> dict[str, np.ndarray]:
    """Valid feeds for an embedding graph except one index set to `index`."""
    feeds = case_feeds(graph, sizes=sizes)
    name = next(n for n, (role, _) in _roles(graph).items() if role == "index")
    bad = feeds[name].copy()
    bad.flat[bad.size // 2] = index
    feeds[name] = bad
    return feeds
