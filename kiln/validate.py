"""Check a graph from the wire and turn it into IR, or say exactly what is wrong.

Every error is a GraphError whose field names the tensor, op or attribute.
"""
from __future__ import annotations

import heapq
import re

from kiln.ir import Graph, IntVar, Op, Tensor
from kiln.ops import OPS
from kiln.shapes import GraphError, infer_types
from kiln.v1 import graph_pb2 as pb
from kiln.wire import PB_TO_DTYPE, AttrError, constant_from_pb, op_from_pb, type_from_pb

MAX_TENSOR_BYTES = 64 << 30
MAX_DIM = (1 << 31) - 1
MAX_RANK = 8
MAX_OPS = 100_000
MAX_NAME = 256
INTERNAL_OPS = frozenset({"fused_elementwise"})
# Used with fullmatch: "$" would also match before a trailing newline.
_NAME_RE = re.compile(r"[\x21-\x7e]([\x20-\x7e]*[\x21-\x7e])?")
_SHA_RE = re.compile(r"[0-9a-f]{64}")
_SYMBOL_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")


def _check_name(field: str, name: str) -> None:
    if not name:
        raise GraphError(field, "name is empty")
    if len(name) > MAX_NAME or not _NAME_RE.fullmatch(name):
        raise GraphError(field, f"name {name[:40]!r} must be 1..{MAX_NAME} printable ASCII characters")


def _check_type(field: str, msg: pb.TensorType, symbols: dict[str, IntVar]) -> None:
    if msg.dtype not in PB_TO_DTYPE:
        raise GraphError(f"{field}.dtype", "dtype is unspecified or unknown")
    if len(msg.shape) > MAX_RANK:
        raise GraphError(f"{field}.shape", f"rank {len(msg.shape)} exceeds {MAX_RANK}")
    if msg.layout not in ("", "row_major"):
        raise GraphError(f"{field}.layout", f"layout {msg.layout!r} is not supported (only row_major)")
    size = PB_TO_DTYPE[msg.dtype].itemsize
    for i, d in enumerate(msg.shape):
        where = f"{field}.shape[{i}]"
        kind = d.WhichOneof("kind")
        if kind == "static":
            if not 1 <= d.static <= MAX_DIM:
                raise GraphError(where, f"dim {d.static} must be in 1..{MAX_DIM}")
            size *= d.static
        elif kind == "symbolic":
            s = d.symbolic
            if not _SYMBOL_RE.fullmatch(s.name):
                raise GraphError(where, f"symbolic dim name {s.name!r} must be an identifier")
            if not 1 <= s.min <= s.max <= MAX_DIM:
                raise GraphError(where, f"symbolic dim {s.name!r} range [{s.min}, {s.max}] must satisfy 1 <= min <= max")
            var = IntVar(s.name, s.min, s.max)
            if symbols.setdefault(s.name, var) != var:
                raise GraphError(where, f"symbolic dim {s.name!r} is declared with two ranges: {symbols[s.name]} and {var}")
            size *= s.max
        else:
            raise GraphError(where, "dim is neither static nor symbolic")
    if size > MAX_TENSOR_BYTES:
        raise GraphError(field, f"tensor of up to {size} bytes exceeds the {MAX_TENSOR_BYTES}-byte limit")


def _topo_order(ops: list[Op], defined: set[str]) -> list[Op]:
    producer = {out: i for i, op in enumerate(ops) for out in op.outputs}
    for i, op in enumerate(ops):
        for j, name in enumerate(op.inputs):
            if name not in producer and name not in defined:
                raise GraphError(f"ops[{i}] (op {op.name!r}).inputs[{j}]", f"tensor {name!r} is never defined")
    deps = [{producer[n] for n in op.inputs if n in producer} for op in ops]
    users: dict[int, list[int]] = {}
    for i, ds in enumerate(deps):
        for d in ds:
            users.setdefault(d, []).append(i)
    remaining = [len(ds) for ds in deps]
    # A heap on the wire position keeps the user's order whenever it is valid.
    ready = [i for i, n in enumerate(remaining) if n == 0]
    heapq.heapify(ready)
    order: list[int] = []
    while ready:
        i = heapq.heappop(ready)
        order.append(i)
        for u in users.get(i, []):
            remaining[u] -= 1
            if remaining[u] == 0:
                heapq.heappush(ready, u)
    if len(order) < len(ops):
        stuck = [ops[i].name for i in range(len(ops)) if remaining[i] > 0]
        raise GraphError("ops", f"the graph has a cycle through ops {stuck[:8]}")
    return [ops[i] for i in order]


def graph_from_pb(msg: pb.Graph) -> Graph:
    """Validate a wire graph; returns IR with ops in topological order."""
    _check_name("graph.name", msg.name or "graph")
    if len(msg.ops) > MAX_OPS:
        raise GraphError("graph.ops", f"{len(msg.ops)} ops exceed the limit of {MAX_OPS}")
    symbols: dict[str, IntVar] = {}
    seen: dict[str, str] = {}

    def define(name: str, field: str) -> None:
        _check_name(field, name)
        if name in seen:
            raise GraphError(field, f"tensor name {name!r} is already defined by {seen[name]}")
        seen[name] = field

    if not msg.inputs:
        raise GraphError("graph.inputs", "a graph needs at least one input")
    for i, t in enumerate(msg.inputs):
        define(t.name, f"inputs[{i}] (tensor {t.name!r})")
        _check_type(f"inputs[{i}] (tensor {t.name!r}).type", t.type, symbols)
    for i, c in enumerate(msg.constants):
        where = f"constants[{i}] (tensor {c.name!r})"
        define(c.name, where)
        _check_type(f"{where}.type", c.type, symbols)
        if any(d.WhichOneof("kind") != "static" for d in c.type.shape):
            raise GraphError(f"{where}.type", "constants must have static shapes")
        which = c.WhichOneof("data")
        if which == "inline":
            t = type_from_pb(c.type)
            want = t.max_bytes()
            if len(c.inline) != want:
                raise GraphError(f"{where}.inline", f"holds {len(c.inline)} bytes, but {t} needs {want}")
        elif which == "sha256":
            if not _SHA_RE.fullmatch(c.sha256):
                raise GraphError(f"{where}.sha256", f"{c.sha256[:70]!r} is not a lowercase sha256 hex digest")
        else:
            raise GraphError(where, "constant has neither inline data nor a sha256 reference")
    ops: list[Op] = []
    names: set[str] = set()
    for i, o in enumerate(msg.ops):
        where = f"ops[{i}] (op {o.name!r})"
        _check_name(f"{where}.name", o.name)
        if o.name in names:
            raise GraphError(f"{where}.name", f"op name {o.name!r} is used twice")
        names.add(o.name)
        if o.type not in OPS or o.type in INTERNAL_OPS:
            known = ", ".join(sorted(set(OPS) - INTERNAL_OPS))
            raise GraphError(f"{where}.type", f"unknown op type {o.type!r}; supported: {known}")
        for j, out in enumerate(o.outputs):
            define(out, f"{where}.outputs[{j}]")
        try:
            ops.append(op_from_pb(o))
        except AttrError as err:
            raise GraphError(f"{where}.attrs[{err.field!r}]", str(err)) from None
    ordered = _topo_order(ops, {t.name for t in msg.inputs} | {c.name for c in msg.constants})
    if not msg.outputs:
        raise GraphError("graph.outputs", "a graph needs at least one output")
    produced = {out for op in ops for out in op.outputs}
    for i, name in enumerate(msg.outputs):
        if name not in produced:
            what = "is a graph input or constant" if name in seen else "is never defined"
            raise GraphError(f"outputs[{i}]", f"output {name!r} {what}; outputs must be computed by an op")
    if len(set(msg.outputs)) != len(msg.outputs):
        raise GraphError("outputs", "an output is listed twice")
    graph = Graph(
        name=msg.name or "graph",
        inputs=tuple(Tensor(t.name, type_from_pb(t.type)) for t in msg.inputs),
        outputs=tuple(msg.outputs),
        constants=tuple(constant_from_pb(c) for c in msg.constants),
        ops=tuple(ordered),
    )
    # Errors name the op by its position on the wire, not in the sorted order.
    types = infer_types(graph, positions={o.name: i for i, o in enumerate(msg.ops)})
    for name, t in types.items():
        if t.max_bytes() > MAX_TENSOR_BYTES:
            raise GraphError(f"tensor {name!r}", f"{t} may need {t.max_bytes()} bytes, over the {MAX_TENSOR_BYTES}-byte limit")
    return graph
