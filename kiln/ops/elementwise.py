"""Elementwise ops and the fused elementwise program that passes build."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy.special import erf

from kiln.ir import TensorType
from kiln.ops.base import OpDef, ShapeError, broadcast_shapes, register, same_float_dtype

UNARY: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "relu": lambda x: np.maximum(x, 0),
    "gelu": lambda x: 0.5 * x * (1.0 + erf(x / np.sqrt(2.0))),
    "gelu_tanh": lambda x: 0.5 * x * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (x + 0.044715 * x**3))),
    "silu": lambda x: x / (1.0 + np.exp(-x)),
    "sigmoid": lambda x: 1.0 / (1.0 + np.exp(-x)),
    "tanh": np.tanh,
    "exp": np.exp,
    "neg": np.negative,
    "sqrt": np.sqrt,
    "rsqrt": lambda x: 1.0 / np.sqrt(x),
    "reciprocal": lambda x: 1.0 / x,
    "erf": erf,
    "abs": np.abs,
    "log": np.log,
}

BINARY: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    "add": np.add,
    "sub": np.subtract,
    "mul": np.multiply,
    "div": np.divide,
    "maximum": np.maximum,
    "minimum": np.minimum,
    "pow": np.power,
}


class _Unary(OpDef):
    def infer(self, inputs: list[TensorType], attrs: object) -> list[TensorType]:
        same_float_dtype(inputs, self.kind)
        return [inputs[0]]

    def reference(self, inputs: list[np.ndarray], attrs: object) -> list[np.ndarray]:
        return [UNARY[self.kind](inputs[0])]


class _Binary(OpDef):
    min_inputs = max_inputs = 2

    def infer(self, inputs: list[TensorType], attrs: object) -> list[TensorType]:
        same_float_dtype(inputs, self.kind)
        return [TensorType(inputs[0].dtype, broadcast_shapes([t.shape for t in inputs]))]

    def reference(self, inputs: list[np.ndarray], attrs: object) -> list[np.ndarray]:
        return [BINARY[self.kind](inputs[0], inputs[1])]


for _name in UNARY:
    register(type(f"Unary_{_name}", (_Unary,), {"kind": _name}))
for _name in BINARY:
    register(type(f"Binary_{_name}", (_Binary,), {"kind": _name}))


@dataclass(frozen=True)
class EwInstr:
    """One step of a fused program. `args` index the value list: first the
    program's inputs, then each earlier instruction's result."""

    op: str
    args: tuple[int, ...]


def check_program(program: tuple[EwInstr, ...], n_inputs: int) -> None:
    for i, instr in enumerate(program):
        arity = 1 if instr.op in UNARY else 2 if instr.op in BINARY else None
        if arity is None:
            raise ShapeError(f"program step {i}: {instr.op!r} is not an elementwise op")
        if len(instr.args) != arity:
            raise ShapeError(f"program step {i}: {instr.op} takes {arity} args, got {len(instr.args)}")
        if any(a < 0 or a >= n_inputs + i for a in instr.args):
            raise ShapeError(f"program step {i}: argument out of range {instr.args}")


def eval_program(program: tuple[EwInstr, ...], values: list[np.ndarray]) -> np.ndarray:
    values = list(values)
    for instr in program:
        args = [values[a] for a in instr.args]
        fn = UNARY.get(instr.op) or BINARY[instr.op]
        values.append(fn(*args))
    return values[-1]


@dataclass(frozen=True)
class FusedAttrs:
    program: tuple[EwInstr, ...]


@register
class FusedElementwise(OpDef):
    """Made by the elementwise fusion pass, never by users: one kernel."""

    kind = "fused_elementwise"
    Attrs = FusedAttrs
    max_inputs = 64

    def check_attrs(self, attrs: FusedAttrs) -> None:
        if not attrs.program:
            raise ShapeError("fused_elementwise needs a non-empty program")

    def infer(self, inputs: list[TensorType], attrs: FusedAttrs) -> list[TensorType]:
        same_float_dtype(inputs, self.kind)
        check_program(attrs.program, len(inputs))
        return [TensorType(inputs[0].dtype, broadcast_shapes([t.shape for t in inputs]))]

    def reference(self, inputs: list[np.ndarray], attrs: FusedAttrs) -> list[np.ndarray]:
        out = eval_program(attrs.program, inputs)
        return [np.broadcast_to(out, np.broadcast_shapes(*(x.shape for x in inputs))).copy()]


def check_epilogue_inputs(kind: str, out: TensorType, extras: list[TensorType], has_bias: bool,
                          epilogue: tuple[EwInstr, ...]) -> None:
    """A GEMM-like op's inputs after its operands: bias [N] then epilogue inputs that broadcast to out."""
    n = out.shape[-1]
    rest = extras
    if has_bias:
        if not rest or rest[0].shape != (n,):
            raise ShapeError(f"{kind}: has_bias needs a bias input of shape [{n}]"
                             + (f", got {rest[0]}" if rest else ", none given"))
        rest = rest[1:]
    check_program(epilogue, 1 + len(rest))
    if rest and not epilogue:
        raise ShapeError(f"{kind}: extra inputs given but no epilogue uses them")
    for extra in rest:
        if broadcast_shapes([out.shape, extra.shape]) != out.shape:
            raise ShapeError(f"{kind}: epilogue input {extra} does not broadcast to the output {out}")


def apply_epilogue(acc: np.ndarray, extras: list[np.ndarray], has_bias: bool,
                   epilogue: tuple[EwInstr, ...]) -> np.ndarray:
    """Reference of a GEMM-like op's tail: + bias, then the epilogue program (value 0 is the accumulator)."""
    rest = extras
    if has_bias:
        acc = acc + rest[0]
        rest = rest[1:]
    if epilogue:
        acc = np.broadcast_to(eval_program(epilogue, [acc, *rest]), acc.shape).copy()
    return acc
