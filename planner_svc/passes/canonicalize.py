"""GEMMs into the one form the later passes match: linear(x, w[N, K], bias[N]).

ONNX exports a linear layer as MatMul(x, W[K, N]) + Add(b) and torch.export as
a matmul by a transposed weight; both become one linear with has_bias, so a
bias costs nothing and QKV fusion can concatenate it.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from kiln.ir import Constant, Graph, Op, TensorType
from kiln.ops import LinearAttrs
from kiln.shapes import infer_types
from planner_svc.passes.rewrite import Names, constant_array, make_constant

GEMMS = ("linear", "conv2d")


def matmul_to_linear(graph: Graph) -> Graph:
    """matmul(x, W) with W a rank-2 constant [K, N] -> linear(x, W^T)."""
    cmap = graph.constant_map()
    names = Names(graph)
    transposed: dict[str, Constant] = {}
    ops: list[Op] = []
    for op in graph.ops:
        w = op.inputs[1] if op.kind == "matmul" else ""
        c = cmap.get(w)
        if c is None or c.type.rank != 2 or c.data is None:
            ops.append(op)
            continue
        if w not in transposed:
            transposed[w] = make_constant(names.fresh(f"{w}.T"), c.type.dtype, constant_array(c).T)
        ops.append(Op(op.name, "linear", (op.inputs[0], transposed[w].name), op.outputs, LinearAttrs()))
    if not transposed:
        return graph
    return graph.replace(ops=tuple(ops), constants=graph.constants + tuple(transposed.values()))


def _as_bias(t: TensorType, n: int) -> bool:
    """A constant that adds the same value to every row: [N] or [1], with any leading 1s."""
    dims = list(t.shape)
    while dims and dims[0] == 1 and len(dims) > 1:
        dims.pop(0)
    return dims in ([n], [1]) or (not dims)


def absorb_bias_adds(graph: Graph) -> Graph:
    """gemm -> add(per-channel constant) becomes the gemm's bias. A gemm that has a bias keeps
    the add for its epilogue: summing two biases would round the sum to the weight's dtype."""
    types = infer_types(graph)
    cmap = graph.constant_map()
    users = graph.consumers()
    outputs = set(graph.outputs)
    names = Names(graph)
    replaced: dict[str, Op] = {}
    absorbed: set[str] = set()
    new_constants: list[Constant] = []
    for op in graph.ops:
        out = op.outputs[0]
        consumers = users.get(out, [])
        if (op.kind not in GEMMS or op.attrs.epilogue or op.attrs.has_bias or out in outputs
                or len(consumers) != 1):
            continue
        add = consumers[0]
        if add.kind != "add" or add.inputs.count(out) != 1:
            continue
        c = add.inputs[1] if add.inputs[0] == out else add.inputs[0]
        n = types[out].shape[-1]
        if c not in cmap or cmap[c].data is None or not _as_bias(cmap[c].type, n) or types[add.outputs[0]] != types[out]:
            continue
        bias = c
        if cmap[c].type.shape != (n,):
            values = np.broadcast_to(constant_array(cmap[c]).reshape(-1), (n,))
            made = make_constant(names.fresh(f"{op.name}.bias"), cmap[c].type.dtype, values)
            new_constants.append(made)
            bias = made.name
        attrs = dataclasses.replace(op.attrs, has_bias=True)
        replaced[op.name] = Op(f"{op.name}+{add.name}", op.kind, op.inputs[:2] + (bias,), add.outputs, attrs)
        absorbed.add(add.name)
    if not replaced:
        return graph
    ops = tuple(replaced.get(o.name, o) for o in graph.ops if o.name not in absorbed)
    return graph.replace(ops=ops, constants=graph.constants + tuple(new_constants))
