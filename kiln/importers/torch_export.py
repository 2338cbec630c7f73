"""Import a PyTorch module through torch.export (core ATen after decompositions).

aten.linear and aten.matmul are kept whole: their decompositions flatten batch dims into one
(view [B*S, K] -> addmm), which Kiln's reshape cannot express for a symbolic batch. Nodes whose tensor
inputs are all constants (parameter transposes, position-id slices, zeros_like of a buffer) are
evaluated by torch itself at import time, so folding is exact.
"""
from __future__ import annotations

import inspect
import operator
import os
import re
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch.export import ExportedProgram
from torch.export.graph_signature import InputKind

from kiln.dtypes import DType
from kiln.importers.common import Builder, Refusal, Refusals, Value, const_value, handler_registry, scalar
from kiln.ir import Dim, Graph, IntVar, TensorType

_DTYPES = {torch.float32: DType.F32, torch.float16: DType.F16, torch.bfloat16: DType.BF16,
           torch.int32: DType.I32, torch.int64: DType.I64, torch.bool: DType.BOOL}
_TORCH_DIR = os.path.dirname(torch.__file__)
_FRAME = re.compile(r'File "([^"]+)", line (\d+), in [^\n]*\n\s*([^\n]*)')

# Nodes that only assert facts or compute sizes: no tensor, nothing to import.
_IGNORED = {"aten._assert_tensor_metadata.default", "aten._assert_scalar.default", "aten.sym_constrain_range.default",
            "aten.sym_constrain_range_for_size.default", "aten._assert_async.msg"}
# Ops whose result depends on their input's shape only: with a static shape they fold to a constant.
_LIKE = {"aten.zeros_like.default", "aten.ones_like.default", "aten.full_like.default", "aten.empty_like.default",
         "aten.new_zeros.default", "aten.new_ones.default", "aten.new_full.default"}
_RANDOM = ("rand", "normal", "bernoulli", "dropout", "uniform", "multinomial", "empty")


def _dtype(t: torch.dtype) -> DType:
    if t not in _DTYPES:
        raise Refusal(f"dtype {t} (Kiln has float32/float16/bfloat16 and int32/int64/bool)")
    return _DTYPES[t]


def _numpy(t: torch.Tensor) -> np.ndarray:
    t = t.detach().cpu()
    return (t.float() if t.dtype == torch.bfloat16 else t).contiguous().numpy()


def _const(t: torch.Tensor, hint: str) -> Value:
    return const_value(_numpy(t), hint, _dtype(t.dtype))


def _where(node: torch.fx.Node) -> str:
    """The user's source line that made `node`: the innermost frame outside torch itself."""
    frames = _FRAME.findall(node.meta.get("stack_trace") or "")
    user = [f for f in frames if not os.path.abspath(f[0]).startswith(_TORCH_DIR)] or frames
    if not user:
        return f"node {node.name}"
    path, line, code = user[-1]
    return f"{path}:{line} ({code.strip()})"


def _finite(bound: Any) -> int | None:
    """A range bound as an int, or None where torch left it unbounded (int_oo)."""
    try:
        value = int(bound)
    except (TypeError, ValueError, OverflowError, AttributeError):
        return None
    return value if abs(value) < 2**62 else None


class _Sym:
    """A size computed from shapes (sym_size and its arithmetic): never a Kiln tensor."""

    def __init__(self, dim: Dim | None):
        self.dim = dim


class TorchImporter:
    def __init__(self, ep: ExportedProgram, name: str, dim_names: dict[str, str]):
        self.ep = ep
        self.b = Builder(name)
        self.refusals = Refusals()
        self.dim_names = dim_names
        self.env: dict[str, Any] = {}
        self.poisoned: set[str] = set()
        self.symbols: dict[str, IntVar] = {}

    # ---------------------------------------------------------------- shapes

    def dim(self, d: Any) -> Dim:
        if isinstance(d, int):
            return d
        expr = d.node.expr if isinstance(d, torch.SymInt) else d
        if getattr(expr, "is_Integer", False):
            return int(expr)
        if not getattr(expr, "is_Symbol", False):
            raise Refusal(f"a derived symbolic size {expr} (Kiln dims are integers or one named symbol)")
        key = str(expr)
        if key not in self.symbols:
            vr = self.ep.range_constraints.get(expr)
            name = self.dim_names.get(key, key)
            upper = _finite(vr.upper) if vr is not None else None
            if upper is None:
                raise ValueError(f"symbolic dim {name!r} has no upper bound; Kiln plans memory for the largest size, "
                                 f"so pass one: dynamic_shapes=... torch.export.Dim({name!r}, max=N)")
            self.symbols[key] = IntVar(name, max(1, _finite(vr.lower) or 1), upper)
        return self.symbols[key]

    def out_type(self, node: torch.fx.Node) -> TensorType:
        val = node.meta.get("val")
        if not isinstance(val, torch.Tensor):
            raise Refusal(f"a node without a tensor result ({type(val).__name__})")
        return TensorType(_dtype(val.dtype), tuple(self.dim(d) for d in val.shape))

    # ---------------------------------------------------------------- the walk

    def run(self) -> Graph:
        specs = {s.arg.name: s for s in self.ep.graph_signature.input_specs if hasattr(s.arg, "name")}
        outputs: list[Any] = []
        for node in self.ep.graph.nodes:
            if node.op == "placeholder":
                self._placeholder(node, specs.get(node.name))
            elif node.op == "call_function":
                self._call(node)
            elif node.op == "output":
                outputs = list(torch.fx.node.map_arg(node.args[0], lambda n: n))
            elif node.op == "get_attr":
                self.env[node.name] = getattr(self.ep.graph_module, node.target)
        self.refusals.raise_if_any("PyTorch")
        values = []
        for out in outputs:
            v = self.env.get(out.name) if isinstance(out, torch.fx.Node) else None
            if not isinstance(v, Value):
                raise ValueError(f"output {out} is not a tensor Kiln can return")
            values.append(v)
        hints = ["output"] if len(values) == 1 else [f"output_{i}" for i in range(len(values))]
        try:
            return self.b.graph(values, hints)
        except Refusal as err:
            raise ValueError(f"cannot import the PyTorch model's outputs: {err.reason}") from None

    def _placeholder(self, node: torch.fx.Node, spec: Any) -> None:
        kind = spec.kind if spec is not None else InputKind.USER_INPUT
        if kind == InputKind.USER_INPUT:
            val = node.meta.get("val")
            if not isinstance(val, torch.Tensor):
                raise ValueError(f"input {node.name!r} is a {type(val).__name__}; Kiln graph inputs are tensors")
            t = self.out_type(node)
            self.env[node.name] = self.b.input(node.name, t.shape, t.dtype)
        elif kind in (InputKind.PARAMETER, InputKind.BUFFER, InputKind.CONSTANT_TENSOR):
            target = spec.target
            tensor = self.ep.state_dict[target] if target in self.ep.state_dict else self.ep.constants[target]
            self.env[node.name] = _const(tensor, target)
        else:
            raise ValueError(f"input {node.name!r} of kind {kind.name} cannot be imported")

    def _call(self, node: torch.fx.Node) -> None:
        key = str(node.target) if not callable(node.target) or hasattr(node.target, "_schema") else getattr(
            node.target, "__name__", str(node.target))
        if key in _IGNORED:
            return
        deps = [n.name for n in node.all_input_nodes]
        handler = HANDLERS.get(key)
        if any(d in self.poisoned for d in deps):
            self.poisoned.add(node.name)
            if handler is None and not self._sym_node(node):
                self.refusals.add(key, _where(node))
            return
        try:
            if self._sym_node(node):
                val = node.meta.get("val")
                self.env[node.name] = _Sym(self.dim(val) if isinstance(val, torch.SymInt | int) else None)
                return
            args, kwargs = self._args(node)
            folded = self._fold(node, key, args, kwargs)
            if folded is not None:
                self.env[node.name] = folded
                return
            if handler is None:
                raise Refusal("")
            result = handler(self, node, *args, **kwargs)
            if isinstance(result, Value):
                self._check(node, result)
            self.env[node.name] = result
        except Refusal as err:
            self.poisoned.add(node.name)
            self.refusals.add(key + (f" ({err.reason})" if err.reason else ""), _where(node))

    def _sym_node(self, node: torch.fx.Node) -> bool:
        return isinstance(node.meta.get("val"), torch.SymInt | torch.SymFloat | torch.SymBool | int | float)

    def _args(self, node: torch.fx.Node) -> tuple[tuple, dict]:
        def value(n: torch.fx.Node) -> Any:
            v = self.env.get(n.name)
            if isinstance(v, _Sym):
                return v.dim if v.dim is not None else v
            return v

        args = torch.fx.node.map_arg(node.args, value)
        kwargs = torch.fx.node.map_arg(node.kwargs, value)
        return tuple(args), dict(kwargs)

    def _fold(self, node: torch.fx.Node, key: str, args: tuple, kwargs: dict) -> Any:
        """Evaluate a node with torch when every tensor it reads is a known constant."""
        if not isinstance(node.target, torch._ops.OpOverload) or any(r in key for r in _RANDOM):
            return None
        leaves = list(torch.utils._pytree.tree_leaves((args, kwargs)))
        if any(isinstance(x, IntVar | _Sym) for x in leaves):
            return None
        tensors = [x for x in leaves if isinstance(x, Value)]
        val = node.meta.get("val")
        if key in _LIKE and isinstance(val, torch.Tensor) and all(isinstance(d, int) for d in val.shape):
            return _const(node.target(*_to_torch(args, like=True), **_to_torch(kwargs, like=True)), node.name)
        if not all(x.is_const for x in tensors):
            return None
        if not tensors and not isinstance(val, torch.Tensor):
            return None
        out = node.target(*_to_torch(args), **_to_torch(kwargs))
        if isinstance(out, torch.Tensor):
            return _const(out, node.name)
        if isinstance(out, tuple | list) and all(isinstance(o, torch.Tensor) for o in out):
            return tuple(_const(o, node.name) for o in out)
        return None

    def _check(self, node: torch.fx.Node, v: Value) -> None:
        want = self.out_type(node)
        if str(node.target) == "aten.expand.default" and v.type.dtype == want.dtype and v.rank == want.rank and all(
                a in (1, b) for a, b in zip(v.type.shape, want.shape, strict=True)):
            return  # left unexpanded on purpose: every user broadcasts (see _expand)
        if v.type != want:
            raise Refusal(f"Kiln's result {v.type} differs from PyTorch's {want}")


def _to_torch(tree: Any, like: bool = False) -> Any:
    def conv(x: Any) -> Any:
        if isinstance(x, Value):
            if like and not x.is_const:
                return torch.zeros(tuple(x.shape), dtype={v: k for k, v in _DTYPES.items()}[x.dtype])
            data = torch.from_numpy(np.array(x.data))
            return data.to(torch.bfloat16) if x.dtype is DType.BF16 else data
        return x

    return torch.utils._pytree.tree_map(conv, tree)


# ---------------------------------------------------------------- handlers

Handler = Callable[..., Any]
HANDLERS, _on = handler_registry()




def _tensor(v: Any, what: str = "operand") -> Value:
    if not isinstance(v, Value):
        raise Refusal(f"a non-tensor {what} ({type(v).__name__})")
    return v


def _operands(a: Any, b: Any) -> tuple[Value, Value]:
    if isinstance(a, Value) and isinstance(b, Value):
        return a, b
    if isinstance(a, Value) and isinstance(b, int | float | bool):
        return a, scalar(b, a.dtype)
    if isinstance(b, Value) and isinstance(a, int | float | bool):
        return scalar(a, b.dtype), b
    raise Refusal(f"operands {type(a).__name__} and {type(b).__name__}")


for _kind in ("relu", "sigmoid", "tanh", "exp", "neg", "sqrt", "rsqrt", "reciprocal", "erf", "abs", "log", "silu"):
    HANDLERS[f"aten.{_kind}.default"] = (lambda kind: lambda imp, node, x: imp.b.unary(kind, _tensor(x), node.name))(_kind)

for _aten, _kind in (("add", "add"), ("sub", "sub"), ("mul", "mul"), ("div", "div"), ("maximum", "maximum"),
                     ("minimum", "minimum")):
    def _make(kind: str) -> Handler:
        def fn(imp: TorchImporter, node: torch.fx.Node, a: Any, b: Any, alpha: Any = 1, rounding_mode: Any = None) -> Value:
            if rounding_mode is not None:
                raise Refusal(f"division with rounding_mode={rounding_mode!r}")
            a, b = _operands(a, b)
            if alpha != 1:
                b = imp.b.binary("mul", b, scalar(alpha, b.dtype), node.name + "_alpha")
            return imp.b.binary(kind, a, b, node.name)
        return fn
    for _overload in ("Tensor", "Scalar", "default"):
        HANDLERS[f"aten.{_aten}.{_overload}"] = _make(_kind)


@_on("aten.rsub.Scalar", "aten.rsub.Tensor")
def _rsub(imp: TorchImporter, node, x, other, alpha=1) -> Value:
    a, b = _operands(other, x)
    if alpha != 1:
        b = imp.b.binary("mul", b, scalar(alpha, b.dtype), node.name + "_alpha")
    return imp.b.binary("sub", a, b, node.name)


@_on("aten.pow.Tensor_Scalar", "aten.pow.Tensor_Tensor", "aten.pow.Scalar")
def _pow(imp: TorchImporter, node, a, b) -> Value:
    a, b = _operands(a, b)
    return imp.b.binary("pow", a, b, node.name)


@_on("aten.gelu.default")
def _gelu(imp: TorchImporter, node, x, approximate="none") -> Value:
    return imp.b.unary("gelu_tanh" if approximate == "tanh" else "gelu", _tensor(x), node.name)


@_on("aten.clone.default", "aten.alias.default", "aten.contiguous.default", "aten.detach.default",
     "aten.lift_fresh_copy.default", "aten.dropout.default")
def _identity(imp: TorchImporter, node, x, *args, **kwargs) -> Value:
    return _tensor(x)


@_on("aten.view.default", "aten.reshape.default", "aten._unsafe_view.default", "aten.unsqueeze.default",
     "aten.squeeze.dim", "aten.squeeze.dims", "aten.squeeze.default", "aten.flatten.using_ints",
     "aten.view_copy.default", "aten.unflatten.int")
def _view(imp: TorchImporter, node, x, *args, **kwargs) -> Value:
    return imp.b.reshape(_tensor(x), imp.out_type(node).shape, node.name)


@_on("aten.expand.default")
def _expand(imp: TorchImporter, node, x, size, implicit=False) -> Value:
    x = _tensor(x)
    users = {str(u.target) for u in node.users}
    elementwise = {f"aten.{k}.Tensor" for k in ("add", "sub", "mul", "div", "maximum", "minimum", "pow")}
    if users and users <= elementwise | {"aten.matmul.default", "aten.cat.default"}:
        # Every user broadcasts by itself (concat over dims before its axis); the
        # post-check on the user's shape guards this.
        return x
    raise Refusal("expand of a computed tensor whose user does not broadcast (Kiln has no broadcast-copy op)")


@_on("aten._to_copy.default", "aten.to.dtype", "aten.to.dtype_layout", "aten._to_dtype.default")
def _to_copy(imp: TorchImporter, node, x, *args, **kwargs) -> Value:
    return imp.b.cast(_tensor(x), imp.out_type(node).dtype, node.name)


@_on("aten.permute.default")
def _permute(imp: TorchImporter, node, x, dims) -> Value:
    return imp.b.permute(_tensor(x), dims, node.name)


@_on("aten.t.default", "aten.transpose.int")
def _transpose(imp: TorchImporter, node, x, d0=0, d1=1) -> Value:
    x = _tensor(x)
    perm = list(range(x.rank))
    perm[d0 % x.rank], perm[d1 % x.rank] = perm[d1 % x.rank], perm[d0 % x.rank]
    return imp.b.permute(x, perm, node.name)


@_on("aten.linear.default")
def _linear(imp: TorchImporter, node, x, w, bias=None) -> Value:
    x, w = _tensor(x), _tensor(w)
    if x.rank < 2:
        raise Refusal("linear of a 1-D input")
    return imp.b.linear(x, w, bias, node.name)


def _matmul_or_linear(imp: TorchImporter, node, a: Value, b: Value) -> Value:
    if b.is_const and b.rank == 2 and a.rank >= 2:
        w = const_value(np.ascontiguousarray(b.data.T), b.hint, b.dtype)
        return imp.b.linear(a, w, None, node.name)
    if a.rank < 2 or b.rank < 2:
        raise Refusal("matmul with a 1-D operand")
    return imp.b.emit("matmul", [a, b], None, node.name)


@_on("aten.mm.default", "aten.bmm.default", "aten.matmul.default")
def _mm(imp: TorchImporter, node, a, b) -> Value:
    return _matmul_or_linear(imp, node, _tensor(a), _tensor(b))


@_on("aten.addmm.default")
def _addmm(imp: TorchImporter, node, bias, a, b, beta=1, alpha=1) -> Value:
    a, b, bias = _tensor(a), _tensor(b), _tensor(bias)
    if beta != 1 or alpha != 1:
        raise Refusal("addmm with beta or alpha other than 1")
    if b.is_const and bias.rank == 1 and bias.shape[0] == b.shape[1]:
        w = const_value(np.ascontiguousarray(b.data.T), b.hint, b.dtype)
        return imp.b.linear(a, w, bias, node.name)
    return imp.b.binary("add", _matmul_or_linear(imp, node, a, b), bias, node.name + "_bias")


@_on("aten.convolution.default", "aten.conv2d.default")
def _convolution(imp: TorchImporter, node, x, w, bias=None, stride=(1, 1), padding=(0, 0), dilation=(1, 1),
                 transposed=False, output_padding=(0, 0), groups=1) -> Value:
    x, w = _tensor(x), _tensor(w)
    if transposed:
        raise Refusal("transposed convolution")
    if x.rank != 4 or len(stride) != 2:
        raise Refusal(f"a {x.rank - 2}-D convolution (Kiln has conv2d)")
    if isinstance(padding, str):
        raise Refusal(f"padding={padding!r}")
    ph, pw = padding
    return imp.b.conv2d(x, w, bias, stride, (ph, pw, ph, pw), dilation, groups, node.name)


def _bn_params(x: Value, *params: Value | None) -> list[Value]:
    c = x.shape[1]
    defaults = (np.ones(c, np.float32), np.zeros(c, np.float32))
    return [p if p is not None else const_value(defaults[i % 2], "bn_default", x.dtype) for i, p in enumerate(params)]


@_on("aten._native_batch_norm_legit_no_training.default")
def _batch_norm(imp: TorchImporter, node, x, w, b, mean, var, momentum, eps) -> tuple:
    x = _tensor(x)
    w, b = _bn_params(x, w, b)
    return (imp.b.batchnorm(x, w, b, _tensor(mean), _tensor(var), float(eps), node.name), None, None)


@_on("aten.native_layer_norm.default")
def _native_layer_norm(imp: TorchImporter, node, x, shape, w, b, eps) -> tuple:
    return (_layer_norm(imp, node, x, shape, w, b, eps), None, None)


@_on("aten.layer_norm.default")
def _layer_norm(imp: TorchImporter, node, x, shape, w=None, b=None, eps=1e-5, cudnn_enable=True) -> Value:
    if len(shape) != 1:
        raise Refusal(f"layer norm over {len(shape)} axes (Kiln normalises the last axis)")
    return imp.b.layernorm(_tensor(x), w, b, float(eps), node.name)


@_on("aten._softmax.default", "aten.softmax.int")
def _softmax(imp: TorchImporter, node, x, dim, half_to_float=False) -> Value:
    if half_to_float not in (False, None):
        raise Refusal("softmax with half_to_float")
    return imp.b.softmax(_tensor(x), dim, node.name)


@_on("aten.embedding.default")
def _embedding(imp: TorchImporter, node, w, idx, padding_idx=-1, scale_grad_by_freq=False, sparse=False) -> Value:
    return imp.b.emit("embedding", [_tensor(w), _tensor(idx)], None, node.name)


@_on("aten.cat.default")
def _cat(imp: TorchImporter, node, tensors, dim=0) -> Value:
    return imp.b.concat([_tensor(t) for t in tensors], dim, node.name)


def _index(i: Any, d: Dim, default: int) -> int:
    if i is None:
        return default
    if isinstance(i, IntVar):
        if i == d:
            return i.max
        raise Refusal(f"a slice bound {i} that is not the whole symbolic axis")
    return int(i)


@_on("aten.slice.Tensor")
def _slice(imp: TorchImporter, node, x, dim=0, start=None, end=None, step=1) -> Value:
    x = _tensor(x)
    d = x.shape[dim % x.rank]
    size = d.max if isinstance(d, IntVar) else d
    if isinstance(end, IntVar) and not isinstance(d, IntVar):
        # position_ids[:, :seq]: the leading `seq` elements of a static axis.
        return imp.b.slice(x, dim, _index(start, d, 0), end, int(step), node.name)
    return imp.b.slice(x, dim, _index(start, d, 0), min(_index(end, d, size), size), int(step), node.name)


@_on("aten.zeros_like.default", "aten.ones_like.default", "aten.full_like.default")
def _filled_like(imp: TorchImporter, node, x, *args, **kwargs) -> Value:
    """Static shapes fold in TorchImporter._fold; here the shape has a symbolic dim."""
    name = str(node.target).split(".")[1]
    value = {"zeros_like": 0, "ones_like": 1}.get(name, args[0] if args else kwargs.get("fill_value"))
    if not isinstance(value, int | float | bool):
        raise Refusal(f"{name} with a fill value that is not a number ({type(value).__name__})")
    return imp.b.filled(imp.out_type(node), value, node.name)


@_on("aten.select.int")
def _select(imp: TorchImporter, node, x, dim, index) -> Value:
    x = _tensor(x)
    d = x.shape[dim % x.rank]
    if isinstance(d, IntVar):
        raise Refusal("select on a symbolic axis")
    index = int(index) % d
    return imp.b.reshape(imp.b.slice(x, dim, index, index + 1, 1, node.name), imp.out_type(node).shape, node.name)


def _reduce(kind: str) -> Handler:
    def fn(imp: TorchImporter, node, x, dims=None, keepdim=False, dtype=None) -> Value:
        x = _tensor(x)
        if dtype is not None:
            raise Refusal("a reduction with a dtype argument")
        axes = list(range(x.rank)) if not dims else [int(d) for d in dims]
        return imp.b.reduce(kind, x, axes, bool(keepdim), node.name)
    return fn


HANDLERS["aten.mean.dim"] = _reduce("reduce_mean")
HANDLERS["aten.sum.dim_IntList"] = _reduce("reduce_sum")
HANDLERS["aten.amax.default"] = _reduce("reduce_max")


def _pads(padding: Any) -> tuple[int, int, int, int]:
    ph, pw = (padding, padding) if isinstance(padding, int) else (tuple(padding) * 2)[:2]
    return ph, pw, ph, pw


@_on("aten.max_pool2d_with_indices.default", "aten.max_pool2d.default")
def _max_pool(imp: TorchImporter, node, x, kernel, stride=(), padding=0, dilation=1, ceil_mode=False):
    if any(d != 1 for d in ([dilation] if isinstance(dilation, int) else dilation)):
        raise Refusal("max pooling with dilation")
    kernel = (tuple(kernel) * 2)[:2]
    stride = (tuple(stride) * 2)[:2] if stride else kernel
    out = imp.b.pool2d(_tensor(x), "max", kernel, stride, _pads(padding), ceil_mode, True, node.name)
    return (out, None) if "with_indices" in str(node.target) else out


@_on("aten.avg_pool2d.default")
def _avg_pool(imp: TorchImporter, node, x, kernel, stride=(), padding=0, ceil_mode=False, count_include_pad=True,
              divisor_override=None) -> Value:
    if divisor_override is not None:
        raise Refusal("avg_pool2d with divisor_override")
    kernel = (tuple(kernel) * 2)[:2]
    stride = (tuple(stride) * 2)[:2] if stride else kernel
    return imp.b.pool2d(_tensor(x), "avg", kernel, stride, _pads(padding), ceil_mode, count_include_pad, node.name)


@_on("aten._adaptive_avg_pool2d.default", "aten.adaptive_avg_pool2d.default")
def _adaptive_avg_pool(imp: TorchImporter, node, x, output_size) -> Value:
    x = _tensor(x)
    oh, ow = (tuple(output_size) * 2)[:2]
    if (oh, ow) == (1, 1):
        return imp.b.reduce("reduce_mean", x, (2, 3), True, node.name)
    h, w = x.shape[2], x.shape[3]
    if h % oh or w % ow:
        raise Refusal(f"adaptive average pooling of {h}x{w} to {oh}x{ow} (uneven windows)")
    k = (h // oh, w // ow)
    return imp.b.pool2d(x, "avg", k, k, (0, 0, 0, 0), False, True, node.name)


@_on("aten.scalar_tensor.default")
def _scalar_tensor(imp: TorchImporter, node, value, **kwargs) -> Value:
    return scalar(value, imp.out_type(node).dtype)


@_on("getitem")
def _getitem(imp: TorchImporter, node, seq, index) -> Value:
    item = seq[index] if isinstance(seq, tuple | list) else None
    if item is None:
        raise Refusal(f"output {index} of a multi-output op (Kiln computes only the first)")
    return item


HANDLERS[operator.getitem.__name__] = _getitem


def _dim_names(module: Any, example_inputs: tuple, dynamic_shapes: Any, ep: ExportedProgram) -> dict[str, str]:
    """sympy symbol name -> the name the user gave its torch.export.Dim."""
    if dynamic_shapes is None:
        return {}
    user = [s.arg.name for s in ep.graph_signature.input_specs if s.kind == InputKind.USER_INPUT]
    if isinstance(dynamic_shapes, dict):
        params = list(inspect.signature(module.forward).parameters)
        per_input = [dynamic_shapes.get(p) for p in params[:len(user)]]
    else:
        per_input = list(dynamic_shapes)
    placeholders = {n.name: n for n in ep.graph.nodes if n.op == "placeholder"}
    names: dict[str, str] = {}
    for arg_name, spec in zip(user, per_input, strict=False):
        if spec is None:
            continue
        items = spec.items() if isinstance(spec, dict) else enumerate(spec)
        shape = placeholders[arg_name].meta["val"].shape
        for axis, d in items:
            label = getattr(d, "__name__", None)
            if label and isinstance(shape[axis], torch.SymInt):
                names[str(shape[axis].node.expr)] = label
    return names


def export_program(module: torch.nn.Module, example_inputs: tuple, dynamic_shapes: Any = None) -> ExportedProgram:
    return torch.export.export(module.eval(), tuple(example_inputs), dynamic_shapes=dynamic_shapes)


def decompose(ep: ExportedProgram) -> ExportedProgram:
    table = torch.export.default_decompositions()
    for keep in (torch.ops.aten.linear.default, torch.ops.aten.matmul.default):
        table.pop(keep, None)
    return ep.run_decompositions(table)


def from_torch(model: torch.nn.Module | ExportedProgram, example_inputs: tuple | None = None, *,
               dynamic_shapes: Any = None, name: str | None = None) -> Graph:
    """Import `model` (a module, exported here with `example_inputs`, or an ExportedProgram) as a Kiln graph.

    Symbolic dims need a finite range: give each `torch.export.Dim` a max. Raises UnsupportedOps listing
    every op Kiln cannot express, with its count and the source line of its first use."""
    if isinstance(model, ExportedProgram):
        ep, module = model, None
    else:
        if example_inputs is None:
            raise TypeError("from_torch(module, example_inputs, ...) needs example inputs to export the module")
        ep, module = export_program(model, example_inputs, dynamic_shapes), model
    ep = decompose(ep)
    names = _dim_names(module, example_inputs or (), dynamic_shapes, ep) if module is not None else {}
    graph_name = name or (type(module).__name__ if module is not None else "model")
    return TorchImporter(ep, graph_name, names).run()


__all__ = ["from_torch", "export_program", "decompose"]
