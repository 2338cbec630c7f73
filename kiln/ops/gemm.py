"""Matrix products: linear (x @ w.T + bias, then an optional fused epilogue)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from kiln.ir import TensorType
from kiln.ops.base import OpDef, ShapeError, broadcast_shapes, describe, register, same_float_dtype
from kiln.ops.elementwise import EwInstr, apply_epilogue, check_epilogue_inputs


@dataclass(frozen=True)
class LinearAttrs:
    has_bias: bool = False
    # Value 0 of the epilogue program is the accumulator (bias added); the
    # op's inputs after x, w and bias are the program's further inputs.
    epilogue: tuple[EwInstr, ...] = ()


@register
class Linear(OpDef):
    """y[..., N] = x[..., K] @ w[N, K]^T (+ bias[N]) then epilogue."""

    kind = "linear"
    Attrs = LinearAttrs
    min_inputs = 2
    max_inputs = 16

    def infer(self, inputs: list[TensorType], attrs: LinearAttrs) -> list[TensorType]:
        same_float_dtype(inputs, "linear")
        x, w = inputs[0], inputs[1]
        if x.rank < 2 or w.rank != 2:
            raise ShapeError(f"linear needs x of rank >= 2 and w of rank 2, got {x} and {w}")
        k = x.shape[-1]
        if not isinstance(k, int) or w.shape[1] != k:
            raise ShapeError(f"linear: x's last dim {describe(k)} must be static and equal w's dim 1 ({describe(w.shape[1])})")
        n = w.shape[0]
        if not isinstance(n, int):
            raise ShapeError("linear: w's dims must be static")
        out = TensorType(x.dtype, x.shape[:-1] + (n,))
        check_epilogue_inputs("linear", out, inputs[2:], attrs.has_bias, attrs.epilogue)
        return [out]

    def reference(self, inputs: list[np.ndarray], attrs: LinearAttrs) -> list[np.ndarray]:
        x, w = inputs[0], inputs[1]
        acc = x @ w.T
        return [apply_epilogue(acc, inputs[2:], attrs.has_bias, attrs.epilogue)]


@dataclass(frozen=True)
class MatmulAttrs:
    pass


@register
class Matmul(OpDef):
    """a[..., M, K] @ b[..., K, N] with broadcast batch dims."""

    kind = "matmul"
    min_inputs = max_inputs = 2

    def infer(self, inputs: list[TensorType], attrs: object) -> list[TensorType]:
        same_float_dtype(inputs, "matmul")
        a, b = inputs
        if a.rank < 2 or b.rank < 2:
            raise ShapeError(f"matmul needs rank >= 2 operands, got {a} and {b}")
        if a.shape[-1] != b.shape[-2]:
            raise ShapeError(f"matmul: inner dims differ: {describe(a.shape[-1])} vs {describe(b.shape[-2])}")
        batch = broadcast_shapes([a.shape[:-2], b.shape[:-2]]) if a.rank > 2 or b.rank > 2 else ()
        return [TensorType(a.dtype, batch + (a.shape[-2], b.shape[-1]))]

    def reference(self, inputs: list[np.ndarray], attrs: object) -> list[np.ndarray]:
        return [np.matmul(inputs[0], inputs[1])]
