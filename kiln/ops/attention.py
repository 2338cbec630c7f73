"""Fused multi-head attention: softmax(q k^T * scale + mask) v, scores never stored."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from kiln.ir import TensorType
from kiln.ops.base import OpDef, ShapeError, broadcast_shapes, register, same_float_dtype


@dataclass(frozen=True)
class AttentionAttrs:
    scale: float = 1.0
    causal: bool = False
    has_mask: bool = False
    # bhsd: q/k/v/out are [B, H, S, D]; bshd: [B, S, H, D], the layout a linear
    # produces, so the heads need no permute kernel; bs3hd: one packed input
    # qkv [B, S, 3, H, D] (a fused QKV linear's output, viewed), out [B, S, H, D].
    layout: str = "bhsd"


def _to_bhsd(t: tuple, layout: str) -> tuple:
    return (t[0], t[2], t[1], t[3]) if layout == "bshd" else tuple(t)


@register
class Attention(OpDef):
    """Inputs q, k, v and, with has_mask, an additive mask broadcastable to [B, H, Sq, Sk]."""

    kind = "attention"
    Attrs = AttentionAttrs
    min_inputs = 1
    max_inputs = 4

    def check_attrs(self, attrs: AttentionAttrs) -> None:
        if attrs.layout not in ("bhsd", "bshd", "bs3hd"):
            raise ShapeError(f"attention: layout must be 'bhsd', 'bshd' or 'bs3hd', got {attrs.layout!r}")

    def infer(self, inputs: list[TensorType], attrs: AttentionAttrs) -> list[TensorType]:
        n_qkv = 1 if attrs.layout == "bs3hd" else 3
        if len(inputs) != n_qkv + attrs.has_mask:
            raise ShapeError(f"attention: expected {n_qkv + attrs.has_mask} inputs "
                             f"(layout={attrs.layout}, has_mask={attrs.has_mask})")
        same_float_dtype(inputs, "attention")
        if attrs.layout == "bs3hd":
            qkv = inputs[0]
            if qkv.rank != 5 or qkv.shape[2] != 3:
                raise ShapeError(f"attention: bs3hd needs a packed qkv [B, S, 3, H, D], got {qkv}")
            b, s, _, h, d = qkv.shape
            one = TensorType(qkv.dtype, (b, s, h, d))
            unpacked = self.infer([one, one, one, *inputs[1:]], AttentionAttrs(
                attrs.scale, attrs.causal, attrs.has_mask, "bshd"))
            return unpacked
        q, k, v = (_to_bhsd(t.shape, attrs.layout) if t.rank == 4 else None for t in inputs[:3])
        if q is None or k is None or v is None:
            raise ShapeError("attention: q, k and v must be rank 4")
        if q[0] != k[0] or q[0] != v[0] or q[1] != k[1] or q[1] != v[1]:
            raise ShapeError(f"attention: batch and head dims of q {q}, k {k}, v {v} differ")
        if q[3] != k[3] or k[2] != v[2]:
            raise ShapeError(f"attention: q/k head dims or k/v lengths differ: q {q}, k {k}, v {v}")
        if not isinstance(q[3], int) or not isinstance(v[3], int) or q[3] > 256 or v[3] > 256:
            raise ShapeError("attention: head dims must be static and at most 256")
        if attrs.has_mask:
            scores = (q[0], q[1], q[2], k[2])
            if broadcast_shapes([scores, inputs[3].shape]) != scores:
                raise ShapeError(f"attention: mask {inputs[3]} does not broadcast to scores {list(map(str, scores))}")
        out = (q[0], q[1], q[2], v[3])
        return [TensorType(inputs[0].dtype, _to_bhsd(out, attrs.layout))]

    def reference(self, inputs: list[np.ndarray], attrs: AttentionAttrs) -> list[np.ndarray]:
        if attrs.layout == "bs3hd":
            qkv = inputs[0]
            unpacked = [qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2], *inputs[1:]]
            return self.reference(unpacked, AttentionAttrs(attrs.scale, attrs.causal, attrs.has_mask, "bshd"))
        q, k, v = (np.swapaxes(t, 1, 2) if attrs.layout == "bshd" else t for t in inputs[:3])
        s = (q @ np.swapaxes(k, -1, -2)) * attrs.scale
        if attrs.has_mask:
            s = s + inputs[3]
        if attrs.causal:
            sq, sk = s.shape[-2], s.shape[-1]
            # Aligned to the end, as PyTorch's is_causal with sq == sk.
            allowed = np.tril(np.ones((sq, sk), dtype=bool), k=sk - sq)
            s = np.where(allowed, s, -np.inf)
        # A row that sees no key (causal with sq > sk, or a mask of -inf) is defined as zeros, not NaN.
        top = s.max(axis=-1, keepdims=True)
        p = np.exp(s - np.where(np.isfinite(top), top, 0.0))
        total = p.sum(axis=-1, keepdims=True)
        out = (p / np.where(total > 0, total, 1.0)) @ v
        return [np.swapaxes(out, 1, 2).copy() if attrs.layout == "bshd" else out]
