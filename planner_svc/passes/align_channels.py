"""Pad conv input channels to a multiple of 8 (ResNet's 3-channel stem).

Tensor Core loads (TMA on Hopper) need every row of the NHWC input and of the
KRSC filter to start on a 16-byte boundary: 8 fp16 channels. A zero-padded
input channel times a zero filter channel adds nothing, so the result is the
same; the conv moves from the SIMT kernel to the implicit GEMM.
"""
from __future__ import annotations

import numpy as np

from kiln.dtypes import DType, from_storage, storage_dtype, to_storage
from kiln.ir import Constant, Graph, Op, TensorType
from kiln.ops import PadAttrs
from kiln.shapes import infer_types

ALIGN = 8
TENSOR_CORE_DTYPES = (DType.F16, DType.BF16)  # fp32 convs stay on SIMT kernels: padding would only cost


def _padded_weight(c: Constant, channels: int) -> Constant:
    o, kh, kw, cin = c.type.shape
    values = from_storage(np.frombuffer(c.data, dtype=storage_dtype(c.type.dtype)).reshape(o, kh, kw, cin),
                          c.type.dtype)
    padded = np.zeros((o, kh, kw, channels), dtype=np.float64)
    padded[..., :cin] = values
    t = TensorType(c.type.dtype, (o, kh, kw, channels))
    return Constant.from_bytes(f"{c.name}.aligned", t, to_storage(padded, c.type.dtype).tobytes())


def align_conv_channels(graph: Graph) -> Graph:
    types = infer_types(graph)
    consts = graph.constant_map()
    new_consts = list(graph.constants)
    ops: list[Op] = []
    changed = False
    for op in graph.ops:
        cin = types[op.inputs[0]].shape[-1] if op.kind == "conv2d" else None
        w = consts.get(op.inputs[1]) if op.kind == "conv2d" else None
        if (cin is None or cin % ALIGN == 0 or op.attrs.groups != 1 or w is None or w.data is None
                or cin > 4 * ALIGN or w.type.dtype not in TENSOR_CORE_DTYPES):
            ops.append(op)  # only thin half-precision inputs: padding a wide one would add real work
            continue
        channels = -(-cin // ALIGN) * ALIGN
        rank = types[op.inputs[0]].rank
        padded_x = f"{op.outputs[0]}.aligned_input"
        ops.append(Op(f"{op.name}.align", "pad", (op.inputs[0],), (padded_x,),
                      PadAttrs((0, 0) * (rank - 1) + (0, channels - cin))))
        weight = _padded_weight(w, channels)
        new_consts.append(weight)
        ops.append(op.replace(inputs=(padded_x, weight.name) + op.inputs[2:]))
        changed = True
    return graph.replace(ops=tuple(ops), constants=tuple(new_consts)) if changed else graph
