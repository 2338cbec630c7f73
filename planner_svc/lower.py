"""Graph -> ExecutionPlan: kernel calls, buffers placed by liveness, views aliased."""
from __future__ import annotations

from kiln.ir import Graph, IntVar
from kiln.ops import get_op
from kiln.plan import Buffer, ExecutionPlan, KernelCall, canonical_spec
from kiln.shapes import infer_types

ALIGN = 256  # bytes; keeps every activation 16-byte vector and TMA friendly


def _align(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN


def plan_arena(sizes: dict[str, int], first: dict[str, int], last: dict[str, int]) -> tuple[dict[str, int], int]:
    """Greedy first-fit by liveness: a buffer may reuse bytes whose tensor is dead."""
    placed: list[tuple[int, int, int, int]] = []  # offset, size, first, last
    offsets: dict[str, int] = {}
    for name in sorted(sizes, key=lambda n: (first[n], -sizes[n])):
        size = _align(sizes[name])
        busy = sorted((o, s) for o, s, f, lst in placed if not (lst < first[name] or f > last[name]))
        offset = 0
        for o, s in busy:
            if offset + size <= o:
                break
            offset = max(offset, o + s)
        offsets[name] = offset
        placed.append((offset, size, first[name], last[name]))
    peak = max((o + s for o, s, _, _ in placed), default=0)
    return offsets, peak


VIEW_OPS = frozenset({"reshape"})


def lower(graph: Graph, target: str) -> ExecutionPlan:
    """One kernel call per op, except views: a reshape aliases its input's bytes
    (no kernel) unless its result must own bytes (a graph output), where it
    becomes a copy."""
    types = infer_types(graph)
    buffers: list[Buffer] = []
    buffers += [Buffer(t.name, t.type, "input", i) for i, t in enumerate(graph.inputs)]
    buffers += [Buffer(n, types[n], "output", i) for i, n in enumerate(graph.outputs)]
    buffers += [Buffer(c.name, c.type, "constant", i) for i, c in enumerate(graph.constants)]
    external = {b.name: b for b in buffers}
    root: dict[str, str] = {}  # view -> the tensor owning its bytes
    kernels = []
    for op in graph.ops:
        if op.kind in VIEW_OPS and op.outputs[0] not in external:
            root[op.outputs[0]] = root.get(op.inputs[0], op.inputs[0])
        else:
            kernels.append(op)
    first: dict[str, int] = {}
    last: dict[str, int] = {}
    for step, op in enumerate(kernels):
        for name in op.outputs:
            first.setdefault(name, step)
            last[name] = step
        for name in op.inputs:
            owner = root.get(name, name)
            last[owner] = step
    activations = [n for n in first if n not in external]
    sizes = {n: types[n].max_bytes() for n in activations}
    offsets, peak = plan_arena(sizes, first, last)
    buffers += [Buffer(n, types[n], "activation", offsets[n]) for n in activations]
    for view, owner in root.items():
        if owner in external:
            buffers.append(Buffer(view, types[view], external[owner].kind, external[owner].index, owner))
        else:
            buffers.append(Buffer(view, types[view], "activation", offsets[owner], owner))
    calls = []
    for i, op in enumerate(kernels):
        kind = "copy" if op.kind in VIEW_OPS else op.kind
        attrs = get_op(kind).Attrs() if kind != op.kind else op.attrs
        spec, symbols = canonical_spec(kind, attrs, [types[n] for n in op.inputs], [types[n] for n in op.outputs])
        calls.append(KernelCall(f"k{i}", spec, op.inputs + op.outputs, symbols, tuple(op.name.split("+"))))
    symbols: dict[str, IntVar] = {}
    for t in graph.inputs:
        for d in t.type.symbols():
            symbols.setdefault(d.name, d)
    return ExecutionPlan(graph.name, target, tuple(symbols.values()), tuple(buffers), tuple(calls),
                         peak, sum(_align(s) for s in sizes.values()))
