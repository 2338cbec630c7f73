"""Small tools the passes share: tensor substitution, fresh names, constant values."""
from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from kiln.dtypes import DType, from_storage, storage_dtype, to_storage
from kiln.ir import Constant, Graph, Op, TensorType

IDENTITY4 = (0, 1, 2, 3)


def resolve(subst: dict[str, str], name: str) -> str:
    """Follow a substitution chain a -> b -> c to its end."""
    seen = set()
    while name in subst and name not in seen:
        seen.add(name)
        name = subst[name]
    return name


def substitute(op: Op, subst: dict[str, str]) -> Op:
    if not subst or not any(n in subst for n in op.inputs):
        return op
    return op.replace(inputs=tuple(resolve(subst, n) for n in op.inputs))


class Names:
    """Every tensor, constant and op name of a graph, to make new ones that clash with none."""

    def __init__(self, graph: Graph):
        self.taken: set[str] = {t.name for t in graph.inputs} | {c.name for c in graph.constants}
        for op in graph.ops:
            self.taken.add(op.name)
            self.taken.update(op.outputs)

    def fresh(self, base: str) -> str:
        name, n = base, 1
        while name in self.taken:
            name = f"{base}.{n}"
            n += 1
        self.taken.add(name)
        return name


def constant_array(c: Constant) -> np.ndarray:
    """A constant's values, widened to float64 when it is a float (folding computes there)."""
    if c.data is None:
        raise ValueError(f"constant {c.name!r} has no data to fold")
    stored = np.frombuffer(c.data, dtype=storage_dtype(c.type.dtype)).reshape(c.type.shape)
    values = from_storage(stored, c.type.dtype)
    return values.astype(np.float64) if c.type.dtype.is_float else values


def make_constant(name: str, dtype: DType, values: np.ndarray) -> Constant:
    """Store in the given dtype: folding never changes a weight's element type."""
    values = np.asarray(values)
    t = TensorType(dtype, tuple(int(d) for d in values.shape))
    return Constant.from_bytes(name, t, to_storage(values, dtype).tobytes())


def scalar_value(graph_constants: dict[str, Constant], name: str) -> float | None:
    """The value of a constant holding one element (any rank), else None."""
    c = graph_constants.get(name)
    if c is None or c.data is None or c.type.max_elements() != 1 or not c.type.dtype.is_float:
        return None
    return float(constant_array(c).reshape(()))


def uniform_value(graph_constants: dict[str, Constant], name: str) -> float | None:
    """The value every element of a float constant holds, else None."""
    c = graph_constants.get(name)
    if c is None or c.data is None or not c.type.dtype.is_float or c.type.max_elements() == 0:
        return None
    values = constant_array(c).reshape(-1)
    return float(values[0]) if np.all(values == values[0]) else None


def compose(inner: tuple[int, ...], outer: tuple[int, ...]) -> tuple[int, ...]:
    """permute(permute(x, inner), outer) == permute(x, compose(inner, outer))."""
    return tuple(inner[i] for i in outer)


def is_identity(perm: Iterable[int]) -> bool:
    return all(i == p for i, p in enumerate(perm))


def rebuild(graph: Graph, ops: list[Op], new_constants: list[Constant], subst: dict[str, str]) -> Graph:
    """A graph with these ops (inputs substituted) and extra constants; dead ones stay for DCE."""
    ops = [substitute(op, subst) for op in ops]
    return graph.replace(ops=tuple(ops), constants=graph.constants + tuple(new_constants))
