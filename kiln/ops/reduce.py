"""Reductions over a run of consecutive axes (what pooling heads and norms need)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from kiln.ir import TensorType
from kiln.ops.base import OpDef, ShapeError, register, same_float_dtype


@dataclass(frozen=True)
class ReduceAttrs:
    axes: tuple[int, ...] = ()  # normalised (>= 0) by whoever builds the op
    keepdims: bool = False


class _Reduce(OpDef):
    Attrs = ReduceAttrs

    def infer(self, inputs: list[TensorType], attrs: ReduceAttrs) -> list[TensorType]:
        same_float_dtype(inputs, self.kind)
        x = inputs[0]
        axes = sorted(attrs.axes)
        if not axes or any(not 0 <= a < x.rank for a in axes) or len(set(axes)) != len(axes):
            raise ShapeError(f"{self.kind}: axes {list(attrs.axes)} are not distinct axes of {x}")
        if axes != list(range(axes[0], axes[-1] + 1)):
            raise ShapeError(f"{self.kind}: axes {list(attrs.axes)} must be consecutive (permute first)")
        if any(not isinstance(x.shape[a], int) for a in axes):
            raise ShapeError(f"{self.kind}: reduced axes of {x} must be static")
        shape = tuple(1 if i in axes else d for i, d in enumerate(x.shape) if attrs.keepdims or i not in axes)
        return [TensorType(x.dtype, shape)]

    def reference(self, inputs: list[np.ndarray], attrs: ReduceAttrs) -> list[np.ndarray]:
        fn = {"reduce_sum": np.sum, "reduce_mean": np.mean, "reduce_max": np.max}[self.kind]
        return [np.asarray(fn(inputs[0], axis=tuple(attrs.axes), keepdims=attrs.keepdims))]


for _kind in ("reduce_sum", "reduce_mean", "reduce_max"):
    register(type(f"Op_{_kind}", (_Reduce,), {"kind": _kind}))
