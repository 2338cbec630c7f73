"""The NumPy reference interpreter: what every graph means."""
from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from kiln.dtypes import DType, from_storage, storage_dtype
from kiln.ir import Graph, IntVar
from kiln.ops import get_op
from kiln.shapes import attr_symbols


def constant_values(graph: Graph, resolve=None) -> dict[str, np.ndarray]:
    out = {}
    for c in graph.constants:
        data = c.data if c.data is not None else resolve(c.sha256)
        stored = np.frombuffer(data, dtype=storage_dtype(c.type.dtype)).reshape(c.type.shape)
        out[c.name] = from_storage(stored, c.type.dtype)
    return out


def run(graph: Graph, feeds: dict[str, np.ndarray], *, compute=np.float64, resolve=None) -> dict[str, np.ndarray]:
    """Run in `compute` precision (float64 by default: the accuracy yardstick)."""
    values: dict[str, np.ndarray] = {}
    for t in graph.inputs:
        if t.name not in feeds:
            raise KeyError(f"missing input {t.name!r}")
        fed = np.asarray(feeds[t.name])
        values[t.name] = fed.astype(compute) if t.type.dtype.is_float else fed  # indices stay integers
    for name, v in constant_values(graph, resolve).items():
        values[name] = v.astype(compute) if graph.constant_map()[name].type.dtype.is_float else v
    sizes = bind_symbols(graph, values)
    for op in graph.ops:
        outs = get_op(op.kind).reference([values[n] for n in op.inputs], bound_attrs(op.attrs, sizes))
        values.update(zip(op.outputs, outs, strict=True))
    return {name: values[name] for name in graph.outputs}


def bind_symbols(graph: Graph, values: dict[str, np.ndarray]) -> dict[str, int]:
    """Each symbol's value, read off the fed inputs' shapes."""
    sizes: dict[str, int] = {}
    for t in graph.inputs:
        for d, n in zip(t.type.shape, np.shape(values[t.name]), strict=False):
            if isinstance(d, IntVar):
                sizes[d.name] = int(n)
    return sizes


def bound_attrs(attrs: Any, sizes: dict[str, int]) -> Any:
    """attrs with every symbolic entry of a tuple field (a slice's symbolic end) replaced by its value."""
    if not attr_symbols(attrs):
        return attrs
    changes = {}
    for f in dataclasses.fields(attrs):
        v = getattr(attrs, f.name)
        if isinstance(v, tuple) and any(isinstance(e, IntVar) for e in v):
            changes[f.name] = tuple(sizes[e.name] if isinstance(e, IntVar) else e for e in v)
    return dataclasses.replace(attrs, **changes) if changes else attrs


def random_inputs(graph: Graph, seed: int = 0, sizes: dict[str, int] | None = None) -> dict[str, np.ndarray]:
    """Non-zero random inputs; symbolic dims take `sizes[name]` or their max."""
    rng = np.random.default_rng(seed)
    feeds = {}
    for t in graph.inputs:
        shape = tuple(d if isinstance(d, int) else (sizes or {}).get(d.name, d.max) for d in t.type.shape)
        values = rng.standard_normal(shape)
        feeds[t.name] = values.astype(np.float16 if t.type.dtype is DType.F16 else np.float32)
    return feeds
