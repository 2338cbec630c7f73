"""A 1x1, stride-1, unpadded conv over NHWC is a linear over the channel dim.

x[N, H, W, C] is already the row-major matrix [N*H*W, C] and the KRSC filter
[O, 1, 1, C] is byte for byte the weight [O, C], so the conv becomes a plain
GEMM with the same bias and epilogue (the attrs mean the same for both ops).
Why bother: GEMM kernels get the persistent, tile-scheduled sm90 schedules
that CUTLASS does not offer for implicit-GEMM conv, and two thirds of a
ResNet-50's convs are pointwise.
"""
from __future__ import annotations

from kiln.ir import Constant, Graph, Op, TensorType
from kiln.ops import LinearAttrs


def _is_pointwise(op: Op, weight: Constant | None) -> bool:
    a = op.attrs
    return (op.kind == "conv2d" and weight is not None and weight.data is not None
            and weight.type.rank == 4 and weight.type.shape[1:3] == (1, 1)
            and a.groups == 1 and a.stride == (1, 1) and a.pads == (0, 0, 0, 0))


def pointwise_convs_to_linear(graph: Graph) -> Graph:
    consts = graph.constant_map()
    new_consts: dict[str, Constant] = {}
    ops: list[Op] = []
    changed = False
    for op in graph.ops:
        w = consts.get(op.inputs[1]) if op.kind == "conv2d" else None
        if not _is_pointwise(op, w):
            ops.append(op)
            continue
        assert w is not None and w.data is not None
        o, _, _, c = w.type.shape
        name = f"{w.name}.as_matrix"
        if name not in new_consts and name not in consts:
            new_consts[name] = Constant.from_bytes(name, TensorType(w.type.dtype, (o, c)), w.data)
        attrs = LinearAttrs(has_bias=op.attrs.has_bias, epilogue=op.attrs.epilogue)
        ops.append(Op(op.name, "linear", (op.inputs[0], name) + op.inputs[2:], op.outputs, attrs))
        changed = True
    if not changed:
        return graph
    return graph.replace(ops=tuple(ops), constants=graph.constants + tuple(new_consts.values()))
