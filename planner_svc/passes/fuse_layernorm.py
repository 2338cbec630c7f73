"""Reduction epilogue: a residual add feeding a layernorm becomes the layernorm's fourth input.

layernorm(a + b) as two kernels writes a + b to memory and reads it back; with
has_residual the norm reads a and b and adds them in registers: one kernel and
one full tensor less of traffic.

Absorbed: a plain `add`, or a `fused_elementwise` whose whole program is one
add, of two tensors of the output's shape (no broadcasting), whose output is
read only as the x input of one layernorm and is not a graph output. Not
absorbed: a fused program with more steps (a sum of three tensors, an add
after an activation): moving its last add into the norm saves no traffic, the
fused kernel still writes a full tensor. Nor an add whose result is also read
elsewhere (a pre-LN residual stream): that needs a norm with two outputs.

Run after the GEMM epilogue fusion: an add a GEMM takes costs no traffic at
all, so the norm only gets the adds no GEMM took.
"""
from __future__ import annotations

import dataclasses

from kiln.ir import Graph, Op, TensorType
from kiln.ops import EwInstr
from kiln.shapes import infer_types


def _addends(op: Op) -> tuple[str, str] | None:
    """The two tensors `op` adds, when that is all it does."""
    if op.kind == "add":
        return op.inputs[0], op.inputs[1]
    if op.kind != "fused_elementwise" or len(op.attrs.program) != 1:
        return None
    step: EwInstr = op.attrs.program[0]
    n = len(op.inputs)
    if step.op != "add" or len(step.args) != 2 or any(a >= n for a in step.args):
        return None
    return op.inputs[step.args[0]], op.inputs[step.args[1]]


def _absorbable(add: Op, users: dict[str, list[Op]], outputs: set[str],
                types: dict[str, TensorType]) -> tuple[Op, tuple[str, str]] | None:
    """(the layernorm, the addends) when `add` can become that layernorm's residual."""
    addends = _addends(add)
    out = add.outputs[0]
    readers = users.get(out, [])
    if addends is None or out in outputs or len(readers) != 1:
        return None
    ln = readers[0]
    if ln.kind != "layernorm" or ln.attrs.has_residual or ln.inputs[0] != out or ln.inputs.count(out) != 1:
        return None
    if any(types[a] != types[out] for a in addends):
        return None
    return ln, addends


def fuse_residual_layernorm(graph: Graph) -> Graph:
    types = infer_types(graph)
    users = graph.consumers()
    outputs = set(graph.outputs)
    replaced: dict[str, Op] = {}
    absorbed: set[str] = set()
    for op in graph.ops:
        found = _absorbable(op, users, outputs, types)
        if found is None:
            continue
        ln, (x, r) = found
        attrs = dataclasses.replace(ln.attrs, has_residual=True)
        # The addends exist before the add, so before the layernorm: it keeps its place.
        replaced[ln.name] = Op(f"{op.name}+{ln.name}", "layernorm", (x, *ln.inputs[1:3], r), ln.outputs, attrs)
        absorbed.add(op.name)
    if not absorbed:
        return graph
    return graph.replace(ops=tuple(replaced.get(o.name, o) for o in graph.ops if o.name not in absorbed))
