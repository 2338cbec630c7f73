"""Clean-up passes: constant folding, no-op removal, common-subexpression elimination.

None of them removes an op whose output is a graph output: that name must be
written by a kernel, and renaming it would change the graph's interface.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from kiln.ir import Constant, Graph, IntVar, Op, TensorType
from kiln.ops import BINARY, UNARY, PermuteAttrs, ReshapeAttrs, get_op
from kiln.ops.layout import reshape_attrs
from kiln.shapes import infer_types
from planner_svc.passes.rewrite import (
    compose,
    constant_array,
    is_identity,
    make_constant,
    rebuild,
    resolve,
    substitute,
    uniform_value,
)

# Folding evaluates in NumPy at plan time; past this a constant is better computed by a kernel.
FOLD_MAX_ELEMENTS = 1 << 26


# --- constant folding --------------------------------------------------------------------------

def fold_constants(graph: Graph) -> Graph:
    """An op whose inputs are all constants becomes a constant of its output's name and dtype
    (e.g. a transposed or reshaped weight, a scale computed as 1/sqrt(d))."""
    types = infer_types(graph)
    cmap = graph.constant_map()
    outputs = set(graph.outputs)
    kept: list[Op] = []
    folded: dict[str, Constant] = {}
    for op in graph.ops:
        out = op.outputs[0]
        if (len(op.outputs) != 1 or out in outputs or not op.inputs
                or not all(n in cmap or n in folded for n in op.inputs)
                or any((cmap.get(n) or folded[n]).data is None for n in op.inputs)
                or not types[out].is_static or types[out].max_elements() > FOLD_MAX_ELEMENTS):
            kept.append(op)
            continue
        values = [constant_array(folded.get(n) or cmap[n]) for n in op.inputs]
        with np.errstate(all="ignore"):
            result = get_op(op.kind).reference(values, op.attrs)[0]
        folded[out] = make_constant(out, types[out].dtype, np.asarray(result).reshape(
            tuple(int(d) for d in types[out].shape)))
    if not folded:
        return graph
    return graph.replace(ops=tuple(kept), constants=graph.constants + tuple(folded.values()))


# --- no-op removal -----------------------------------------------------------------------------

def _reshape_attrs_from(source: TensorType, target: TensorType) -> ReshapeAttrs | None:
    """Attrs reshaping `source` to `target` directly (each symbolic dim carried whole)."""
    return reshape_attrs(source, target.shape)


# Past this many elements the round-trip check is not worth its NumPy time at plan time.
ROUND_TRIP_MAX_ELEMENTS = 1 << 22


def _round_trip_as_reshape(first: Op, middle: Op, last: Op, types: dict[str, TensorType]) -> Op | None:
    """permute -> reshape -> permute that leaves every element where it was, as one reshape.
    ViT's patches come out of the GEMM as NHWC [B, 14, 14, 768]; the model's
    flatten(2).transpose(1, 2) goes through NCHW and back, which is [B, 196, 768] as it lies.
    Checked by moving indices with every symbolic dim set to 2 and then to 3."""
    if first.kind != "permute":
        return None
    src, out = types[first.inputs[0]], types[last.outputs[0]]
    for value in (2, 3):
        def concrete(t: TensorType, v: int = value) -> tuple[int, ...]:
            return tuple(d if isinstance(d, int) else v for d in t.shape)
        n = int(np.prod(concrete(src)))
        if n > ROUND_TRIP_MAX_ELEMENTS:
            return None
        moved = np.arange(n).reshape(concrete(src)).transpose(first.attrs.perm)
        moved = moved.reshape(concrete(types[middle.outputs[0]])).transpose(last.attrs.perm)
        if not np.array_equal(moved.ravel(), np.arange(n)):
            return None
    attrs = _reshape_attrs_from(src, out)
    return None if attrs is None else Op(last.name, "reshape", first.inputs[:1], last.outputs, attrs)


def _neutral_operand(op: Op, types: dict[str, TensorType], cmap: dict[str, Constant]) -> str | None:
    """The other operand when this binary op is x + 0, x - 0, x * 1 or x / 1 exactly, and the
    constant does not broadcast x to a larger shape."""
    neutral = {"add": 0.0, "sub": 0.0, "mul": 1.0, "div": 1.0}.get(op.kind)
    if neutral is None:
        return None
    commutes = op.kind in ("add", "mul")
    out_shape = types[op.outputs[0]].shape
    for const_at, other_at in ((1, 0), (0, 1)) if commutes else ((1, 0),):
        c, x = op.inputs[const_at], op.inputs[other_at]
        if uniform_value(cmap, c) == neutral and types[x] == types[op.outputs[0]] and types[x].shape == out_shape:
            return x
    return None


def _simplify(op: Op, types: dict[str, TensorType], cmap: dict[str, Constant],
              made: dict[str, Op]) -> tuple[Op, str | None]:
    """The op with permute/reshape chains collapsed, and a tensor equal to its output if any."""
    x = op.inputs[0] if op.inputs else ""
    out_t = types[op.outputs[0]]
    if op.kind == "permute":
        inner = made.get(x)
        if inner is not None and inner.kind == "permute":
            op = op.replace(inputs=inner.inputs, attrs=PermuteAttrs(compose(inner.attrs.perm, op.attrs.perm)))
        elif inner is not None and inner.kind == "reshape" and made.get(inner.inputs[0]) is not None:
            op = _round_trip_as_reshape(made[inner.inputs[0]], inner, op, types) or op
        return op, (op.inputs[0] if op.kind == "permute" and is_identity(op.attrs.perm) else None)
    if op.kind == "reshape":
        inner = made.get(x)
        if inner is not None and inner.kind == "reshape":
            attrs = _reshape_attrs_from(types[inner.inputs[0]], out_t)
            if attrs is not None:
                op = op.replace(inputs=inner.inputs, attrs=attrs)
        return op, (op.inputs[0] if types[op.inputs[0]] == out_t else None)
    if op.kind == "cast":
        return op, (x if types[x] == out_t else None)
    if op.kind == "slice":
        whole = all(s == 0 and st == 1 and (e == d if isinstance(e, IntVar) else not isinstance(d, int) or e >= d)
                    for s, e, st, d in zip(
            op.attrs.starts, op.attrs.ends, op.attrs.steps, types[x].shape, strict=True))
        return op, (x if whole else None)
    if op.kind == "concat" and len(op.inputs) == 1:
        return op, x
    return op, _neutral_operand(op, types, cmap)


def remove_noops(graph: Graph) -> Graph:
    """Identity permutes, reshapes to the same shape, same-dtype casts, whole slices, one-input
    concats, x+0 / x*1 go; permute-of-permute and reshape-of-reshape collapse into one op, and
    a permute-reshape-permute round trip that moves no element becomes a reshape."""
    types = infer_types(graph)
    cmap = graph.constant_map()
    outputs = set(graph.outputs)
    subst: dict[str, str] = {}
    made: dict[str, Op] = {}
    ops: list[Op] = []
    for op in graph.ops:
        op = substitute(op, subst)
        result, alias = _simplify(op, types, cmap, made) if len(op.outputs) == 1 else (op, None)
        if alias is not None and op.outputs[0] not in outputs:
            subst[op.outputs[0]] = alias
            continue
        ops.append(result)
        made.update((o, result) for o in result.outputs)
    return rebuild(graph, ops, [], subst)


# --- common subexpressions ---------------------------------------------------------------------

def _key(op: Op) -> tuple[Any, ...]:
    try:
        hash(op.attrs)
        attrs: Any = op.attrs
    except TypeError:
        attrs = repr(op.attrs)
    return (op.kind, op.inputs, attrs)


def eliminate_common_subexpressions(graph: Graph) -> Graph:
    """Constants with equal bytes and type become one; an op repeating an earlier op's kind,
    attributes and inputs reads the earlier result instead."""
    outputs = set(graph.outputs)
    subst: dict[str, str] = {}
    by_content: dict[tuple[Any, ...], str] = {}
    for c in graph.constants:
        first = by_content.setdefault((c.type, c.sha256), c.name)
        if first != c.name:
            subst[c.name] = first
    seen: dict[tuple[Any, ...], Op] = {}
    ops: list[Op] = []
    for op in graph.ops:
        op = substitute(op, subst)
        if op.kind in UNARY or op.kind in BINARY:
            # Recomputed inside each consumer's fused kernel, a duplicate costs no memory traffic;
            # merged, it would be read by two consumers and so need its own kernel and buffer.
            ops.append(op)
            continue
        earlier = seen.get(_key(op))
        if earlier is not None and not outputs.intersection(op.outputs):
            subst.update(zip(op.outputs, earlier.outputs, strict=True))
            continue
        seen.setdefault(_key(op), op)
        ops.append(op)
    constants = tuple(c for c in graph.constants if c.name not in subst)
    if not subst:
        return graph
    return graph.replace(ops=tuple(substitute(o, subst) for o in ops), constants=constants)


__all__ = ["fold_constants", "remove_noops", "eliminate_common_subexpressions", "resolve"]
