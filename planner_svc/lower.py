"""Graph -> ExecutionPlan: kernel calls, buffers placed by liveness, views aliased."""
from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from kiln.ir import Dim, Graph, IntVar, Op, TensorType
from kiln.ops import SliceAttrs, get_op
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
# Every owned buffer starts 256-aligned; a view keeps the 16 bytes that TMA,
# cp.async and CUTLASS loads may assume of any pointer a kernel is handed.
VIEW_ALIGN = 16


def _strides(shape: tuple[Dim, ...]) -> list[int | None]:
    """Row-major element strides; None where a symbolic dim makes one dynamic."""
    strides: list[int | None] = []
    acc: int | None = 1
    for d in reversed(shape):
        strides.append(acc)
        acc = acc * d if acc is not None and isinstance(d, int) else None
    return strides[::-1]


def _static_offset(t: TensorType, starts: Sequence[int]) -> int | None:
    """The byte offset of element `starts` of t, or None when it depends on a symbol."""
    total = 0
    for start, stride in zip(starts, _strides(t.shape), strict=True):
        if start:
            if stride is None:
                return None
            total += start * stride
    return total * t.dtype.itemsize


def _view_offset(offset: int | None) -> int | None:
    return offset if offset is not None and offset % VIEW_ALIGN == 0 else None


def slice_view_offset(x: TensorType, out: TensorType, attrs: SliceAttrs) -> int | None:
    """Where a slice's region starts in x, in bytes, when the region is one
    contiguous byte range at a static, aligned offset (then it needs no kernel).

    Row-major: the region is contiguous iff, for the last axis k not taken whole,
    every later axis is whole, axis k has step 1 (or one element) and every
    earlier axis contributes one element.
    """
    whole = [s == 0 and o == d for d, o, s in zip(x.shape, out.shape, attrs.starts, strict=True)]
    if any(o == 0 for o in out.shape):
        return None  # nothing to read: leave the empty slice to its kernel
    partial = [axis for axis, w in enumerate(whole) if not w]
    if partial:
        k = partial[-1]
        if attrs.steps[k] != 1 and out.shape[k] != 1:
            return None
        if any(out.shape[axis] != 1 for axis in range(k)):
            return None
    return _view_offset(_static_offset(x, attrs.starts))


def concat_slot_offsets(out: TensorType, axis: int, inputs: list[TensorType]) -> list[int] | None:
    """The byte offset of each input's slot in a concat's output, when every
    slot is one contiguous, aligned byte range at a static offset."""
    if any(d != 1 for d in out.shape[:axis]):
        return None
    offsets = []
    along = 0
    for t in inputs:
        start = [0] * out.rank
        start[axis] = along
        offset = _view_offset(_static_offset(out, start))
        if offset is None:
            return None
        offsets.append(offset)
        along += t.shape[axis]
    return offsets


def _concat_slots(op: Op, types: dict[str, TensorType], uses: Counter[str], written: set[str],
                  external: dict[str, Buffer]) -> list[int] | None:
    """The slots a concat's producers can write in place, or None: each input must
    be bytes this plan places (a kernel's output, not a view, a graph input or a
    constant) that nothing else reads, so the concat's buffer can own them."""
    if any(name not in written or uses[name] != 1 or name in external for name in op.inputs):
        return None
    return concat_slot_offsets(types[op.outputs[0]], op.attrs.axis, [types[n] for n in op.inputs])


def _resolve(name: str, alias: dict[str, tuple[str, int]]) -> tuple[str, int]:
    """The tensor owning name's bytes, and name's byte offset in it."""
    offset = 0
    while name in alias:
        name, step = alias[name]
        offset += step
    return name, offset


def lower(graph: Graph, target: str) -> ExecutionPlan:
    """One kernel call per op, except views, which alias bytes another buffer owns:
    a reshape (unless its result must own bytes, as a graph output: then a copy),
    a slice of one contiguous range, and a concat whose inputs each have one
    producer kernel that writes straight into its slot of the concat's buffer."""
    types = infer_types(graph)
    buffers: list[Buffer] = []
    buffers += [Buffer(t.name, t.type, "input", i) for i, t in enumerate(graph.inputs)]
    buffers += [Buffer(n, types[n], "output", i) for i, n in enumerate(graph.outputs)]
    buffers += [Buffer(c.name, c.type, "constant", i) for i, c in enumerate(graph.constants)]
    external = {b.name: b for b in buffers}
    uses = Counter(name for op in graph.ops for name in op.inputs) + Counter(graph.outputs)
    alias: dict[str, tuple[str, int]] = {}  # view -> (the tensor it lies in, byte offset)
    written: set[str] = set()  # outputs of kernels and of placed concats: bytes this plan may place
    kernels = []
    for op in graph.ops:
        out = op.outputs[0]
        if out not in external and op.kind in VIEW_OPS:
            alias[out] = (op.inputs[0], 0)
            continue
        offset = (slice_view_offset(types[op.inputs[0]], types[out], op.attrs)
                  if op.kind == "slice" and out not in external else None)
        if offset is not None:
            alias[out] = (op.inputs[0], offset)
            continue
        slots = _concat_slots(op, types, uses, written, external) if op.kind == "concat" else None
        if slots is not None:
            for name, slot in zip(op.inputs, slots, strict=True):
                alias[name] = (out, slot)
        else:
            kernels.append(op)
        written.update(op.outputs)
    # A tensor is live from its first writer to its last reader; a view's uses
    # count for its owner, so no owner's bytes are reused while a view needs them.
    first: dict[str, int] = {}
    last: dict[str, int] = {}
    for step, op in enumerate(kernels):
        for name in op.outputs + op.inputs:
            owner = _resolve(name, alias)[0]
            first.setdefault(owner, step)
            last[owner] = step
    activations = [n for n in first if n not in external]
    sizes = {n: types[n].max_bytes() for n in activations}
    offsets, peak = plan_arena(sizes, first, last)
    buffers += [Buffer(n, types[n], "activation", offsets[n]) for n in activations]
    for view in alias:
        owner, offset = _resolve(view, alias)
        if owner in external:
            buffers.append(Buffer(view, types[view], external[owner].kind, external[owner].index, owner, offset))
        else:
            buffers.append(Buffer(view, types[view], "activation", offsets[owner], owner, offset))
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
