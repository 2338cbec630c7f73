"""Convolution, pooling and batch norm over NHWC (channels-last) activations.

Kiln keeps 4-D activations NHWC because tensor-core implicit GEMM wants the
reduced (channel) dim contiguous; importers permute NCHW models once at the
graph's edge. Conv weights are [O, KH, KW, C/groups].
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from kiln.ir import Dim, TensorType
from kiln.ops.base import OpDef, ShapeError, describe, register, same_float_dtype
from kiln.ops.elementwise import EwInstr, apply_epilogue, check_epilogue_inputs


def _pair(name: str, value: tuple[int, ...], minimum: int) -> None:
    if len(value) != 2 or any(v < minimum for v in value):
        raise ShapeError(f"{name} must be two ints >= {minimum}, got {list(value)}")


def _pads(value: tuple[int, ...]) -> None:
    if len(value) != 4 or any(v < 0 for v in value):
        raise ShapeError(f"pads must be four ints >= 0 (top, left, bottom, right), got {list(value)}")


def out_size(size: int, kernel: int, stride: int, pad_lo: int, pad_hi: int, dilation: int = 1,
             ceil: bool = False) -> int:
    span = dilation * (kernel - 1) + 1
    num = size + pad_lo + pad_hi - span
    if num < 0:
        raise ShapeError(f"window {span} is larger than the padded input {size + pad_lo + pad_hi}")
    out = (-(-num // stride) if ceil else num // stride) + 1
    # PyTorch's ceil_mode rule: the last window must start inside the input or left padding.
    if ceil and (out - 1) * stride >= size + pad_lo:
        out -= 1
    return out


def _taps(x: np.ndarray, kernel: tuple[int, ...], stride: tuple[int, ...], pads: tuple[int, ...],
          dilation: tuple[int, ...]) -> list[tuple[tuple[int, int], np.ndarray]]:
    """((kh, kw), x's values under that filter tap at every output pixel [N, OH, OW, C]), tap-major:
    the references of conv2d and im2col read their windows the same way."""
    pt, pl, pb, pr = pads
    xp = np.pad(x, ((0, 0), (pt, pb), (pl, pr), (0, 0)))
    (kh, kw), (sh, sw), (dh, dw) = kernel, stride, dilation
    oh = (xp.shape[1] - dh * (kh - 1) - 1) // sh + 1
    ow = (xp.shape[2] - dw * (kw - 1) - 1) // sw + 1
    return [((i, j), xp[:, i * dh: i * dh + sh * (oh - 1) + 1: sh, j * dw: j * dw + sw * (ow - 1) + 1: sw, :])
            for i in range(kh) for j in range(kw)]


@dataclass(frozen=True)
class Conv2dAttrs:
    stride: tuple[int, ...] = (1, 1)
    pads: tuple[int, ...] = (0, 0, 0, 0)  # top, left, bottom, right
    dilation: tuple[int, ...] = (1, 1)
    groups: int = 1
    has_bias: bool = False
    # As for linear: value 0 is the accumulator (bias added); further op inputs follow.
    epilogue: tuple[EwInstr, ...] = ()


def _nhwc(x: TensorType, what: str) -> tuple[Dim, int, int, int]:
    if x.rank != 4:
        raise ShapeError(f"{what} needs a rank-4 NHWC input, got {x}")
    n, h, w, c = x.shape
    if not all(isinstance(d, int) for d in (h, w, c)):
        raise ShapeError(f"{what}: H, W and C of {x} must be static")
    return n, h, w, c  # type: ignore[return-value]


@register
class Conv2d(OpDef):
    """y[n, oh, ow, o] = sum x[n, ih, iw, g*C/g + c] * w[o, kh, kw, c] (+ bias[o]) then epilogue."""

    kind = "conv2d"
    Attrs = Conv2dAttrs
    min_inputs = 2
    max_inputs = 16

    def check_attrs(self, attrs: Conv2dAttrs) -> None:
        _pair("stride", attrs.stride, 1)
        _pair("dilation", attrs.dilation, 1)
        _pads(attrs.pads)
        if attrs.groups < 1:
            raise ShapeError(f"groups must be >= 1, got {attrs.groups}")

    def infer(self, inputs: list[TensorType], attrs: Conv2dAttrs) -> list[TensorType]:
        same_float_dtype(inputs, "conv2d")
        x, w = inputs[0], inputs[1]
        n, h, wd, c = _nhwc(x, "conv2d")
        if w.rank != 4 or not w.is_static:
            raise ShapeError(f"conv2d weight must be static [O, KH, KW, C/groups], got {w}")
        o, kh, kw, cg = w.shape
        g = attrs.groups
        if c % g or o % g or cg != c // g:
            raise ShapeError(f"conv2d: input channels {c} and weight {w} do not match groups={g}")
        oh = out_size(h, kh, attrs.stride[0], attrs.pads[0], attrs.pads[2], attrs.dilation[0])
        ow = out_size(wd, kw, attrs.stride[1], attrs.pads[1], attrs.pads[3], attrs.dilation[1])
        out = TensorType(x.dtype, (n, oh, ow, o))
        check_epilogue_inputs("conv2d", out, inputs[2:], attrs.has_bias, attrs.epilogue)
        return [out]

    def reference(self, inputs: list[np.ndarray], attrs: Conv2dAttrs) -> list[np.ndarray]:
        x, w = inputs[0], inputs[1]
        o, kh, kw, cg = w.shape
        g = attrs.groups
        og = o // g
        out = None
        for (i, j), patch in _taps(x, (kh, kw), attrs.stride, attrs.pads, attrs.dilation):
            if out is None:
                out = np.zeros(patch.shape[:3] + (o,), dtype=np.result_type(x, w))
            for gi in range(g):
                xs = patch[..., gi * cg:(gi + 1) * cg]
                ws = w[gi * og:(gi + 1) * og, i, j, :]
                out[..., gi * og:(gi + 1) * og] += xs @ ws.T
        return [apply_epilogue(out, inputs[2:], attrs.has_bias, attrs.epilogue)]


@dataclass(frozen=True)
class Im2colAttrs:
    kernel: tuple[int, ...] = (1, 1)
    stride: tuple[int, ...] = (1, 1)
    pads: tuple[int, ...] = (0, 0, 0, 0)  # top, left, bottom, right
    dilation: tuple[int, ...] = (1, 1)
    cols: int = 0  # the output's last dim: KH*KW*C, or more (zero columns up to an aligned width)
    # The input is NCHW: a model's NCHW input is gathered straight from its layout, so the
    # NCHW -> NHWC permute at the graph's edge needs no kernel of its own.
    channels_first: bool = False


@register
class Im2col(OpDef):
    """cols[n, oh, ow, (kh*KW + kw)*C + c] = x[n, oh*SH - PT + kh*DH, ow*SW - PL + kw*DW, c], 0 outside x
    and in the columns past KH*KW*C: a conv becomes a GEMM with w.reshape(O, KH*KW*C).
    With channels_first, x is [N, C, H, W] and read as its NHWC transpose."""

    kind = "im2col"
    Attrs = Im2colAttrs

    def check_attrs(self, attrs: Im2colAttrs) -> None:
        _pair("kernel", attrs.kernel, 1)
        _pair("stride", attrs.stride, 1)
        _pair("dilation", attrs.dilation, 1)
        _pads(attrs.pads)

    def infer(self, inputs: list[TensorType], attrs: Im2colAttrs) -> list[TensorType]:
        x = inputs[0]
        if attrs.channels_first and x.rank == 4:
            x = TensorType(x.dtype, (x.shape[0], x.shape[2], x.shape[3], x.shape[1]))
        n, h, wd, c = _nhwc(x, "im2col")
        kh, kw = attrs.kernel
        if attrs.cols < kh * kw * c:
            raise ShapeError(f"im2col: cols {attrs.cols} is fewer than KH*KW*C = {kh * kw * c}")
        oh = out_size(h, kh, attrs.stride[0], attrs.pads[0], attrs.pads[2], attrs.dilation[0])
        ow = out_size(wd, kw, attrs.stride[1], attrs.pads[1], attrs.pads[3], attrs.dilation[1])
        return [TensorType(inputs[0].dtype, (n, oh, ow, attrs.cols))]

    def reference(self, inputs: list[np.ndarray], attrs: Im2colAttrs) -> list[np.ndarray]:
        x = inputs[0].transpose(0, 2, 3, 1) if attrs.channels_first else inputs[0]
        taps = _taps(x, attrs.kernel, attrs.stride, attrs.pads, attrs.dilation)
        cols = np.concatenate([patch for _, patch in taps], axis=-1)
        tail = np.zeros(cols.shape[:-1] + (attrs.cols - cols.shape[-1],), dtype=cols.dtype)
        return [np.concatenate([cols, tail], axis=-1)]


@dataclass(frozen=True)
class PatchLinearAttrs:
    """An im2col (its window fields) feeding a linear (its bias and epilogue), as one op."""
    kernel: tuple[int, ...] = (1, 1)
    stride: tuple[int, ...] = (1, 1)
    pads: tuple[int, ...] = (0, 0, 0, 0)  # top, left, bottom, right
    dilation: tuple[int, ...] = (1, 1)
    channels_first: bool = False
    has_bias: bool = False
    epilogue: tuple[EwInstr, ...] = ()

    def im2col(self, cols: int) -> Im2colAttrs:
        return Im2colAttrs(self.kernel, self.stride, self.pads, self.dilation, cols, self.channels_first)


@register
class PatchLinear(OpDef):
    """y[n, oh, ow, o] = sum_k im2col(x)[n, oh, ow, k] * w[o, k] (+ bias[o]) then epilogue, w being [O, cols]
    in im2col's column order: a conv over few channels whose patches are gathered where they are multiplied,
    never stored (each pixel's patch is far wider than the few channels it is gathered from)."""

    kind = "patch_linear"
    Attrs = PatchLinearAttrs
    min_inputs = 2
    max_inputs = 16

    def check_attrs(self, attrs: PatchLinearAttrs) -> None:
        Im2col().check_attrs(attrs.im2col(0))

    def infer(self, inputs: list[TensorType], attrs: PatchLinearAttrs) -> list[TensorType]:
        same_float_dtype(inputs, "patch_linear")
        x, w = inputs[0], inputs[1]
        if w.rank != 2 or not w.is_static:
            raise ShapeError(f"patch_linear weight must be static [O, cols], got {w}")
        patches = Im2col().infer([x], attrs.im2col(w.shape[1]))[0]
        out = TensorType(x.dtype, patches.shape[:3] + (w.shape[0],))
        check_epilogue_inputs("patch_linear", out, inputs[2:], attrs.has_bias, attrs.epilogue)
        return [out]

    def reference(self, inputs: list[np.ndarray], attrs: PatchLinearAttrs) -> list[np.ndarray]:
        x, w = inputs[0], inputs[1]
        patches = Im2col().reference([x], attrs.im2col(w.shape[1]))[0]
        return [apply_epilogue(patches @ w.T, inputs[2:], attrs.has_bias, attrs.epilogue)]


@dataclass(frozen=True)
class Pool2dAttrs:
    mode: str = "max"  # max | avg
    kernel: tuple[int, ...] = (2, 2)
    stride: tuple[int, ...] = (2, 2)
    pads: tuple[int, ...] = (0, 0, 0, 0)
    ceil_mode: bool = False
    # avg only: whether padded positions count in the divisor (PyTorch's default True).
    count_include_pad: bool = True


@register
class Pool2d(OpDef):
    kind = "pool2d"
    Attrs = Pool2dAttrs

    def check_attrs(self, attrs: Pool2dAttrs) -> None:
        if attrs.mode not in ("max", "avg"):
            raise ShapeError(f"pool2d mode must be 'max' or 'avg', got {attrs.mode!r}")
        _pair("kernel", attrs.kernel, 1)
        _pair("stride", attrs.stride, 1)
        _pads(attrs.pads)
        if attrs.pads[0] >= attrs.kernel[0] or attrs.pads[1] >= attrs.kernel[1]:
            raise ShapeError(f"pool2d: padding {list(attrs.pads)} must be smaller than the window {list(attrs.kernel)}")

    def infer(self, inputs: list[TensorType], attrs: Pool2dAttrs) -> list[TensorType]:
        same_float_dtype(inputs, "pool2d")
        n, h, w, c = _nhwc(inputs[0], "pool2d")
        oh = out_size(h, attrs.kernel[0], attrs.stride[0], attrs.pads[0], attrs.pads[2], ceil=attrs.ceil_mode)
        ow = out_size(w, attrs.kernel[1], attrs.stride[1], attrs.pads[1], attrs.pads[3], ceil=attrs.ceil_mode)
        return [TensorType(inputs[0].dtype, (n, oh, ow, c))]

    def reference(self, inputs: list[np.ndarray], attrs: Pool2dAttrs) -> list[np.ndarray]:
        x = inputs[0]
        n, h, w, c = x.shape
        kh, kw = attrs.kernel
        sh, sw = attrs.stride
        pt, pl = attrs.pads[0], attrs.pads[1]
        oh = out_size(h, kh, sh, pt, attrs.pads[2], ceil=attrs.ceil_mode)
        ow = out_size(w, kw, sw, pl, attrs.pads[3], ceil=attrs.ceil_mode)
        out = np.empty((n, oh, ow, c), dtype=x.dtype)
        for i in range(oh):
            for j in range(ow):
                h0, w0 = i * sh - pt, j * sw - pl
                # The padded extent counts for avg's divisor but never past input + padding.
                h1, w1 = min(h0 + kh, h + attrs.pads[2]), min(w0 + kw, w + attrs.pads[3])
                win = x[:, max(h0, 0):min(h1, h), max(w0, 0):min(w1, w), :]
                if attrs.mode == "max":
                    out[:, i, j, :] = win.max(axis=(1, 2))
                else:
                    count = (h1 - h0) * (w1 - w0) if attrs.count_include_pad else win.shape[1] * win.shape[2]
                    out[:, i, j, :] = win.sum(axis=(1, 2)) / count
        return [out]


@dataclass(frozen=True)
class BatchNormAttrs:
    eps: float = 1e-5


@register
class BatchNorm(OpDef):
    """Inference batch norm over the last (channel) axis: inputs x, scale, bias, mean, var.

    No kernel exists: the planner folds it into the producing conv or rewrites
    it as one multiply-add with precomputed constants."""

    kind = "batchnorm"
    Attrs = BatchNormAttrs
    min_inputs = max_inputs = 5

    def check_attrs(self, attrs: BatchNormAttrs) -> None:
        if not attrs.eps > 0:
            raise ShapeError(f"batchnorm: eps must be > 0, got {attrs.eps}")

    def infer(self, inputs: list[TensorType], attrs: BatchNormAttrs) -> list[TensorType]:
        same_float_dtype(inputs, "batchnorm")
        x = inputs[0]
        c = x.shape[-1] if x.rank else None
        if not isinstance(c, int):
            raise ShapeError(f"batchnorm: the channel (last) dim of {x} must be static")
        for label, t in zip(("scale", "bias", "mean", "var"), inputs[1:], strict=True):
            if t.shape != (c,):
                raise ShapeError(f"batchnorm: {label} must have shape [{c}], got {t}")
        return [x]

    def reference(self, inputs: list[np.ndarray], attrs: BatchNormAttrs) -> list[np.ndarray]:
        x, scale, bias, mean, var = inputs
        return [(x - mean) / np.sqrt(var + attrs.eps) * scale + bias]


__all__ = ["Conv2dAttrs", "Pool2dAttrs", "BatchNormAttrs", "describe", "out_size"]
