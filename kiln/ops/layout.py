"""Ops that move or reinterpret bytes: reshape (a view), permute, concat, slice,
embedding gather and cast. Every axis attribute is already normalised (>= 0)."""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from kiln.dtypes import DType
from kiln.ir import Dim, IntVar, TensorType
from kiln.ops.base import OpDef, ShapeError, describe, register


def _static_prod(dims: tuple[Dim, ...]) -> int:
    return math.prod(d for d in dims if isinstance(d, int))


@dataclass(frozen=True)
class ReshapeAttrs:
    # ONNX's convention, which also carries symbolic dims through: 0 copies the
    # input's dim at the same index, -1 (at most once) is inferred.
    shape: tuple[int, ...] = ()
    # When given (one entry per output dim), a 0 at index i copies input dim sources[i]
    # instead: a symbolic dim can move, as in mask[:, None, None, :] ([B, S] -> [B, 1, 1, S]).
    sources: tuple[int, ...] = ()


@register
class Reshape(OpDef):
    """Row-major reinterpretation: never a kernel, the output aliases the input."""

    kind = "reshape"
    Attrs = ReshapeAttrs

    def check_attrs(self, attrs: ReshapeAttrs) -> None:
        if sum(1 for d in attrs.shape if d == -1) > 1 or any(d < -1 for d in attrs.shape):
            raise ShapeError(f"reshape: shape {list(attrs.shape)} may hold one -1 and no other negative dim")
        if attrs.sources and len(attrs.sources) != len(attrs.shape):
            raise ShapeError(f"reshape: sources {list(attrs.sources)} needs one entry per dim of {list(attrs.shape)}")

    def infer(self, inputs: list[TensorType], attrs: ReshapeAttrs) -> list[TensorType]:
        x = inputs[0]
        dims: list[Dim | None] = []
        for i, d in enumerate(attrs.shape):
            if d == 0:
                src = attrs.sources[i] if attrs.sources else i
                if not 0 <= src < x.rank:
                    raise ShapeError(f"reshape: 0 at index {i} copies dim {src}, which {x} does not have")
                dims.append(x.shape[src])
            else:
                dims.append(None if d == -1 else d)
        copied = [d for d in dims if isinstance(d, IntVar)]
        if sorted(s.name for s in copied) != sorted(s.name for s in x.symbols()):
            raise ShapeError(f"reshape: every symbolic dim of {x} must be copied (0) into {list(attrs.shape)}")
        total = _static_prod(x.shape)
        known = _static_prod(tuple(d for d in dims if d is not None))
        if None in dims:
            if known == 0 or total % known:
                raise ShapeError(f"reshape: cannot infer -1 in {list(attrs.shape)} from {x}")
            dims[dims.index(None)] = total // known
        elif known != total:
            raise ShapeError(f"reshape: {x} has {total} static elements, shape {list(attrs.shape)} has {known}")
        return [TensorType(x.dtype, tuple(d for d in dims if d is not None))]

    def reference(self, inputs: list[np.ndarray], attrs: ReshapeAttrs) -> list[np.ndarray]:
        x = inputs[0]
        shape = [x.shape[attrs.sources[i] if attrs.sources else i] if d == 0 else d for i, d in enumerate(attrs.shape)]
        return [x.reshape(shape)]


def reshape_attrs(source: TensorType, target: tuple[Dim, ...]) -> ReshapeAttrs | None:
    """Attrs reshaping `source` to `target` directly: each symbolic dim of target copied from
    where it sits in source (same index when it can), every other dim given; None when a symbolic
    dim of target is not one of source's or when shapes do not fit."""
    spec, sources, used = [], [], set()
    for i, d in enumerate(target):
        if isinstance(d, IntVar):
            here = [i] if i < source.rank and source.shape[i] == d and i not in used else []
            j = next(iter(here or [k for k, s in enumerate(source.shape) if s == d and k not in used]), None)
            if j is None:
                return None
            used.add(j)
            spec.append(0)
            sources.append(j)
        elif d == 0:
            return None
        else:
            spec.append(int(d))
            sources.append(-1)
    moved = any(j != i for i, j in enumerate(sources) if j >= 0)
    if len(used) != len(source.symbols()):
        return None
    return ReshapeAttrs(tuple(spec), tuple(sources) if moved else ())



@dataclass(frozen=True)
class PermuteAttrs:
    perm: tuple[int, ...] = ()


@register
class Permute(OpDef):
    kind = "permute"
    Attrs = PermuteAttrs

    def infer(self, inputs: list[TensorType], attrs: PermuteAttrs) -> list[TensorType]:
        x = inputs[0]
        if sorted(attrs.perm) != list(range(x.rank)):
            raise ShapeError(f"permute: perm {list(attrs.perm)} is not a permutation of {x.rank} axes")
        return [TensorType(x.dtype, tuple(x.shape[p] for p in attrs.perm))]

    def reference(self, inputs: list[np.ndarray], attrs: PermuteAttrs) -> list[np.ndarray]:
        return [np.transpose(inputs[0], attrs.perm).copy()]


@dataclass(frozen=True)
class ConcatAttrs:
    axis: int = 0


@register
class Concat(OpDef):
    kind = "concat"
    Attrs = ConcatAttrs
    max_inputs = 64

    def infer(self, inputs: list[TensorType], attrs: ConcatAttrs) -> list[TensorType]:
        first = inputs[0]
        if not 0 <= attrs.axis < first.rank:
            raise ShapeError(f"concat: axis {attrs.axis} is out of range for {first}")
        # An input whose dims before the axis are all 1 is repeated along them (ViT's
        # class token before a batch of patches): torch's expand-then-cat, no copy made.
        outer = next((t.shape[:attrs.axis] for t in inputs if any(d != 1 for d in t.shape[:attrs.axis])),
                     first.shape[:attrs.axis])
        total = 0
        for t in inputs:
            if t.dtype != first.dtype or t.rank != first.rank:
                raise ShapeError(f"concat: inputs must share dtype and rank, got {first} and {t}")
            if t.shape[attrs.axis + 1:] != first.shape[attrs.axis + 1:] or (
                    t.shape[:attrs.axis] != outer and any(d != 1 for d in t.shape[:attrs.axis])):
                raise ShapeError(f"concat: {t} and {first} differ outside axis {attrs.axis} "
                                 f"(only an input whose dims before the axis are all 1 is broadcast)")
            d = t.shape[attrs.axis]
            if not isinstance(d, int):
                raise ShapeError(f"concat: the concatenated axis must be static, got {describe(d)}")
            total += d
        shape = [*outer, total, *first.shape[attrs.axis + 1:]]
        return [TensorType(first.dtype, tuple(shape))]

    def reference(self, inputs: list[np.ndarray], attrs: ConcatAttrs) -> list[np.ndarray]:
        outer = max((x.shape[:attrs.axis] for x in inputs), key=lambda s: int(np.prod(s)))
        return [np.concatenate([np.broadcast_to(x, outer + x.shape[attrs.axis:]) for x in inputs], axis=attrs.axis)]


@dataclass(frozen=True)
class SliceAttrs:
    # One entry per axis, clamped to the dim by the importer; steps > 0. A symbolic end on a
    # static axis takes that many leading elements (start 0, step 1): position_ids[:, :seq].
    starts: tuple[int, ...] = ()
    ends: tuple[Dim, ...] = ()
    steps: tuple[int, ...] = ()


@register
class Slice(OpDef):
    kind = "slice"
    Attrs = SliceAttrs

    def infer(self, inputs: list[TensorType], attrs: SliceAttrs) -> list[TensorType]:
        x = inputs[0]
        if not len(attrs.starts) == len(attrs.ends) == len(attrs.steps) == x.rank:
            raise ShapeError(f"slice: starts, ends and steps need one entry per axis of {x}")
        dims: list[Dim] = []
        for axis, (d, s, e, st) in enumerate(zip(x.shape, attrs.starts, attrs.ends, attrs.steps, strict=True)):
            if st < 1:
                raise ShapeError(f"slice: step {st} at axis {axis} must be >= 1")
            if isinstance(d, IntVar):
                if (s, st) != (0, 1) or (e != d if isinstance(e, IntVar) else e < d.max):
                    raise ShapeError(f"slice: symbolic axis {axis} ({describe(d)}) can only be kept whole")
                dims.append(d)
                continue
            if isinstance(e, IntVar):
                if (s, st) != (0, 1) or e.max > d:
                    raise ShapeError(f"slice: a symbolic end {describe(e)} at axis {axis} needs start 0, step 1 "
                                     f"and at most {d} elements")
                dims.append(e)
                continue
            if not 0 <= s <= e <= d:
                raise ShapeError(f"slice: [{s}:{e}] at axis {axis} is outside 0..{d}")
            dims.append(max(0, -(-(e - s) // st)))
        return [TensorType(x.dtype, tuple(dims))]

    def reference(self, inputs: list[np.ndarray], attrs: SliceAttrs) -> list[np.ndarray]:
        # A symbolic end arrives bound to its value (kiln.reference binds symbols before every op).
        index = tuple(slice(s, e, st) for s, e, st in zip(attrs.starts, attrs.ends, attrs.steps, strict=True))
        return [inputs[0][index].copy()]


@register
class Embedding(OpDef):
    """out[..., :] = table[indices[...], :] (indices int32 or int64, in range)."""

    kind = "embedding"
    min_inputs = max_inputs = 2

    def infer(self, inputs: list[TensorType], attrs: object) -> list[TensorType]:
        table, idx = inputs
        if table.rank != 2 or not table.is_static or not table.dtype.is_float:
            raise ShapeError(f"embedding: table must be a static float [V, D], got {table}")
        if idx.dtype not in (DType.I32, DType.I64):
            raise ShapeError(f"embedding: indices must be int32 or int64, got {idx.dtype.value}")
        return [TensorType(table.dtype, idx.shape + (table.shape[1],))]

    def reference(self, inputs: list[np.ndarray], attrs: object) -> list[np.ndarray]:
        table, idx = inputs
        if idx.size and (idx.min() < 0 or idx.max() >= table.shape[0]):
            raise IndexError(f"embedding index out of range 0..{table.shape[0] - 1}")
        # reference.run widens every non-constant input to float64; the values are whole numbers.
        return [table[np.asarray(idx).astype(np.int64)]]


@dataclass(frozen=True)
class CastAttrs:
    dtype: str = "float32"


@register
class Cast(OpDef):
    kind = "cast"
    Attrs = CastAttrs

    def check_attrs(self, attrs: CastAttrs) -> None:
        try:
            DType.parse(attrs.dtype)
        except ValueError as err:
            raise ShapeError(f"cast: {err}") from None

    def infer(self, inputs: list[TensorType], attrs: CastAttrs) -> list[TensorType]:
        to = DType.parse(attrs.dtype)
        if not to.is_float:
            raise ShapeError(f"cast: only casts to float dtypes have kernels, not {to.value}")
        return [TensorType(to, inputs[0].shape)]

    def reference(self, inputs: list[np.ndarray], attrs: CastAttrs) -> list[np.ndarray]:
        return [inputs[0].astype(np.float64)]


@register
class Copy(OpDef):
    """Made by the lowering, never by users: materialises a view that must own its bytes."""

    kind = "copy"

    def infer(self, inputs: list[TensorType], attrs: object) -> list[TensorType]:
        return [inputs[0]]

    def reference(self, inputs: list[np.ndarray], attrs: object) -> list[np.ndarray]:
        return [inputs[0].copy()]


@dataclass(frozen=True)
class PadAttrs:
    # (before, after) per axis, flattened: (b0, a0, b1, a1, ...); zeros fill the border.
    pads: tuple[int, ...] = ()


@register
class Pad(OpDef):
    """Zero padding (e.g. conv input channels up to the 16-byte alignment Tensor Core loads need)."""

    kind = "pad"
    Attrs = PadAttrs

    def infer(self, inputs: list[TensorType], attrs: PadAttrs) -> list[TensorType]:
        x = inputs[0]
        if len(attrs.pads) != 2 * x.rank or any(p < 0 for p in attrs.pads):
            raise ShapeError(f"pad: pads must be 2 non-negative ints per axis of {x}, got {list(attrs.pads)}")
        dims: list[Dim] = []
        for axis, d in enumerate(x.shape):
            before, after = attrs.pads[2 * axis], attrs.pads[2 * axis + 1]
            if isinstance(d, IntVar):
                if before or after:
                    raise ShapeError(f"pad: symbolic axis {axis} ({describe(d)}) cannot be padded")
                dims.append(d)
            else:
                dims.append(d + before + after)
        return [TensorType(x.dtype, tuple(dims))]

    def reference(self, inputs: list[np.ndarray], attrs: PadAttrs) -> list[np.ndarray]:
        widths = [(attrs.pads[2 * a], attrs.pads[2 * a + 1]) for a in range(inputs[0].ndim)]
        return [np.pad(inputs[0], widths)]
