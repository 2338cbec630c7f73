"""A conv over few input channels runs as im2col + GEMM.

An implicit-GEMM conv reduces over channels one filter tap at a time, so with
C = 3 (padded to 8) each 64-wide K tile is mostly zeros: ResNet-50's 7x7 stem
ran at 3% of the Tensor Core rate on an H200, and CUTLASS's TMA im2col could
not run ViT's 16x16 patch filter at all. Gathering every tap's channels into
one row (K = KH*KW*C, zero-padded to a multiple of 8) makes the conv a dense
GEMM with a filter reshaped to [O, K]; the bias and epilogue carry over.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from kiln.ir import Graph, Op
from kiln.ops import Im2colAttrs, LinearAttrs, PatchLinearAttrs
from kiln.shapes import infer_types
from planner_svc.passes.rewrite import Names, constant_array, make_constant

THIN = 8      # fewer input channels than one 16-byte half-precision load: the channel-aligning pad's case
ALIGN = 8     # GEMM rows start 16-byte aligned in half precision


def thin_convs_to_gemm(graph: Graph) -> Graph:
    types = infer_types(graph)
    consts = graph.constant_map()
    names = Names(graph)
    new_consts = list(graph.constants)
    ops: list[Op] = []
    changed = False
    for op in graph.ops:
        w = consts.get(op.inputs[1]) if op.kind == "conv2d" else None
        if w is None or w.data is None or op.attrs.groups != 1 or types[op.inputs[0]].shape[-1] >= THIN \
                or w.type.shape[1:3] == (1, 1):
            ops.append(op)
            continue
        o, kh, kw, c = w.type.shape
        k = kh * kw * c
        cols = -(-k // ALIGN) * ALIGN
        matrix = np.zeros((o, cols))
        matrix[:, :k] = constant_array(w).reshape(o, k)  # [O, KH, KW, C] row-major is the im2col column order
        weight = make_constant(names.fresh(f"{w.name}.im2col"), w.type.dtype, matrix)
        new_consts.append(weight)
        a = op.attrs
        patches = names.fresh(f"{op.outputs[0]}.patches")
        ops.append(Op(names.fresh(f"{op.name}.im2col"), "im2col", (op.inputs[0],), (patches,),
                      Im2colAttrs(kernel=(kh, kw), stride=a.stride, pads=a.pads, dilation=a.dilation, cols=cols)))
        ops.append(Op(op.name, "linear", (patches, weight.name) + op.inputs[2:], op.outputs,
                      LinearAttrs(has_bias=a.has_bias, epilogue=a.epilogue)))
        changed = True
    return graph.replace(ops=tuple(ops), constants=tuple(new_consts)) if changed else graph


TO_CHANNELS_LAST = (0, 2, 3, 1)


def gather_im2col_from_nchw(graph: Graph) -> Graph:
    """An im2col whose input is the NCHW -> NHWC permute at a model's edge, read by nothing
    else, gathers from the NCHW tensor itself: the permute's whole pass over memory goes
    (0.32 ms of ResNet-50's 10.4 at batch 256 on an H200). The permute is left for DCE."""
    producers, readers = graph.producers(), graph.consumers()
    ops: list[Op] = []
    changed = False
    for op in graph.ops:
        src = producers.get(op.inputs[0]) if op.kind == "im2col" and not op.attrs.channels_first else None
        if (src is None or src.kind != "permute" or src.attrs.perm != TO_CHANNELS_LAST
                or len(readers[op.inputs[0]]) != 1 or op.inputs[0] in graph.outputs):
            ops.append(op)
            continue
        ops.append(op.replace(inputs=(src.inputs[0],), attrs=dataclasses.replace(op.attrs, channels_first=True)))
        changed = True
    return graph.replace(ops=tuple(ops)) if changed else graph


# Up to this many output channels, one block of the GPU kernel computes every channel of its pixels, so each patch is
# gathered once; past it (ViT's 768-channel patch embedding) the patches would be gathered once per channel tile and a
# dense GEMM over stored patches wins.
PATCH_LINEAR_MAX_OUT = 128


def fuse_patch_linear(graph: Graph) -> Graph:
    """An im2col read only by a linear over few output channels is one patch_linear: the patches (ResNet-50's stem:
    KH*KW*C = 147 of 152 columns a pixel, gathered from 3 channels) are gathered where they are multiplied and never
    stored, which at batch 256 was 976 MB written and read back."""
    readers = graph.consumers()
    consts = graph.constant_map()
    fused: dict[str, Op] = {}  # linear name -> its patch_linear
    gone: set[str] = set()
    for op in graph.ops:
        if op.kind != "im2col" or op.outputs[0] in graph.outputs or len(readers[op.outputs[0]]) != 1:
            continue
        lin = readers[op.outputs[0]][0]
        w = consts.get(lin.inputs[1]) if lin.kind == "linear" else None
        if w is None or lin.inputs[0] != op.outputs[0] or op.outputs[0] in lin.inputs[1:] \
                or w.type.shape[0] > PATCH_LINEAR_MAX_OUT:
            continue
        a, la = op.attrs, lin.attrs
        attrs = PatchLinearAttrs(kernel=a.kernel, stride=a.stride, pads=a.pads, dilation=a.dilation,
                                 channels_first=a.channels_first, has_bias=la.has_bias, epilogue=la.epilogue)
        fused[lin.name] = Op(f"{op.name}+{lin.name}", "patch_linear", (op.inputs[0],) + lin.inputs[1:],
                             lin.outputs, attrs)
        gone.add(op.name)
    if not fused:
        return graph
    ops = tuple(fused.get(op.name, op) for op in graph.ops if op.name not in gone)
    return graph.replace(ops=ops)
