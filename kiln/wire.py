"""ir.Graph <-> kiln.v1.Graph protobuf. Validation lives in kiln.validate."""
from __future__ import annotations

import dataclasses
import typing

from kiln.dtypes import DType
from kiln.ir import Constant, Dim, Graph, IntVar, Op, TensorType
from kiln.ops import get_op
from kiln.v1 import graph_pb2 as pb

DTYPE_TO_PB = {
    DType.F32: pb.FLOAT32, DType.F16: pb.FLOAT16, DType.BF16: pb.BFLOAT16,
    DType.I32: pb.INT32, DType.I64: pb.INT64, DType.BOOL: pb.BOOL,
}
PB_TO_DTYPE = {v: k for k, v in DTYPE_TO_PB.items()}

# Constants above this size are uploaded separately and sent by digest.
INLINE_LIMIT = 1 << 20


def dim_to_pb(d: Dim) -> pb.Dim:
    if isinstance(d, IntVar):
        return pb.Dim(symbolic=pb.SymbolicDim(name=d.name, min=d.min, max=d.max))
    return pb.Dim(static=d)


def dim_from_pb(d: pb.Dim) -> Dim:
    """Unchecked conversion; kiln.validate checks before calling this."""
    return IntVar(d.symbolic.name, d.symbolic.min, d.symbolic.max) if d.WhichOneof("kind") == "symbolic" else d.static


def type_to_pb(t: TensorType) -> pb.TensorType:
    return pb.TensorType(dtype=DTYPE_TO_PB[t.dtype], layout="row_major", shape=[dim_to_pb(d) for d in t.shape])


def attr_to_pb(value: object) -> pb.AttrValue:
    if isinstance(value, bool):
        return pb.AttrValue(b=value)
    if isinstance(value, int):
        return pb.AttrValue(i=value)
    if isinstance(value, float):
        return pb.AttrValue(f=value)
    if isinstance(value, str):
        return pb.AttrValue(s=value)
    if isinstance(value, tuple) and all(isinstance(v, int) for v in value):
        return pb.AttrValue(ints=pb.IntList(values=list(value)))
    if isinstance(value, tuple) and all(isinstance(v, int | IntVar) for v in value):
        return pb.AttrValue(dims=pb.DimList(values=[dim_to_pb(v) for v in value]))
    raise TypeError(f"attribute value {value!r} has no wire form (internal attribute)")


def attrs_to_pb(attrs: object) -> dict[str, pb.AttrValue]:
    out = {}
    for f in dataclasses.fields(attrs):
        value = getattr(attrs, f.name)
        if value == f.default or (f.default_factory is not dataclasses.MISSING and value == f.default_factory()):
            continue  # defaults stay implicit so that equal graphs encode alike
        out[f.name] = attr_to_pb(value)
    return out


def graph_to_pb(graph: Graph, *, inline_limit: int = INLINE_LIMIT) -> pb.Graph:
    msg = pb.Graph(name=graph.name, outputs=list(graph.outputs))
    for t in graph.inputs:
        msg.inputs.add(name=t.name, type=type_to_pb(t.type))
    for c in graph.constants:
        cm = msg.constants.add(name=c.name, type=type_to_pb(c.type))
        if c.data is not None and len(c.data) <= inline_limit:
            cm.inline = c.data
        else:
            cm.sha256 = c.sha256
    for op in graph.ops:
        om = msg.ops.add(name=op.name, type=op.kind, inputs=list(op.inputs), outputs=list(op.outputs))
        for key, value in attrs_to_pb(op.attrs).items():
            om.attrs[key].CopyFrom(value)
    return msg


class AttrError(ValueError):
    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field


def attrs_from_pb(kind: str, attrs: typing.Mapping[str, pb.AttrValue]) -> object:
    """Typed Attrs from the wire map; errors name the attribute."""
    cls = get_op(kind).Attrs
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    values = {}
    for key, av in attrs.items():
        if key not in known:
            raise AttrError(key, f"unknown attribute {key!r} for op type {kind!r} (known: {sorted(known) or 'none'})")
        want = hints[key]
        which = av.WhichOneof("value")
        got = {"i": av.i, "f": av.f, "s": av.s, "b": av.b, "ints": tuple(av.ints.values) if which == "ints" else None}
        if want is bool and which == "b":
            values[key] = av.b
        elif want is int and which == "i":
            values[key] = av.i
        elif want is float and which in ("f", "i"):
            values[key] = float(got[which])
        elif want is str and which == "s":
            values[key] = av.s
        elif want in (tuple[int, ...], tuple[Dim, ...]) and which == "ints":
            values[key] = got["ints"]
        elif want == tuple[Dim, ...] and which == "dims":
            values[key] = tuple(dim_from_pb(d) for d in av.dims.values)
        else:
            raise AttrError(key, f"attribute {key!r} of op type {kind!r} must be {getattr(want, '__name__', want)}, "
                                 f"got {which or 'nothing'}")
    return cls(**values)


def type_from_pb(msg: pb.TensorType) -> TensorType:
    """Unchecked conversion; kiln.validate checks before calling this."""
    return TensorType(PB_TO_DTYPE[msg.dtype], tuple(dim_from_pb(d) for d in msg.shape))


def constant_from_pb(msg: pb.Constant) -> Constant:
    t = type_from_pb(msg.type)
    if msg.WhichOneof("data") == "inline":
        return Constant.from_bytes(msg.name, t, bytes(msg.inline))
    return Constant(msg.name, t, msg.sha256, None)


def op_from_pb(msg: pb.Op) -> Op:
    return Op(msg.name, msg.type, tuple(msg.inputs), tuple(msg.outputs), attrs_from_pb(msg.type, msg.attrs))
