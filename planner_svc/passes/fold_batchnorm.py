"""Batch norm has no kernel: fold it into the producing GEMM, or else rewrite it as pointwise ops.

Inference batch norm is y = x * s + t with s = scale / sqrt(var + eps) and
t = bias - mean * s per channel (the last axis). When x is a conv2d's or a
linear's output read by nothing else, s scales the weight's output channels
and t becomes the bias. Otherwise y = x * s + t is two elementwise ops with
precomputed constants, which the elementwise fusion puts into a neighbour's
kernel; with non-constant statistics the formula itself is spelled out.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from kiln.ir import Constant, Graph, Op
from kiln.shapes import infer_types
from planner_svc.passes.rewrite import Names, constant_array, make_constant

FOLDS_INTO = ("conv2d", "linear")


@dataclass
class _Rewrite:
    ops: list[Op]
    constants: list[Constant]
    drops: str = ""  # the name of the producer op this rewrite replaces, if any


def _affine(bn: Op, cmap: dict[str, Constant]) -> tuple[np.ndarray, np.ndarray] | None:
    """(s, t) in float64 when all four statistics are constants with data."""
    params = [cmap.get(n) for n in bn.inputs[1:]]
    if any(c is None or c.data is None for c in params):
        return None
    scale, bias, mean, var = (constant_array(c) for c in params)
    s = scale / np.sqrt(var + bn.attrs.eps)
    return s, bias - mean * s


def _into_gemm(bn: Op, gemm: Op, s: np.ndarray, t: np.ndarray, cmap: dict[str, Constant],
               names: Names) -> _Rewrite | None:
    w = cmap.get(gemm.inputs[1])
    b = cmap.get(gemm.inputs[2]) if gemm.attrs.has_bias else None
    if w is None or w.data is None or (gemm.attrs.has_bias and (b is None or b.data is None)):
        return None
    # Output channels are the weight's axis 0 for linear [N, K] and conv2d [O, KH, KW, C].
    weight = constant_array(w) * s.reshape((-1,) + (1,) * (w.type.rank - 1))
    bias = (constant_array(b) * s if b is not None else 0.0) + t
    new_w = make_constant(names.fresh(f"{w.name}.bn"), w.type.dtype, weight)
    new_b = make_constant(names.fresh(f"{gemm.name}.bn_bias"), (b if b is not None else w).type.dtype, np.asarray(bias))
    inputs = (gemm.inputs[0], new_w.name, new_b.name)
    attrs = dataclasses.replace(gemm.attrs, has_bias=True)
    fused = Op(f"{gemm.name}+{bn.name}", gemm.kind, inputs, bn.outputs, attrs)
    return _Rewrite([fused], [new_w, new_b], drops=gemm.name)


def _as_multiply_add(bn: Op, s: np.ndarray, t: np.ndarray, dtype, names: Names) -> _Rewrite:
    sc = make_constant(names.fresh(f"{bn.name}.scale"), dtype, s)
    sh = make_constant(names.fresh(f"{bn.name}.shift"), dtype, t)
    scaled = names.fresh(f"{bn.name}.scaled")
    return _Rewrite([Op(names.fresh(f"{bn.name}.mul"), "mul", (bn.inputs[0], sc.name), (scaled,), None),
                     Op(bn.name, "add", (scaled, sh.name), bn.outputs, None)], [sc, sh])


def _as_formula(bn: Op, dtype, names: Names) -> _Rewrite:
    """(x - mean) * (scale * rsqrt(var + eps)) + bias, for statistics computed at run time."""
    x, scale, bias, mean, var = bn.inputs
    eps = make_constant(names.fresh(f"{bn.name}.eps"), dtype, np.asarray(bn.attrs.eps))
    ops: list[Op] = []

    def emit(kind: str, *args: str, out: str | None = None) -> str:
        result = out or names.fresh(f"{bn.name}.{kind}")
        ops.append(Op(names.fresh(f"{bn.name}.{kind}") if out is None else bn.name, kind, args, (result,), None))
        return result

    inv = emit("rsqrt", emit("add", var, eps.name))
    s = emit("mul", scale, inv)
    centred = emit("sub", x, mean)
    emit("add", emit("mul", centred, s), bias, out=bn.outputs[0])
    return _Rewrite(ops, [eps])


def fold_batchnorm(graph: Graph) -> Graph:
    cmap = graph.constant_map()
    users = graph.consumers()
    producers = graph.producers()
    outputs = set(graph.outputs)
    names = Names(graph)
    types = infer_types(graph) if any(op.kind == "batchnorm" for op in graph.ops) else {}
    rewrites: dict[str, _Rewrite] = {}
    for bn in graph.ops:
        if bn.kind != "batchnorm":
            continue
        dtype = types[bn.outputs[0]].dtype
        affine = _affine(bn, cmap)
        if affine is None:
            rewrites[bn.name] = _as_formula(bn, dtype, names)
            continue
        x = bn.inputs[0]
        gemm = producers.get(x)
        folded = None
        if (gemm is not None and gemm.kind in FOLDS_INTO and not gemm.attrs.epilogue and x not in outputs
                and len(users.get(x, [])) == 1 and gemm.name not in {r.drops for r in rewrites.values()}):
            folded = _into_gemm(bn, gemm, *affine, cmap, names)
        rewrites[bn.name] = folded or _as_multiply_add(bn, *affine, dtype, names)
    if not rewrites:
        return graph
    dropped = {r.drops: r for r in rewrites.values() if r.drops}
    ops: list[Op] = []
    for op in graph.ops:
        if op.name in dropped:
            ops.extend(dropped[op.name].ops)   # the fused GEMM runs where the GEMM ran
        elif op.name in rewrites:
            if not rewrites[op.name].drops:
                ops.extend(rewrites[op.name].ops)
        else:
            ops.append(op)
    constants = [c for r in rewrites.values() for c in r.constants]
    return graph.replace(ops=tuple(ops), constants=graph.constants + tuple(constants))
