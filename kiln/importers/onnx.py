"""Import an ONNX model (default domain, opsets 13 to the installed onnx's newest).

Shape arithmetic (Shape -> Gather -> Unsqueeze -> Concat -> Reshape) is folded at import time: a shape
is a constant vector whose entries may be Kiln IntVars, so a Reshape whose target carries the batch
symbol in place becomes Kiln's "copy this dim" (0). Any other node whose inputs are all constants is
evaluated with onnx's own reference implementation, so folding is exact.
"""
from __future__ import annotations

import math
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper
from onnx.reference import ReferenceEvaluator

from kiln.dtypes import DType
from kiln.importers.common import Builder, Refusal, Refusals, Value, const_value, handler_registry, kiln_dtype
from kiln.ir import Dim, Graph, IntVar, TensorType

MIN_OPSET = 13
_IDENT = re.compile(r"[^A-Za-z0-9_]")
_INT64_MAX = np.iinfo(np.int64).max


def _symbolic(data: np.ndarray) -> bool:
    return data.dtype == object


def _sym_value(dims: list[Dim]) -> Value:
    """A shape vector, possibly holding IntVars (object array: never emitted as a Kiln tensor)."""
    if all(isinstance(d, int) for d in dims):
        return const_value(np.asarray(dims, dtype=np.int64), "shape")
    return Value(TensorType(DType.I64, (len(dims),)), data=np.asarray(dims, dtype=object), hint="shape")


def _from_data(data: np.ndarray, hint: str, like: Value | None = None) -> Value:
    if _symbolic(data):
        if data.ndim != 1 and data.size > 1:
            raise Refusal("shape arithmetic on symbolic dims beyond vectors")
        return Value(TensorType(DType.I64, data.shape), data=data, hint=hint)
    dtype = like.dtype if like is not None and like.dtype is DType.BF16 else None
    return const_value(data, hint, dtype)


class OnnxImporter:
    def __init__(self, model: onnx.ModelProto, opset: int, dims: dict[str, tuple[int, int]], name: str):
        self.model = model
        self.opset = opset
        self.dims = dims
        self.b = Builder(name)
        self.refusals = Refusals()
        self.env: dict[str, Value | None] = {}
        self.poisoned: set[str] = set()
        self.float64: set[str] = set()  # float64 initializers: only an explicit Cast may read them
        self.consumers: dict[str, list[onnx.NodeProto]] = {}

    def run(self) -> Graph:
        g = self.model.graph
        for init in g.initializer:
            data = numpy_helper.to_array(init)
            self.env[init.name] = const_value(data, init.name)
            if data.dtype == np.float64:
                self.float64.add(init.name)
        self._inputs([i for i in g.input if i.name not in self.env])
        for node in g.node:
            for name in node.input:
                self.consumers.setdefault(name, []).append(node)
        for node in g.node:
            self._node(node)
        self.refusals.raise_if_any("ONNX")
        outs = []
        for o in g.output:
            v = self.env.get(o.name)
            if v is None:
                raise ValueError(f"ONNX output {o.name!r} is not computed")
            outs.append(v)
        try:
            return self.b.graph(outs, [o.name for o in g.output])
        except Refusal as err:
            raise ValueError(f"cannot import the ONNX model's outputs: {err.reason}") from None

    def _inputs(self, inputs: list[onnx.ValueInfoProto]) -> None:
        missing: list[str] = []
        for info in inputs:
            tt = info.type.tensor_type
            dtype = kiln_dtype(helper.tensor_dtype_to_np_dtype(tt.elem_type))
            shape: list[Dim] = []
            for i, d in enumerate(tt.shape.dim):
                if d.HasField("dim_value"):
                    shape.append(int(d.dim_value))
                elif d.dim_param and d.dim_param in self.dims:
                    lo, hi = self.dims[d.dim_param]
                    shape.append(IntVar(_IDENT.sub("_", d.dim_param), int(lo), int(hi)))
                else:
                    missing.append(f"{info.name}[{i}] ({d.dim_param or 'unnamed'})")
            if not missing:
                self.env[info.name] = self.b.input(info.name, tuple(shape), dtype)
        if missing:
            raise ValueError("dynamic ONNX dims need a range: pass dims={'name': (min, max)} for "
                             + ", ".join(missing) + " (unnamed dims must be made static or named in the export)")

    def _node(self, node: onnx.NodeProto) -> None:
        key = node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}.{node.op_type}"
        handler = HANDLERS.get(key)
        where = f"node {node.name or node.output[0]!r}"
        if any(n in self.poisoned for n in node.input if n):
            self.poisoned.update(node.output)
            if handler is None:
                self.refusals.add(key, where)
            return
        try:
            wide = [n for n in node.input if n in self.float64]
            if wide and node.op_type != "Cast":
                # Kiln has no float64; narrowing it here would approximate the model.
                raise Refusal(f"input {wide[0]!r} is a float64 initializer: export in float32 "
                              "(e.g. model.float()) or Cast it in the graph")
            inputs = [self.env[n] if n else None for n in node.input]
            attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
            outs = self._fold(node, inputs)
            if outs is None:
                if handler is None:
                    raise Refusal("")
                outs = handler(self, node, inputs, attrs)
            for name, v in zip(node.output, outs, strict=False):
                if name:
                    self.env[name] = v
        except Refusal as err:
            self.poisoned.update(node.output)
            self.refusals.add(key + (f" ({err.reason})" if err.reason else ""), where)

    def _fold(self, node: onnx.NodeProto, inputs: list[Value | None]) -> list[Value] | None:
        present = [v for v in inputs if v is not None]
        if not all(v.is_const and not _symbolic(v.data) for v in present):
            return None
        if node.domain not in ("", "ai.onnx") or node.op_type in ("RandomNormal", "RandomUniform", "RandomNormalLike",
                                                                  "RandomUniformLike", "Multinomial", "Bernoulli"):
            return None
        feeds = {n: v.data for n, v in zip(node.input, inputs, strict=True) if n}
        try:
            results = ReferenceEvaluator(node, opsets={"": self.opset}).run(None, feeds)
        except Exception:  # noqa: BLE001  (an op the reference lacks: the handler, or the refusal, decides)
            return None
        return [_from_data(np.asarray(r), out) for r, out in zip(results, node.output, strict=True)]

    def used(self, name: str) -> bool:
        return bool(name) and (name in self.consumers or name in {o.name for o in self.model.graph.output})


Handler = Callable[[OnnxImporter, onnx.NodeProto, list, dict], list]
HANDLERS, _on = handler_registry()




def _const_ints(v: Value | None, what: str) -> list:
    if v is None:
        return []
    if not v.is_const:
        raise Refusal(f"a computed {what} (Kiln needs it known at import time)")
    return [d if isinstance(d, IntVar) else int(d) for d in np.asarray(v.data).reshape(-1)]


def _axes(imp: OnnxImporter, inputs: list, attrs: dict, index: int) -> list[int] | None:
    if len(inputs) > index and inputs[index] is not None:
        return [int(a) for a in _const_ints(inputs[index], "axes")]
    return list(attrs["axes"]) if "axes" in attrs else None


# ---------------------------------------------------------------- constants and shapes

@_on("Constant")
def _constant(imp, node, inputs, attrs) -> list:
    if "value" in attrs:
        return [const_value(numpy_helper.to_array(attrs["value"]), node.output[0])]
    for key, dt in (("value_float", np.float32), ("value_floats", np.float32), ("value_int", np.int64),
                    ("value_ints", np.int64)):
        if key in attrs:
            return [const_value(np.asarray(attrs[key], dtype=dt), node.output[0])]
    raise Refusal(f"Constant with {sorted(attrs)}")


@_on("Identity", "Dropout")
def _identity(imp, node, inputs, attrs) -> list:
    if node.op_type == "Dropout" and imp.used(node.output[1] if len(node.output) > 1 else ""):
        raise Refusal("Dropout's mask output")
    return [inputs[0]]


@_on("Shape")
def _shape(imp, node, inputs, attrs) -> list:
    dims = list(inputs[0].shape)
    start, end = attrs.get("start", 0), attrs.get("end", len(dims))
    return [_sym_value(dims[slice(start, end)])]


@_on("Size")
def _size(imp, node, inputs, attrs) -> list:
    if not inputs[0].type.is_static:
        raise Refusal("Size of a tensor with symbolic dims")
    return [const_value(np.asarray(math.prod(inputs[0].shape), np.int64), node.output[0])]


def _np_or_sym(fn: Callable[..., np.ndarray], *arrays: np.ndarray) -> Value:
    out = fn(*arrays)
    return _from_data(np.asarray(out, dtype=object) if any(_symbolic(a) for a in arrays) else np.asarray(out), "shape")


@_on("Equal")
def _equal(imp, node, inputs, attrs) -> list:
    # Shape arithmetic only (torch's expand(-1) export tests each dim against -1); an
    # IntVar is >= 1, so it never equals a negative constant. Kiln has no compare op.
    a, b = inputs
    if not (a.is_const and b.is_const):
        raise Refusal("Equal of computed tensors (only shape arithmetic is folded)")
    return [_from_data(np.asarray(np.equal(a.data, b.data), dtype=bool), node.output[0])]


@_on("Where")
def _where(imp, node, inputs, attrs) -> list:
    cond, x, y = inputs
    if not (cond.is_const and x.is_const and y.is_const):
        raise Refusal("Where of computed tensors (only shape arithmetic is folded)")
    return [_np_or_sym(lambda c, a, b: np.where(c.astype(bool), a, b), cond.data, x.data, y.data)]


@_on("Gather")
def _gather(imp, node, inputs, attrs) -> list:
    data, idx = inputs
    axis = attrs.get("axis", 0) % max(data.rank, 1)
    if data.is_const and idx.is_const:
        return [_np_or_sym(lambda d, i: np.take(d, i, axis=axis), data.data, idx.data.astype(np.int64))]
    if data.is_const and axis == 0 and data.rank == 2:
        return [imp.b.emit("embedding", [data, idx], None, node.output[0])]
    if idx.is_const and idx.data.size == 1:
        d = data.shape[axis]
        if isinstance(d, IntVar):
            raise Refusal("Gather on a symbolic axis")
        i = int(idx.data.reshape(-1)[0]) % d
        picked = imp.b.slice(data, axis, i, i + 1, 1, node.output[0])
        shape = list(data.shape)
        if idx.rank == 0:
            del shape[axis]
        return [imp.b.reshape(picked, tuple(shape), node.output[0])]
    raise Refusal("Gather of computed data with computed indices")


@_on("Unsqueeze")
def _unsqueeze(imp, node, inputs, attrs) -> list:
    x = inputs[0]
    given = _axes(imp, inputs, attrs, 1) or []
    axes = sorted(a % (x.rank + len(given)) for a in given)
    if x.is_const:
        return [_np_or_sym(lambda d: np.expand_dims(d, tuple(axes)), x.data)]
    shape = list(x.shape)
    for a in axes:
        shape.insert(a, 1)
    return [imp.b.reshape(x, tuple(shape), node.output[0])]


@_on("Squeeze")
def _squeeze(imp, node, inputs, attrs) -> list:
    x = inputs[0]
    axes = _axes(imp, inputs, attrs, 1)
    axes = [a % x.rank for a in axes] if axes else [i for i, d in enumerate(x.shape) if d == 1]
    if x.is_const:
        return [_np_or_sym(lambda d: np.squeeze(d, tuple(axes)), x.data)]
    return [imp.b.reshape(x, tuple(d for i, d in enumerate(x.shape) if i not in axes), node.output[0])]


@_on("Concat")
def _concat(imp, node, inputs, attrs) -> list:
    xs = [v for v in inputs if v is not None]
    axis = attrs["axis"]
    if all(v.is_const for v in xs):
        return [_np_or_sym(lambda *ds: np.concatenate(ds, axis=axis), *[v.data for v in xs])]
    return [imp.b.concat(xs, axis, node.output[0])]


@_on("Cast", "CastLike")
def _cast(imp, node, inputs, attrs) -> list:
    x = inputs[0]
    if node.op_type == "CastLike":
        to = inputs[1].dtype
    else:
        to = kiln_dtype(helper.tensor_dtype_to_np_dtype(attrs["to"]))
    if x.is_const and _symbolic(x.data):
        if to not in (DType.I32, DType.I64):
            raise Refusal("a cast of a symbolic shape to a non-integer type")
        return [x]
    return [imp.b.cast(x, to, node.output[0])]


@_on("ConstantOfShape")
def _constant_of_shape(imp, node, inputs, attrs) -> list:
    shape = _const_ints(inputs[0], "shape")
    value = numpy_helper.to_array(attrs["value"]) if "value" in attrs else np.zeros(1, np.float32)
    if any(isinstance(d, IntVar) for d in shape):
        # zeros_like of a [1, seq] tensor: a constant at the symbols' max, sliced at run time.
        dtype = const_value(value).dtype
        return [imp.b.filled(TensorType(dtype, tuple(shape)), value.reshape(-1)[0].item(), node.output[0])]
    return [const_value(np.full(shape, value.reshape(-1)[0], dtype=value.dtype), node.output[0])]


def _target_shape(x: Value, spec: list, allowzero: bool) -> tuple[Dim, ...]:
    dims: list[Dim | None] = []
    for i, d in enumerate(spec):
        if isinstance(d, IntVar):
            dims.append(d)
        elif d == 0 and not allowzero:
            dims.append(x.shape[i])
        elif d == -1:
            dims.append(None)
        else:
            dims.append(int(d))
    if None in dims:
        total = math.prod(d for d in x.shape if isinstance(d, int))
        known = math.prod(d for d in dims if isinstance(d, int))
        if {s.name for s in x.type.symbols()} != {d.name for d in dims if isinstance(d, IntVar)} or known == 0:
            raise Refusal(f"Reshape of {x.type} to {spec}: -1 would hide a symbolic dim")
        dims[dims.index(None)] = total // known
    return tuple(dims)  # type: ignore[arg-type]


@_on("Reshape")
def _reshape(imp, node, inputs, attrs) -> list:
    x = inputs[0]
    shape = _target_shape(x, _const_ints(inputs[1], "shape"), bool(attrs.get("allowzero", 0)))
    return [imp.b.reshape(x, shape, node.output[0])]


@_on("Flatten")
def _flatten(imp, node, inputs, attrs) -> list:
    x = inputs[0]
    axis = attrs.get("axis", 1) % (x.rank + 1) if x.rank else 0

    def merge(dims: tuple[Dim, ...]) -> Dim:
        if len(dims) == 1:
            return dims[0]
        if any(isinstance(d, IntVar) for d in dims):
            raise Refusal("Flatten that merges a symbolic dim with others")
        return math.prod(dims)  # type: ignore[arg-type]

    return [imp.b.reshape(x, (merge(x.shape[:axis]), merge(x.shape[axis:])), node.output[0])]


@_on("Transpose")
def _transpose(imp, node, inputs, attrs) -> list:
    x = inputs[0]
    perm = attrs.get("perm", list(reversed(range(x.rank))))
    return [imp.b.permute(x, perm, node.output[0])]


@_on("Slice")
def _slice(imp, node, inputs, attrs) -> list:
    x = inputs[0]
    starts = _const_ints(inputs[1], "slice start")
    ends = _const_ints(inputs[2], "slice end")
    axes = _const_ints(inputs[3], "slice axes") if len(inputs) > 3 and inputs[3] is not None else list(range(len(starts)))
    steps = _const_ints(inputs[4], "slice steps") if len(inputs) > 4 and inputs[4] is not None else [1] * len(starts)
    if x.is_const and not any(isinstance(e, IntVar) for e in ends):
        index = [slice(None)] * x.rank
        for a, s, e, st in zip(axes, starts, ends, steps, strict=True):
            index[a % x.rank] = slice(s, e, st)
        return [_np_or_sym(lambda d: d[tuple(index)], x.data)]
    for a, s, e, st in zip(axes, starts, ends, steps, strict=True):
        d = x.shape[a % x.rank]
        if isinstance(e, IntVar) and not isinstance(d, IntVar) and (int(s), int(st)) == (0, 1):
            x = imp.b.slice(x, a, 0, e, 1, node.output[0])  # position_ids[:, :seq]
            continue
        if isinstance(e, IntVar):
            if e != d:
                raise Refusal(f"Slice ending at {e} on an axis of size {d}")
            e = d.max
        size = d.max if isinstance(d, IntVar) else d
        x = imp.b.slice(x, a, int(s), min(int(e), size) if e < _INT64_MAX else size, int(st), node.output[0])
    return [x]


@_on("Split")
def _split(imp, node, inputs, attrs) -> list:
    x = inputs[0]
    axis = attrs.get("axis", 0) % x.rank
    d = x.shape[axis]
    if isinstance(d, IntVar):
        raise Refusal("Split of a symbolic axis")
    sizes = _const_ints(inputs[1], "split sizes") if len(inputs) > 1 and inputs[1] is not None else list(
        attrs.get("split", []))
    if not sizes:
        n = attrs.get("num_outputs", len(node.output))
        chunk = -(-d // n)
        sizes = [min(chunk, d - i * chunk) for i in range(n)]
    outs, start = [], 0
    for size, name in zip(sizes, node.output, strict=True):
        outs.append(imp.b.slice(x, axis, start, start + int(size), 1, name))
        start += int(size)
    return outs


@_on("Expand")
def _expand(imp, node, inputs, attrs) -> list:
    x = inputs[0]
    shape = _const_ints(inputs[1], "expand shape")
    users = {n.op_type for n in imp.consumers.get(node.output[0], [])}
    if users and users <= set(_BINARY) and len(shape) <= max(x.rank, len(shape)):
        # Every user broadcasts by itself (the binary op checks the shapes agree).
        if all(s == 1 or x.rank - len(shape) + i < 0 or x.shape[x.rank - len(shape) + i] in (1, s)
               for i, s in enumerate(shape)):
            return [x]
    consumers = imp.consumers.get(node.output[0], [])
    if consumers and all(n.op_type in _BINARY or n.op_type == "Concat" for n in consumers) and len(shape) == x.rank:
        # A concat repeats an input whose dims before its axis are 1 (ViT's class
        # token); the expand may only grow those dims, never the axis or later ones.
        axes = [next(a.i for a in n.attribute if a.name == "axis") % x.rank
                for n in consumers if n.op_type == "Concat"]
        if all(x.shape[i] == 1 for a in axes for i in range(a)) and all(
                s == 1 or s == x.shape[i] for a in axes for i, s in enumerate(shape) if i >= a):
            return [x]
    if any(isinstance(s, IntVar) for s in shape):
        raise Refusal("Expand to a symbolic shape feeding a non-broadcasting op")
    if x.is_const:
        return [const_value(np.broadcast_to(x.data, np.broadcast_shapes(x.data.shape, tuple(shape))).copy(),
                            node.output[0], x.dtype)]
    raise Refusal("Expand of a computed tensor feeding a non-broadcasting op (Kiln has no broadcast-copy op)")


# ---------------------------------------------------------------- arithmetic

_BINARY = {"Add": "add", "Sub": "sub", "Mul": "mul", "Div": "div", "Pow": "pow", "Max": "maximum", "Min": "minimum"}
_UNARY = {"Relu": "relu", "Sigmoid": "sigmoid", "Tanh": "tanh", "Exp": "exp", "Neg": "neg", "Sqrt": "sqrt",
          "Reciprocal": "reciprocal", "Erf": "erf", "Abs": "abs", "Log": "log"}


def _binary(imp, node, inputs, attrs) -> list:
    kind = _BINARY[node.op_type]
    if len(inputs) != 2:
        raise Refusal(f"{node.op_type} with {len(inputs)} inputs")
    a, b = inputs
    if kind == "pow" and b.is_const and b.dtype != a.dtype and a.dtype.is_float:
        b = const_value(b.data.astype(np.float32), b.hint, a.dtype)
    return [imp.b.binary(kind, a, b, node.output[0])]


def _unary(imp, node, inputs, attrs) -> list:
    return [imp.b.unary(_UNARY[node.op_type], inputs[0], node.output[0])]


for _op in _BINARY:
    HANDLERS[_op] = _binary
for _op in _UNARY:
    HANDLERS[_op] = _unary


@_on("Gelu")
def _gelu(imp, node, inputs, attrs) -> list:
    approximate = attrs.get("approximate", b"none")
    approximate = approximate.decode() if isinstance(approximate, bytes) else approximate
    return [imp.b.unary("gelu_tanh" if approximate == "tanh" else "gelu", inputs[0], node.output[0])]


@_on("Softmax")
def _softmax(imp, node, inputs, attrs) -> list:
    return [imp.b.softmax(inputs[0], attrs.get("axis", -1), node.output[0])]


@_on("MatMul")
def _matmul(imp, node, inputs, attrs) -> list:
    a, b = inputs
    if b.is_const and b.rank == 2 and a.rank >= 2:
        w = const_value(np.ascontiguousarray(b.data.T), b.hint, b.dtype)
        return [imp.b.linear(a, w, None, node.output[0])]
    if a.rank < 2 or b.rank < 2:
        raise Refusal("MatMul with a 1-D operand")
    return [imp.b.emit("matmul", [a, b], None, node.output[0])]


@_on("Gemm")
def _gemm(imp, node, inputs, attrs) -> list:
    a, b = inputs[0], inputs[1]
    c = inputs[2] if len(inputs) > 2 else None
    alpha, beta = attrs.get("alpha", 1.0), attrs.get("beta", 1.0)
    if attrs.get("transA", 0):
        a = imp.b.permute(a, (1, 0), node.output[0] + "_aT")
    name = node.output[0]
    bias = c if c is not None and beta == 1.0 and c.is_const and c.rank == 1 and alpha == 1.0 else None
    if b.is_const:
        w = b if attrs.get("transB", 0) else const_value(np.ascontiguousarray(b.data.T), b.hint, b.dtype)
        y = imp.b.linear(a, w, bias, name)
    else:
        b = imp.b.permute(b, (1, 0), name + "_bT") if attrs.get("transB", 0) else b
        y = imp.b.emit("matmul", [a, b], None, name)
    if alpha != 1.0:
        y = imp.b.binary("mul", y, const_value(np.asarray(alpha, np.float32), "alpha", y.dtype), name + "_alpha")
    if c is not None and bias is None:
        if beta != 1.0:
            c = imp.b.binary("mul", c, const_value(np.asarray(beta, np.float32), "beta", c.dtype), name + "_beta")
        y = imp.b.binary("add", y, c, name + "_c")
    return [y]


# ---------------------------------------------------------------- CNN ops

def _spatial(attrs: dict, x: Value, kernel: tuple[int, int]) -> tuple[tuple[int, int], tuple[int, ...], tuple[int, int]]:
    strides = tuple(attrs.get("strides", (1, 1)))
    dilations = tuple(attrs.get("dilations", (1, 1)))
    auto_pad = attrs.get("auto_pad", b"NOTSET")
    auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else auto_pad
    if auto_pad in ("NOTSET", ""):
        pads = tuple(attrs.get("pads", (0, 0, 0, 0)))
    elif auto_pad == "VALID":
        pads = (0, 0, 0, 0)
    else:
        lo_hi = []
        for size, k, s, d in zip(x.shape[2:], kernel, strides, dilations, strict=True):
            total = max((-(-size // s) - 1) * s + (k - 1) * d + 1 - size, 0)
            small = total // 2
            lo_hi.append((total - small, small) if auto_pad == "SAME_LOWER" else (small, total - small))
        pads = (lo_hi[0][0], lo_hi[1][0], lo_hi[0][1], lo_hi[1][1])
    return strides, pads, dilations  # type: ignore[return-value]


def _check_2d(x: Value, what: str) -> None:
    if x.rank != 4:
        raise Refusal(f"{what} on a rank-{x.rank} input (Kiln has the 2-D form)")


@_on("Conv")
def _conv(imp, node, inputs, attrs) -> list:
    x, w = inputs[0], inputs[1]
    bias = inputs[2] if len(inputs) > 2 else None
    _check_2d(x, "Conv")
    if not w.is_const:
        raise Refusal("Conv with a computed weight")
    strides, pads, dilations = _spatial(attrs, x, tuple(w.shape[2:]))
    return [imp.b.conv2d(x, w, bias, strides, pads, dilations, attrs.get("group", 1), node.output[0])]


def _pool(imp, node, inputs, attrs, mode: str) -> list:
    x = inputs[0]
    _check_2d(x, node.op_type)
    if len(node.output) > 1 and imp.used(node.output[1]):
        raise Refusal("MaxPool's Indices output")
    kernel = tuple(attrs["kernel_shape"])
    strides, pads, dilations = _spatial(attrs, x, kernel)
    if dilations != (1, 1):
        raise Refusal("pooling with dilations")
    include = bool(attrs.get("count_include_pad", 0))
    return [imp.b.pool2d(x, mode, kernel, strides, pads, bool(attrs.get("ceil_mode", 0)), include, node.output[0])]


HANDLERS["MaxPool"] = lambda imp, node, inputs, attrs: _pool(imp, node, inputs, attrs, "max")
HANDLERS["AveragePool"] = lambda imp, node, inputs, attrs: _pool(imp, node, inputs, attrs, "avg")


@_on("GlobalAveragePool", "GlobalMaxPool")
def _global_pool(imp, node, inputs, attrs) -> list:
    _check_2d(inputs[0], node.op_type)
    kind = "reduce_mean" if node.op_type == "GlobalAveragePool" else "reduce_max"
    return [imp.b.reduce(kind, inputs[0], (2, 3), True, node.output[0])]


@_on("BatchNormalization")
def _batchnorm(imp, node, inputs, attrs) -> list:
    if attrs.get("training_mode", 0) or any(imp.used(o) for o in node.output[1:]):
        raise Refusal("BatchNormalization in training mode")
    x, scale, bias, mean, var = inputs
    return [imp.b.batchnorm(x, scale, bias, mean, var, float(attrs.get("epsilon", 1e-5)), node.output[0])]


@_on("LayerNormalization")
def _layernorm(imp, node, inputs, attrs) -> list:
    x = inputs[0]
    if attrs.get("axis", -1) % x.rank != x.rank - 1:
        raise Refusal("LayerNormalization over more than the last axis")
    if any(imp.used(o) for o in node.output[1:]):
        raise Refusal("LayerNormalization's Mean/InvStdDev outputs")
    bias = inputs[2] if len(inputs) > 2 else None
    return [imp.b.layernorm(x, inputs[1], bias, float(attrs.get("epsilon", 1e-5)), node.output[0])]


def _reduce(kind: str, axes_input_from: int) -> Handler:
    def fn(imp, node, inputs, attrs) -> list:
        x = inputs[0]
        from_input = imp.opset >= axes_input_from
        axes = _axes(imp, inputs, attrs, 1) if from_input else attrs.get("axes")
        if not axes:
            if attrs.get("noop_with_empty_axes", 0):
                return [x]
            axes = list(range(x.rank))
        return [imp.b.reduce(kind, x, axes, bool(attrs.get("keepdims", 1)), node.output[0])]
    return fn


HANDLERS["ReduceMean"] = _reduce("reduce_mean", 18)
HANDLERS["ReduceMax"] = _reduce("reduce_max", 18)
HANDLERS["ReduceSum"] = _reduce("reduce_sum", 13)


def from_onnx(model: str | Path | onnx.ModelProto, *, dims: dict[str, tuple[int, int]] | None = None,
              name: str | None = None) -> Graph:
    """Import an ONNX model. Raises UnsupportedOps listing every op Kiln cannot express, with counts."""
    if isinstance(model, str | Path):
        proto = onnx.load(str(model))
        default_name = Path(model).stem
    else:
        proto = model
        default_name = proto.graph.name or "model"
    opsets = {o.domain: o.version for o in proto.opset_import}
    opset = opsets.get("", opsets.get("ai.onnx"))
    newest = onnx.defs.onnx_opset_version()
    if opset is None or not MIN_OPSET <= opset <= newest:
        raise ValueError(f"ONNX opset {opset} is not supported: Kiln imports opsets {MIN_OPSET} to {newest}")
    return OnnxImporter(proto, opset, dict(dims or {}), name or default_name).run()
