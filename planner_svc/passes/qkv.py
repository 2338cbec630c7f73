"""Horizontal fusion: the Q, K and V projections of a self-attention become one GEMM.

Three linears on the same input, each viewed as [B, S, H, D] and read only by
one bshd attention, become one linear with the weights (and biases)
concatenated to [3*H*D, K]; its output viewed as [B, S, 3, H, D] is the packed
input of a bs3hd attention. One GEMM reads x once and fills the tensor cores
with N = 3*H*D instead of three launches of N = H*D.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from kiln.ir import Constant, Graph, Op, TensorType
from kiln.ops import ReshapeAttrs
from kiln.shapes import infer_types
from planner_svc.passes.rewrite import Names, constant_array, make_constant


def _projection(graph: Graph, name: str, users: dict[str, list[Op]], producers: dict[str, Op],
                outputs: set[str]) -> tuple[Op, Op] | None:
    """(reshape, linear) when `name` = reshape(linear(...)) and nothing else reads either."""
    def private(t: str) -> Op | None:
        return None if t in outputs or len(users.get(t, [])) != 1 else producers.get(t)

    view = private(name)
    if view is None or view.kind != "reshape":
        return None
    gemm = private(view.inputs[0])
    if gemm is None or gemm.kind != "linear" or gemm.attrs.epilogue:
        return None
    return view, gemm


def _packed_view(lin_out: TensorType, q: TensorType) -> ReshapeAttrs | None:
    """[B, S, 3*H*D] -> [B, S, 3, H, D], copying B and S (which may be symbolic)."""
    if lin_out.rank != 3 or lin_out.shape[:2] != q.shape[:2]:
        return None
    _, _, h, d = q.shape
    return ReshapeAttrs((0, 0, 3, h, d))


def _concat(cmap: dict[str, Constant], names: list[str], new_name: str) -> Constant | None:
    consts = [cmap.get(n) for n in names]
    if any(c is None or c.data is None for c in consts) or len({c.type.dtype for c in consts}) != 1:
        return None
    return make_constant(new_name, consts[0].type.dtype, np.concatenate([constant_array(c) for c in consts], axis=0))


def fuse_qkv_projections(graph: Graph) -> Graph:
    if not any(op.kind == "attention" for op in graph.ops):
        return graph
    types = infer_types(graph)
    cmap = graph.constant_map()
    users, producers, outputs = graph.consumers(), graph.producers(), set(graph.outputs)
    names = Names(graph)
    position = {o.name: i for i, o in enumerate(graph.ops)}
    before: dict[str, list[Op]] = {}       # op name -> new ops placed just before it
    replace: dict[str, Op] = {}
    removed: set[str] = set()
    constants: list[Constant] = []
    for attn in graph.ops:
        if attn.kind != "attention" or attn.attrs.layout != "bshd" or len(set(attn.inputs[:3])) != 3:
            continue
        found = [_projection(graph, n, users, producers, outputs) for n in attn.inputs[:3]]
        if any(p is None for p in found):
            continue
        views, gemms = [p[0] for p in found], [p[1] for p in found]
        q_type = types[attn.inputs[0]]
        if (len({g.inputs[0] for g in gemms}) != 1 or len({g.attrs.has_bias for g in gemms}) != 1
                or any(types[n] != q_type for n in attn.inputs[:3])
                or len({types[g.outputs[0]] for g in gemms}) != 1):
            continue
        attrs_view = _packed_view(types[gemms[0].outputs[0]], q_type)
        name = "+".join(g.name for g in gemms)
        weight = _concat(cmap, [g.inputs[1] for g in gemms], names.fresh(f"{name}.weight"))
        bias = _concat(cmap, [g.inputs[2] for g in gemms], names.fresh(f"{name}.bias")) if gemms[0].attrs.has_bias else None
        if attrs_view is None or weight is None or (gemms[0].attrs.has_bias and bias is None):
            continue
        constants += [weight] + ([bias] if bias is not None else [])
        packed, packed_view = names.fresh(f"{name}.out"), names.fresh(f"{name}.qkv")
        ins = (gemms[0].inputs[0], weight.name) + ((bias.name,) if bias is not None else ())
        fused = Op(name, "linear", ins, (packed,), dataclasses.replace(gemms[0].attrs))
        view = Op(names.fresh(f"{name}.view"), "reshape", (packed,), (packed_view,), attrs_view)
        first = min(gemms, key=lambda g: position[g.name])
        before[first.name] = [fused, view]
        removed |= {o.name for o in views + gemms}
        attrs = dataclasses.replace(attn.attrs, layout="bs3hd")
        replace[attn.name] = attn.replace(inputs=(packed_view,) + attn.inputs[3:], attrs=attrs)
    if not replace:
        return graph
    ops: list[Op] = []
    for op in graph.ops:
        ops.extend(before.get(op.name, []))
        if op.name not in removed:
            ops.append(replace.get(op.name, op))
    return graph.replace(ops=tuple(ops), constants=graph.constants + tuple(constants))
