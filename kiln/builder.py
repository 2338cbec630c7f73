"""Build graphs the PyTorch way: tensors with operators, functions, modules."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from kiln.dtypes import DType, to_storage
from kiln.ir import Constant, Dim, Graph, IntVar, Op, Tensor, TensorType
from kiln.ops import LayerNormAttrs, LinearAttrs, get_op
from kiln.shapes import infer_types


@dataclass(frozen=True)
class Value:
    """A tensor being built; arithmetic records ops on its builder."""

    builder: GraphBuilder
    name: str

    @property
    def type(self) -> TensorType:
        return self.builder.types[self.name]

    def __add__(self, other: Value) -> Value:
        return self.builder.op("add", [self, other])

    def __sub__(self, other: Value) -> Value:
        return self.builder.op("sub", [self, other])

    def __mul__(self, other: Value) -> Value:
        return self.builder.op("mul", [self, other])

    def __truediv__(self, other: Value) -> Value:
        return self.builder.op("div", [self, other])

    def __neg__(self) -> Value:
        return self.builder.op("neg", [self])


class GraphBuilder:
    def __init__(self, name: str = "model"):
        self.name = name
        self.inputs: list[Tensor] = []
        self.constants: list[Constant] = []
        self.ops: list[Op] = []
        self.types: dict[str, TensorType] = {}
        self._counts: dict[str, int] = {}

    def _fresh(self, prefix: str) -> str:
        n = self._counts.get(prefix, 0)
        self._counts[prefix] = n + 1
        return f"{prefix}_{n}"

    def input(self, name: str, shape: tuple[Dim, ...], dtype: DType | str = DType.F32) -> Value:
        dtype = DType.parse(dtype) if isinstance(dtype, str) else dtype
        t = Tensor(name, TensorType(dtype, tuple(shape)))
        self.inputs.append(t)
        self.types[name] = t.type
        return Value(self, name)

    def constant(self, name: str, values: np.ndarray, dtype: DType | str | None = None) -> Value:
        values = np.asarray(values)
        dtype = DType.parse(dtype) if isinstance(dtype, str) else (dtype or DType.F32)
        t = TensorType(dtype, tuple(int(d) for d in values.shape))
        c = Constant.from_bytes(name, t, to_storage(values, dtype).tobytes())
        self.constants.append(c)
        self.types[name] = t
        return Value(self, name)

    def op(self, kind: str, inputs: list[Value], attrs: object | None = None, name: str | None = None) -> Value:
        attrs = attrs if attrs is not None else get_op(kind).Attrs()
        op_name = name or self._fresh(kind)
        out = f"{op_name}.out"
        self.ops.append(Op(op_name, kind, tuple(v.name for v in inputs), (out,), attrs))
        # Infer eagerly so that a mistake surfaces at the line that made it.
        self.types.update(infer_types(self._graph(outputs=())))
        return Value(self, out)

    def _graph(self, outputs: tuple[str, ...]) -> Graph:
        return Graph(self.name, tuple(self.inputs), outputs, tuple(self.constants), tuple(self.ops))

    def build(self, *outputs: Value) -> Graph:
        return self._graph(tuple(v.name for v in outputs))


def symbol(name: str, min: int, max: int) -> IntVar:
    return IntVar(name, min, max)


# Functional forms, PyTorch-style.
def linear(x: Value, w: Value, bias: Value | None = None, name: str | None = None) -> Value:
    ins = [x, w] + ([bias] if bias is not None else [])
    return x.builder.op("linear", ins, LinearAttrs(has_bias=bias is not None), name)


def matmul(a: Value, b: Value) -> Value:
    return a.builder.op("matmul", [a, b])


def layer_norm(x: Value, gamma: Value, beta: Value, eps: float = 1e-5, name: str | None = None) -> Value:
    return x.builder.op("layernorm", [x, gamma, beta], LayerNormAttrs(eps=eps), name)


def _unary(kind: str):
    def fn(x: Value, name: str | None = None) -> Value:
        return x.builder.op(kind, [x], None, name)
    fn.__name__ = kind
    return fn


relu, gelu, gelu_tanh, silu, sigmoid, tanh, softmax = (
    _unary(k) for k in ("relu", "gelu", "gelu_tanh", "silu", "sigmoid", "tanh", "softmax"))
