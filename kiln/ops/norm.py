"""Normalisations over the last axis."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from kiln.ir import TensorType
from kiln.ops.base import OpDef, ShapeError, register, same_float_dtype


@dataclass(frozen=True)
class LayerNormAttrs:
    eps: float = 1e-5
    # A fourth input r of x's shape: the op normalises x + r, so a residual
    # add need not go through memory before its norm.
    has_residual: bool = False


@register
class LayerNorm(OpDef):
    kind = "layernorm"
    Attrs = LayerNormAttrs
    min_inputs = 3
    max_inputs = 4

    def check_attrs(self, attrs: LayerNormAttrs) -> None:
        if not attrs.eps > 0:
            raise ShapeError(f"layernorm: eps must be > 0, got {attrs.eps}")

    def infer(self, inputs: list[TensorType], attrs: LayerNormAttrs) -> list[TensorType]:
        same_float_dtype(inputs, "layernorm")
        want = 4 if attrs.has_residual else 3
        if len(inputs) != want:
            raise ShapeError(f"layernorm: has_residual={attrs.has_residual} takes {want} inputs, got {len(inputs)}")
        x, gamma, beta = inputs[:3]
        if attrs.has_residual and inputs[3].shape != x.shape:
            raise ShapeError(f"layernorm: the residual must have x's shape {x} (no broadcasting), got {inputs[3]}")
        n = x.shape[-1] if x.rank else None
        if not isinstance(n, int):
            raise ShapeError(f"layernorm: the normalised (last) dim of {x} must be static")
        for label, t in (("gamma", gamma), ("beta", beta)):
            if t.shape != (n,):
                raise ShapeError(f"layernorm: {label} must have shape [{n}], got {t}")
        return [x]

    def reference(self, inputs: list[np.ndarray], attrs: LayerNormAttrs) -> list[np.ndarray]:
        x, gamma, beta = inputs[:3]
        if attrs.has_residual:
            x = x + inputs[3]
        mean = x.mean(axis=-1, keepdims=True)
        var = ((x - mean) ** 2).mean(axis=-1, keepdims=True)
        return [(x - mean) / np.sqrt(var + attrs.eps) * gamma + beta]


@register
class Softmax(OpDef):
    kind = "softmax"

    def infer(self, inputs: list[TensorType], attrs: object) -> list[TensorType]:
        same_float_dtype(inputs, "softmax")
        # The row length may be symbolic (attention scores over a dynamic sequence): the softmax
        # kernels read it at run time.
        if not inputs[0].rank:
            raise ShapeError(f"softmax: {inputs[0]} has no axis to normalise")
        return [inputs[0]]

    def reference(self, inputs: list[np.ndarray], attrs: object) -> list[np.ndarray]:
        x = inputs[0]
        e = np.exp(x - x.max(axis=-1, keepdims=True))
        return [e / e.sum(axis=-1, keepdims=True)]
