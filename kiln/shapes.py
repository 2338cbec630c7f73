"""Shape and dtype inference over a whole graph."""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping

from kiln.ir import Graph, IntVar, TensorType
from kiln.ops import ShapeError, get_op


class GraphError(ValueError):
    """A graph is invalid. `field` points at the culprit (e.g. ops[3].inputs[1])."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


def attr_symbols(attrs: object) -> list[IntVar]:
    """The symbolic dims an op's attributes hold (a slice's symbolic end)."""
    if attrs is None or not dataclasses.is_dataclass(attrs):
        return []
    found: list[IntVar] = []
    for f in dataclasses.fields(attrs):
        value = getattr(attrs, f.name)
        if isinstance(value, tuple):
            found += [e for e in value if isinstance(e, IntVar)]
    return found


def infer_types(graph: Graph, *, positions: Mapping[str, int] | None = None) -> dict[str, TensorType]:
    """Types of every tensor; ops must already be in topological order.

    Errors say ops[i] with i the op's index in graph.ops, or `positions[op name]`
    when given (the validator passes the wire order, which sorting may change)."""
    types: dict[str, TensorType] = {t.name: t.type for t in graph.inputs}
    types.update({c.name: c.type for c in graph.constants})
    bound = {d for t in graph.inputs for d in t.type.symbols()}
    for index, op in enumerate(graph.ops):
        where = f"ops[{positions[op.name] if positions is not None else index}] (op {op.name!r}, type {op.kind!r})"
        opdef = get_op(op.kind)
        unbound = [d for d in attr_symbols(op.attrs) if d not in bound]
        if unbound:
            # The runtime reads every symbol's value off the inputs' shapes.
            raise GraphError(where, f"attribute dim {unbound[0]} is not a symbolic dim of any graph input")
        missing = [n for n in op.inputs if n not in types]
        if missing:
            raise GraphError(where, f"input tensor {missing[0]!r} is not defined before this op")
        if not opdef.min_inputs <= len(op.inputs) <= opdef.max_inputs:
            raise GraphError(where, f"takes {opdef.min_inputs}..{opdef.max_inputs} inputs, got {len(op.inputs)}")
        if len(op.outputs) != opdef.num_outputs:
            raise GraphError(where, f"has {opdef.num_outputs} output(s), got {len(op.outputs)}")
        try:
            opdef.check_attrs(op.attrs)
            outs = opdef.infer([types[n] for n in op.inputs], op.attrs)
        except ShapeError as err:
            names = ", ".join(f"{n!r}: {types[n]}" for n in op.inputs)
            raise GraphError(where, f"{err} (inputs {names})") from None
        for name, t in zip(op.outputs, outs, strict=True):
            types[name] = t
    return types
