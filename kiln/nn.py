"""Modules in the torch.nn style, holding NumPy weights that become constants."""
from __future__ import annotations

import numpy as np

from kiln.builder import GraphBuilder, Value, gelu, layer_norm, linear, relu
from kiln.dtypes import DType


class Module:
    def __call__(self, x: Value) -> Value:
        return self.forward(x)

    def forward(self, x: Value) -> Value:
        raise NotImplementedError


class Linear(Module):
    """Weights default to PyTorch's init: U(-1/sqrt(in), 1/sqrt(in))."""

    def __init__(self, name: str, in_features: int, out_features: int, *, bias: bool = True,
                 dtype: DType = DType.F32, rng: np.random.Generator | None = None,
                 weight: np.ndarray | None = None, bias_values: np.ndarray | None = None):
        rng = rng or np.random.default_rng(0)
        bound = 1.0 / np.sqrt(in_features)
        self.name, self.dtype = name, dtype
        self.weight = weight if weight is not None else rng.uniform(-bound, bound, (out_features, in_features))
        self.bias = None
        if bias:
            self.bias = bias_values if bias_values is not None else rng.uniform(-bound, bound, (out_features,))

    def forward(self, x: Value) -> Value:
        b: GraphBuilder = x.builder
        w = b.constant(f"{self.name}.weight", self.weight, self.dtype)
        bias = b.constant(f"{self.name}.bias", self.bias, self.dtype) if self.bias is not None else None
        return linear(x, w, bias, name=self.name)


class LayerNorm(Module):
    def __init__(self, name: str, features: int, *, eps: float = 1e-5, dtype: DType = DType.F32,
                 rng: np.random.Generator | None = None):
        rng = rng or np.random.default_rng(1)
        self.name, self.eps, self.dtype = name, eps, dtype
        # Non-trivial affine parameters, so a kernel that ignores them is caught.
        self.gamma = 1.0 + 0.1 * rng.standard_normal(features)
        self.beta = 0.1 * rng.standard_normal(features)

    def forward(self, x: Value) -> Value:
        b = x.builder
        g = b.constant(f"{self.name}.weight", self.gamma, self.dtype)
        beta = b.constant(f"{self.name}.bias", self.beta, self.dtype)
        return layer_norm(x, g, beta, self.eps, name=self.name)


class GELU(Module):
    def forward(self, x: Value) -> Value:
        return gelu(x)


class ReLU(Module):
    def forward(self, x: Value) -> Value:
        return relu(x)


class Sequential(Module):
    def __init__(self, *layers: Module):
        self.layers = layers

    def forward(self, x: Value) -> Value:
        for layer in self.layers:
            x = layer(x)
        return x
