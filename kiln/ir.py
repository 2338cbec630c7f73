"""The graph IR: typed, immutable dataclasses. Passes build new graphs."""
from __future__ import annotations

import dataclasses
import hashlib
import math
from dataclasses import dataclass, field
from typing import Any

from kiln.dtypes import DType


@dataclass(frozen=True)
class IntVar:
    """A dimension known only at run time, within [min, max]."""

    name: str
    min: int
    max: int

    def __repr__(self) -> str:
        return f"{self.name}[{self.min}..{self.max}]"


Dim = int | IntVar


def dim_max(d: Dim) -> int:
    return d.max if isinstance(d, IntVar) else d


@dataclass(frozen=True)
class TensorType:
    dtype: DType
    shape: tuple[Dim, ...]

    @property
    def rank(self) -> int:
        return len(self.shape)

    @property
    def is_static(self) -> bool:
        return all(isinstance(d, int) for d in self.shape)

    def max_elements(self) -> int:
        return math.prod(dim_max(d) for d in self.shape)

    def max_bytes(self) -> int:
        return self.max_elements() * self.dtype.itemsize

    def symbols(self) -> tuple[IntVar, ...]:
        return tuple(d for d in self.shape if isinstance(d, IntVar))

    def __str__(self) -> str:
        return f"{self.dtype.value}[{', '.join(map(str, self.shape))}]"


@dataclass(frozen=True)
class Tensor:
    name: str
    type: TensorType


@dataclass(frozen=True)
class Constant:
    """Weights. `data` may be absent while only the digest is known (uploaded
    separately); the frontend resolves it before planning."""

    name: str
    type: TensorType
    sha256: str
    data: bytes | None = field(default=None, repr=False, compare=False)

    @staticmethod
    def from_bytes(name: str, type: TensorType, data: bytes) -> Constant:
        return Constant(name, type, hashlib.sha256(data).hexdigest(), data)


@dataclass(frozen=True)
class Op:
    name: str
    kind: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    attrs: Any  # the op kind's own frozen Attrs dataclass

    def replace(self, **changes: Any) -> Op:
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class Graph:
    name: str
    inputs: tuple[Tensor, ...]
    outputs: tuple[str, ...]
    constants: tuple[Constant, ...]
    ops: tuple[Op, ...]

    def replace(self, **changes: Any) -> Graph:
        return dataclasses.replace(self, **changes)

    def constant_map(self) -> dict[str, Constant]:
        return {c.name: c for c in self.constants}

    def producers(self) -> dict[str, Op]:
        return {out: op for op in self.ops for out in op.outputs}

    def consumers(self) -> dict[str, list[Op]]:
        users: dict[str, list[Op]] = {}
        for op in self.ops:
            for name in op.inputs:
                users.setdefault(name, []).append(op)
        return users
