"""What every op kind knows once: its attributes, shape inference, reference."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from kiln.ir import Dim, IntVar, TensorType


class ShapeError(ValueError):
    """An op's inputs do not fit its semantics; the validator adds which op."""


@dataclass(frozen=True)
class NoAttrs:
    pass


class OpDef:
    kind: ClassVar[str]
    Attrs: ClassVar[type] = NoAttrs
    min_inputs: ClassVar[int] = 1
    max_inputs: ClassVar[int] = 1
    num_outputs: ClassVar[int] = 1

    def infer(self, inputs: list[TensorType], attrs: Any) -> list[TensorType]:
        raise NotImplementedError

    def reference(self, inputs: list[np.ndarray], attrs: Any) -> list[np.ndarray]:
        raise NotImplementedError

    def check_attrs(self, attrs: Any) -> None:
        """Semantic checks beyond types (e.g. eps > 0); raise ShapeError."""


OPS: dict[str, OpDef] = {}


def register(cls: type[OpDef]) -> type[OpDef]:
    OPS[cls.kind] = cls()
    return cls


def get_op(kind: str) -> OpDef:
    try:
        return OPS[kind]
    except KeyError:
        raise ShapeError(f"unknown op type {kind!r}; known: {', '.join(sorted(OPS))}") from None


def dims_equal(a: Dim, b: Dim) -> bool:
    return a == b


def broadcast_shapes(shapes: list[tuple[Dim, ...]]) -> tuple[Dim, ...]:
    """NumPy broadcasting, where a symbolic dim matches only itself or 1."""
    rank = max(len(s) for s in shapes)
    out: list[Dim] = []
    for axis in range(rank):
        dims = [s[axis - rank + len(s)] for s in shapes if axis - rank + len(s) >= 0]
        chosen: Dim = 1
        for d in dims:
            if d == 1:
                continue
            if chosen == 1:
                chosen = d
            elif not dims_equal(chosen, d):
                raise ShapeError(f"shapes {[list(map(str, s)) for s in shapes]} do not broadcast at axis {axis}")
        out.append(chosen)
    return tuple(out)


def same_float_dtype(inputs: list[TensorType], what: str) -> None:
    dtypes = {t.dtype for t in inputs}
    if len(dtypes) != 1:
        raise ShapeError(f"{what} needs one dtype, got {sorted(d.value for d in dtypes)}")
    if not inputs[0].dtype.is_float:
        raise ShapeError(f"{what} needs a float dtype, got {inputs[0].dtype.value}")


def describe(d: Dim) -> str:
    return repr(d) if isinstance(d, IntVar) else str(d)
