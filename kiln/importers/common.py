"""What both importers share: a graph builder that tracks layout, folds constants and refuses clearly.

PyTorch and ONNX CNNs are NCHW; Kiln's conv2d/pool2d/batchnorm are NHWC. Every imported value is a Kiln
tensor plus a flag `nhwc`: "stored NHWC, logically NCHW". Importers speak in the logical (framework)
layout; the helpers here decide where bytes must move, so that a ResNet pays for one permute at its input
and none between its convolutions. A value that is not layout-aware (a reshape, a matmul) first gets its
logical layout back.
"""
from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from kiln.dtypes import DType, from_numpy, storage_dtype, to_storage
from kiln.ir import Constant, Dim, Graph, IntVar, Op, Tensor, TensorType
from kiln.ops import (
    BatchNormAttrs,
    CastAttrs,
    ConcatAttrs,
    Conv2dAttrs,
    LayerNormAttrs,
    LinearAttrs,
    PermuteAttrs,
    Pool2dAttrs,
    ReduceAttrs,
    ReshapeAttrs,
    ShapeError,
    SliceAttrs,
    get_op,
)
from kiln.ops.layout import reshape_attrs
from kiln.shapes import infer_types

# The largest constant a filled tensor (zeros_like of a symbolic shape) is made from, at its dims' max.
FILLED_MAX_ELEMENTS = 1 << 24
TO_NHWC = (0, 2, 3, 1)
TO_NCHW = (0, 3, 1, 2)


class UnsupportedOps(ValueError):
    """The model uses ops (or op configurations) Kiln cannot express; `ops` maps op -> (count, first place)."""

    def __init__(self, framework: str, ops: dict[str, tuple[int, str]]):
        self.ops = dict(ops)
        lines = [f"  {name}: {count}" + (f", first at {where}" if where else "") for name, (count, where) in ops.items()]
        total = sum(c for c, _ in ops.values())
        super().__init__(f"cannot import the {framework} model: {len(ops)} unsupported op(s), {total} use(s) in all; "
                         "nothing was dropped or approximated:\n" + "\n".join(lines))


class Refusal(Exception):
    """One node cannot be imported (raised inside a converter; the importer collects them)."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


@dataclass
class Refusals:
    """Every refused node, grouped by op (and reason), so one error can list them all."""

    entries: dict[str, list] = field(default_factory=dict)

    def add(self, key: str, where: str) -> None:
        entry = self.entries.setdefault(key, [0, where])
        entry[0] += 1
        entry[1] = entry[1] or where

    def raise_if_any(self, framework: str) -> None:
        if self.entries:
            raise UnsupportedOps(framework, {k: (c, w) for k, (c, w) in self.entries.items()})


@dataclass
class Value:
    """An imported tensor. `data` holds the values of a constant (logical layout) until an op needs it
    as a Kiln tensor; `name` is set once it exists in the graph."""

    type: TensorType  # the logical (framework) type
    name: str | None = None
    nhwc: bool = False
    data: np.ndarray | None = None
    hint: str = "const"

    @property
    def shape(self) -> tuple[Dim, ...]:
        return self.type.shape

    @property
    def rank(self) -> int:
        return self.type.rank

    @property
    def dtype(self) -> DType:
        return self.type.dtype

    @property
    def is_const(self) -> bool:
        return self.data is not None


_BAD_CHARS = re.compile(r"[^\x21-\x7e]+")


def kiln_dtype(np_dtype: np.dtype) -> DType:
    dt = np.dtype(np_dtype)
    if dt == np.float64:
        raise Refusal("float64 tensors (Kiln computes in float32/float16/bfloat16)")
    return from_numpy(dt)


def const_value(array: np.ndarray, hint: str = "const", dtype: DType | None = None) -> Value:
    array = np.asarray(array)
    if dtype is None:
        dtype = DType.F32 if array.dtype == np.float64 else kiln_dtype(array.dtype)
    return Value(TensorType(dtype, tuple(int(d) for d in array.shape)), data=array, hint=hint)


def _nhwc_shape(shape: tuple[Dim, ...]) -> tuple[Dim, ...]:
    return tuple(shape[p] for p in TO_NHWC)


class Builder:
    """Accumulates a Kiln graph; infers each op's type as it is added (once, not per graph)."""

    def __init__(self, name: str):
        self.name = name
        self.inputs: list[Tensor] = []
        self.constants: list[Constant] = []
        self.ops: list[Op] = []
        self.types: dict[str, TensorType] = {}
        self._used: set[str] = set()

    # ---------------------------------------------------------------- names and raw ops

    def unique(self, hint: str) -> str:
        base = _BAD_CHARS.sub("_", hint).strip("_")[:200] or "t"
        name, n = base, 1
        while name in self._used:
            name, n = f"{base}_{n}", n + 1
        self._used.add(name)
        return name

    def input(self, hint: str, shape: tuple[Dim, ...], dtype: DType) -> Value:
        t = TensorType(dtype, tuple(shape))
        name = self.unique(hint)
        self.inputs.append(Tensor(name, t))
        self.types[name] = t
        return Value(t, name)

    def materialize(self, v: Value) -> str:
        """The Kiln tensor name of `v`, adding a graph constant for a constant value (once per value)."""
        if v.name is not None:
            return v.name
        assert v.data is not None
        stored = v.data if not v.nhwc else np.transpose(v.data, TO_NHWC)
        t = TensorType(v.dtype, tuple(int(d) for d in stored.shape))
        name = self.unique(v.hint)
        self.constants.append(Constant.from_bytes(name, t, to_storage(stored, v.dtype).tobytes()))
        self.types[name] = t
        v.name = name  # later uses of the same value share the constant
        return name

    def raw(self, kind: str, inputs: Sequence[Value | str], attrs: object | None = None, hint: str | None = None) -> str:
        """Add one Kiln op over stored tensors; returns the output tensor name."""
        names = [x if isinstance(x, str) else self.materialize(x) for x in inputs]
        attrs = attrs if attrs is not None else get_op(kind).Attrs()
        opdef = get_op(kind)
        try:
            opdef.check_attrs(attrs)
            (out_type,) = opdef.infer([self.types[n] for n in names], attrs)
        except ShapeError as err:
            raise Refusal(f"{kind}: {err}") from None
        out = self.unique(hint or kind)
        self.ops.append(Op(out, kind, tuple(names), (out,), attrs))
        self.types[out] = out_type
        return out

    def stored_type(self, v: Value) -> TensorType:
        return TensorType(v.dtype, _nhwc_shape(v.shape)) if v.nhwc else v.type

    def graph(self, outputs: Sequence[Value], hints: Sequence[str] | None = None) -> Graph:
        """The finished graph; output i is named hints[i] (the framework's output name) where given."""
        names: list[str] = []
        renames: dict[str, str] = {}
        produced = {op.outputs[0] for op in self.ops}
        for i, v in enumerate(outputs):
            v = self.logical(v)
            name = self.materialize(v)
            hint = hints[i] if hints else None
            if name not in produced or name in names or name in renames:
                # Graph outputs must be computed by an op, once each: copy through an identity reshape.
                name = self.raw("reshape", [name], ReshapeAttrs(tuple(0 for _ in v.shape)), hint or "output")
                produced.add(name)
            elif hint and name != hint:
                self._used.discard(name)
                renames[name] = self.unique(hint)
            names.append(renames.get(name, name))
        ops = tuple(op.replace(inputs=tuple(renames.get(n, n) for n in op.inputs),
                               outputs=tuple(renames.get(n, n) for n in op.outputs)) for op in self.ops)
        g = Graph(self.name, tuple(self.inputs), tuple(names), tuple(self.constants), ops)
        used = {n for op in g.ops for n in op.inputs}
        g = g.replace(constants=tuple(c for c in g.constants if c.name in used))
        infer_types(g)  # a final whole-graph check
        return g

    # ---------------------------------------------------------------- layout

    def logical(self, v: Value) -> Value:
        """`v` stored in its logical layout."""
        if not v.nhwc:
            return v
        if v.is_const:
            return Value(v.type, data=v.data, hint=v.hint)
        n, c, h, w = v.shape
        if h == 1 and w == 1:  # [N,1,1,C] and [N,C,1,1] are the same bytes
            name = self.raw("reshape", [v], ReshapeAttrs((0, c, 1, 1)), "to_nchw")
        else:
            name = self.raw("permute", [v], PermuteAttrs(TO_NCHW), "to_nchw")
        return Value(v.type, name)

    def as_nhwc(self, v: Value) -> Value:
        """`v` (logically NCHW, rank 4) stored NHWC."""
        if v.rank != 4:
            raise Refusal(f"expected a 4-D NCHW tensor, got {v.type}")
        if v.nhwc:
            return v
        if v.is_const:
            return Value(v.type, data=v.data, nhwc=True, hint=v.hint)
        name = self.raw("permute", [v], PermuteAttrs(TO_NHWC), "to_nhwc")
        return Value(v.type, name, nhwc=True)

    def emit(self, kind: str, inputs: Sequence[Value], attrs: object | None = None, hint: str | None = None) -> Value:
        """A layout-unaware op: inputs in logical layout, output logical."""
        ins = [self.logical(x) for x in inputs]
        name = self.raw(kind, ins, attrs, hint)
        return Value(self.types[name], name)

    # ---------------------------------------------------------------- layout-aware ops

    def unary(self, kind: str, x: Value, hint: str | None = None) -> Value:
        name = self.raw(kind, [x], None, hint)
        return Value(x.type, name, nhwc=x.nhwc)

    def binary(self, kind: str, a: Value, b: Value, hint: str | None = None) -> Value:
        if a.dtype != b.dtype:
            raise Refusal(f"{kind} of {a.dtype.value} and {b.dtype.value} (Kiln does not promote types)")
        if not a.dtype.is_float:
            raise Refusal(f"{kind} on {a.dtype.value} tensors (Kiln's arithmetic is floating point)")
        out_shape = _broadcast(a.shape, b.shape)
        if (a.nhwc or b.nhwc) and len(out_shape) == 4:
            a2, b2 = self._relayout(a), self._relayout(b)
            if a2 is not None and b2 is not None:
                name = self.raw(kind, [a2, b2], None, hint)
                return Value(TensorType(a.dtype, out_shape), name, nhwc=True)
        name = self.raw(kind, [self.logical(a), self.logical(b)], None, hint)
        return Value(TensorType(a.dtype, out_shape), name)

    def _relayout(self, v: Value) -> Value | str | None:
        """`v` stored so that it broadcasts against an NHWC-stored 4-D value, or None if it cannot be."""
        if v.nhwc or v.rank == 0:
            return v
        if v.is_const and v.rank <= 4:
            data = np.reshape(v.data, (1,) * (4 - v.rank) + v.data.shape)
            return const_value(np.transpose(data, TO_NHWC), v.hint, v.dtype)
        return None

    def conv2d(self, x: Value, w_oihw: Value, bias: Value | None, stride: Sequence[int], pads: Sequence[int],
               dilation: Sequence[int], groups: int, hint: str) -> Value:
        if not w_oihw.is_const or w_oihw.rank != 4:
            raise Refusal("conv2d with a weight that is not a constant 4-D tensor")
        if bias is not None and not bias.is_const:
            raise Refusal("conv2d with a bias that is not a constant")
        x = self.as_nhwc(x)
        w = const_value(np.ascontiguousarray(np.transpose(w_oihw.data, (0, 2, 3, 1))), w_oihw.hint, w_oihw.dtype)
        attrs = Conv2dAttrs(stride=tuple(stride), pads=tuple(pads), dilation=tuple(dilation), groups=groups,
                            has_bias=bias is not None)
        name = self.raw("conv2d", [x, w] + ([bias] if bias is not None else []), attrs, hint)
        return self._nhwc_result(name, x.dtype)

    def _nhwc_result(self, name: str, dtype: DType) -> Value:
        n, h, w, c = self.types[name].shape
        return Value(TensorType(dtype, (n, c, h, w)), name, nhwc=True)

    def pool2d(self, x: Value, mode: str, kernel: Sequence[int], stride: Sequence[int], pads: Sequence[int],
               ceil_mode: bool, count_include_pad: bool, hint: str) -> Value:
        x = self.as_nhwc(x)
        attrs = Pool2dAttrs(mode, tuple(kernel), tuple(stride), tuple(pads), bool(ceil_mode), bool(count_include_pad))
        return self._nhwc_result(self.raw("pool2d", [x], attrs, hint), x.dtype)

    def batchnorm(self, x: Value, scale: Value, bias: Value, mean: Value, var: Value, eps: float, hint: str) -> Value:
        """Inference batch norm over axis 1 (the channel) of an NC or NCHW tensor."""
        if x.rank == 4:
            x = self.as_nhwc(x)
            name = self.raw("batchnorm", [x, scale, bias, mean, var], BatchNormAttrs(eps), hint)
            return self._nhwc_result(name, x.dtype)
        if x.rank == 2:
            return self.emit("batchnorm", [x, scale, bias, mean, var], BatchNormAttrs(eps), hint)
        raise Refusal(f"batch norm of a rank-{x.rank} tensor")

    def reduce(self, kind: str, x: Value, axes: Sequence[int], keepdims: bool, hint: str) -> Value:
        axes = sorted({a % x.rank for a in axes}) if x.rank else []
        if x.nhwc and axes == [2, 3]:
            # The spatial axes of NHWC are 1 and 2: global pooling needs no permute.
            name = self.raw(kind, [x], ReduceAttrs((1, 2), keepdims), hint)
            if keepdims:
                return self._nhwc_result(name, x.dtype)
            return Value(self.types[name], name)
        x = self.logical(x)
        if axes != list(range(axes[0], axes[-1] + 1)):
            # Kiln reduces consecutive axes: move the reduced ones last, then put kept dims back.
            rest = [i for i in range(x.rank) if i not in axes]
            moved = self.emit("permute", [x], PermuteAttrs(tuple(rest + axes)), "reduce_perm")
            out = self.emit(kind, [moved], ReduceAttrs(tuple(range(len(rest), x.rank)), False), hint)
            if keepdims:
                shape = tuple(1 if i in axes else d for i, d in enumerate(x.shape))
                out = self.reshape(out, shape, hint)
            return out
        return self.emit(kind, [x], ReduceAttrs(tuple(axes), keepdims), hint)

    # ---------------------------------------------------------------- layout-unaware helpers

    def reshape(self, x: Value, shape: Sequence[Dim], hint: str) -> Value:
        """Reshape to a fully known logical shape; a symbolic dim must sit where it sat in the input."""
        if x.is_const and all(isinstance(d, int) for d in shape):
            return const_value(np.reshape(x.data, tuple(shape)), x.hint, x.dtype)
        x = self.logical(x)
        attrs = reshape_attrs(x.type, tuple(shape))
        if attrs is None:
            raise Refusal(f"reshape of {x.type} to [{', '.join(map(str, shape))}]: each symbolic dim must be "
                          "carried whole (Kiln cannot merge or split symbolic dims in a reshape)")
        if tuple(shape) == x.shape:
            return x
        return self.emit("reshape", [x], attrs, hint)

    def permute(self, x: Value, perm: Sequence[int], hint: str) -> Value:
        perm = tuple(p % x.rank for p in perm)
        if perm == tuple(range(x.rank)):
            return x
        if x.is_const:
            return const_value(np.ascontiguousarray(np.transpose(x.data, perm)), x.hint, x.dtype)
        if x.nhwc:
            # Compose with the stored NHWC order: one permute, not two.
            composed = tuple(TO_NHWC.index(p) for p in perm)
            name = self.raw("permute", [x], PermuteAttrs(composed), hint)
            return Value(TensorType(x.dtype, tuple(x.shape[p] for p in perm)), name)
        return self.emit("permute", [x], PermuteAttrs(perm), hint)

    def slice(self, x: Value, axis: int, start: int, end: int | IntVar, step: int, hint: str) -> Value:
        axis %= x.rank
        d = x.shape[axis]
        if step < 1:
            raise Refusal(f"slice with step {step} (Kiln slices forward only)")
        if isinstance(end, IntVar):
            if isinstance(d, IntVar) and end == d and start == 0:
                return x
            if isinstance(d, IntVar) or (start, step) != (0, 1) or end.max > d:
                raise Refusal(f"a slice [{start}:{end}:{step}] of an axis of {d} (a symbolic bound takes "
                              "the leading elements of a static axis, at most all of them)")
            x = self.logical(x)
            ends = [dd.max if isinstance(dd, IntVar) else dd for dd in x.shape]
            ends[axis] = end
            return self.emit("slice", [x], SliceAttrs((0,) * x.rank, tuple(ends), (1,) * x.rank), hint)
        if isinstance(d, IntVar):
            if start == 0 and end >= d.max:
                return x
            raise Refusal(f"slice of the symbolic axis {d} (only whole symbolic axes can be kept)")
        start, end = _clamp(start, d), _clamp(end, d)
        end = max(start, end)
        if (start, end, step) == (0, d, 1):
            return x
        if x.is_const:
            index = tuple(slice(start, end, step) if i == axis else slice(None) for i in range(x.rank))
            return const_value(x.data[index], x.hint, x.dtype)
        x = self.logical(x)
        starts = [0] * x.rank
        ends = [dd.max if isinstance(dd, IntVar) else dd for dd in x.shape]
        steps = [1] * x.rank
        starts[axis], ends[axis], steps[axis] = start, end, step
        return self.emit("slice", [x], SliceAttrs(tuple(starts), tuple(ends), tuple(steps)), hint)

    def filled(self, t: TensorType, value: float | int | bool, hint: str) -> Value:
        """A tensor of type t holding `value` everywhere. Symbolic dims: a constant at their
        max, sliced to their run-time size (zeros_like of a [1, seq] tensor)."""
        full = tuple(d.max if isinstance(d, IntVar) else d for d in t.shape)
        if math.prod(full) > FILLED_MAX_ELEMENTS:
            raise Refusal(f"a {value!r}-filled {t} ({math.prod(full)} elements at its largest)")
        v = const_value(np.full(full, value, dtype=np.float32 if t.dtype.is_float else storage_dtype(t.dtype)),
                        hint, t.dtype)
        for axis, d in enumerate(t.shape):
            if isinstance(d, IntVar):
                v = self.slice(v, axis, 0, d, 1, hint)
        return v

    def concat(self, xs: Sequence[Value], axis: int, hint: str) -> Value:
        axis %= xs[0].rank
        if all(x.is_const for x in xs):
            return const_value(np.concatenate([x.data for x in xs], axis=axis), xs[0].hint, xs[0].dtype)
        return self.emit("concat", list(xs), ConcatAttrs(axis), hint)

    def softmax(self, x: Value, axis: int, hint: str) -> Value:
        axis %= x.rank
        if axis == x.rank - 1:
            return self.emit("softmax", [x], None, hint)
        perm = list(range(x.rank))
        perm[axis], perm[-1] = perm[-1], perm[axis]
        moved = self.permute(x, perm, hint + "_perm")
        out = self.emit("softmax", [moved], None, hint)
        return self.permute(out, perm, hint + "_back")

    def layernorm(self, x: Value, gamma: Value | None, beta: Value | None, eps: float, hint: str) -> Value:
        n = x.shape[-1]
        if not isinstance(n, int):
            raise Refusal("layer norm over a symbolic axis")
        gamma = gamma if gamma is not None else const_value(np.ones(n, np.float32), "ln_ones", x.dtype)
        beta = beta if beta is not None else const_value(np.zeros(n, np.float32), "ln_zeros", x.dtype)
        return self.emit("layernorm", [x, gamma, beta], LayerNormAttrs(eps), hint)

    def linear(self, x: Value, w_nk: Value, bias: Value | None, hint: str) -> Value:
        ins = [x, w_nk] + ([bias] if bias is not None else [])
        return self.emit("linear", ins, LinearAttrs(has_bias=bias is not None), hint)

    def cast(self, x: Value, to: DType, hint: str) -> Value:
        if x.dtype == to:
            return x
        if x.is_const:
            return const_value(x.data.astype(np.float32 if to is DType.BF16 else np.dtype(to.value)), x.hint, to)
        if not to.is_float:
            if not x.dtype.is_float and to in (DType.I32, DType.I64):
                # Index tensors: Kiln's embedding reads int32 and int64 alike, so widening is a no-op.
                return Value(TensorType(to, x.shape), x.name, x.nhwc)
            raise Refusal(f"cast from {x.dtype.value} to {to.value} (Kiln casts to float dtypes only)")
        name = self.raw("cast", [x], CastAttrs(to.value), hint)
        return Value(TensorType(to, x.shape), name, nhwc=x.nhwc)


def _clamp(i: int, d: int) -> int:
    if i < 0:
        i += d
    return min(max(i, 0), d)


def _broadcast(a: tuple[Dim, ...], b: tuple[Dim, ...]) -> tuple[Dim, ...]:
    rank = max(len(a), len(b))
    a = (1,) * (rank - len(a)) + tuple(a)
    b = (1,) * (rank - len(b)) + tuple(b)
    out = []
    for x, y in zip(a, b, strict=True):
        if x == 1:
            out.append(y)
        elif y == 1 or x == y:
            out.append(x)
        else:
            raise Refusal(f"shapes {list(map(str, a))} and {list(map(str, b))} do not broadcast")
    return tuple(out)


def scalar(value: float, dtype: DType) -> Value:
    return const_value(np.asarray(value, dtype=np.float32 if dtype is DType.BF16 else np.dtype(dtype.value)), "scalar",
                       dtype)


def handler_registry() -> tuple[dict[str, Callable[..., Any]], Callable[..., Callable]]:
    """A table of op handlers and the decorator that fills it: `@on("Relu", "aten.relu.default")`."""
    table: dict[str, Callable[..., Any]] = {}

    def on(*keys: str) -> Callable[[Callable], Callable]:
        def deco(fn: Callable) -> Callable:
            for k in keys:
                table[k] = fn
            return fn
        return deco
    return table, on
