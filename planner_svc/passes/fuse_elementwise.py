"""Vertical fusion of elementwise chains into one fused_elementwise op.

A producer joins its consumer's kernel when the consumer is its only user,
it is not a graph output, and it has the consumer's shape (fusing a smaller,
broadcast producer would recompute it once per output element).
"""
from __future__ import annotations

from dataclasses import dataclass

from kiln.ir import Graph, Op
from kiln.ops import BINARY, OPS, UNARY, EwInstr, FusedAttrs
from kiln.shapes import infer_types

# A step argument is ("t", tensor name) or ("s", index of an earlier step).
Arg = tuple[str, object]
MAX_INPUTS = OPS["fused_elementwise"].max_inputs


@dataclass
class _Group:
    steps: list[tuple[str, list[Arg]]]
    names: list[str]


def _is_elementwise(op: Op) -> bool:
    return op.kind in UNARY or op.kind in BINARY or op.kind == "fused_elementwise"


def _as_group(op: Op) -> _Group:
    if op.kind != "fused_elementwise":
        return _Group([(op.kind, [("t", n) for n in op.inputs])], [op.name])
    n = len(op.inputs)
    steps = []
    for instr in op.attrs.program:
        steps.append((instr.op, [("t", op.inputs[a]) if a < n else ("s", a - n) for a in instr.args]))
    return _Group(steps, [op.name])


def _inline(consumer: _Group, tensor: str, producer: _Group) -> _Group:
    """Put the producer's steps first and point uses of `tensor` at its result."""
    shift = len(producer.steps)
    result = ("s", shift - 1)
    steps = list(producer.steps)
    for kind, args in consumer.steps:
        new_args: list[Arg] = []
        for a in args:
            if a == ("t", tensor):
                new_args.append(result)
            elif a[0] == "s":
                new_args.append(("s", a[1] + shift))
            else:
                new_args.append(a)
        steps.append((kind, new_args))
    return _Group(steps, producer.names + consumer.names)


def _externals(group: _Group) -> list[str]:
    ext: list[str] = []
    for _, args in group.steps:
        for a in args:
            if a[0] == "t" and a[1] not in ext:
                ext.append(a[1])
    return ext


def _finish(group: _Group, output: str) -> Op:
    ext = _externals(group)
    program = tuple(
        EwInstr(kind, tuple(ext.index(a[1]) if a[0] == "t" else len(ext) + a[1] for a in args))
        for kind, args in group.steps)
    return Op("+".join(group.names), "fused_elementwise", tuple(ext), (output,), FusedAttrs(program))


def fuse_elementwise_chains(graph: Graph) -> Graph:
    types = infer_types(graph)
    users = graph.consumers()
    outputs = set(graph.outputs)
    groups: dict[str, _Group] = {}   # output tensor -> pending group
    ops: list[Op | str] = []         # a str marks where a group's op goes
    for op in graph.ops:
        if not _is_elementwise(op):
            ops.append(op)
            continue
        group = _as_group(op)
        out = op.outputs[0]
        for name in dict.fromkeys(op.inputs):
            if (name in groups and name not in outputs and len(users.get(name, [])) == 1
                    and types[name].shape == types[out].shape):
                merged = _inline(group, name, groups[name])
                if len(_externals(merged)) > MAX_INPUTS:
                    continue  # a kernel takes at most MAX_INPUTS operands
                group = merged
                groups.pop(name)
                ops.remove(name)
        groups[out] = group
        ops.append(out)
    return graph.replace(ops=tuple(_finish(groups[o], o) if isinstance(o, str) else o for o in ops))
