"""Per-op template contexts: the C expressions each op's templates read.

One function per op kind, shared by every C-style backend (cpu, cuda, rocm):
a template for a new backend reads the same names as the others. Sizes are C
expressions over the spec's symbols s0, s1, ... (see cexpr).
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from codegen_worker.backends import cexpr
from kiln.dtypes import DType
from kiln.ir import Dim, TensorType
from kiln.plan import KernelSpec

Context = dict[str, Any]
CONTEXTS: dict[str, Callable[[Any, KernelSpec], Context]] = {}


def context_for(*kinds: str):
    def register(fn: Callable[[Any, KernelSpec], Context]) -> Callable[[Any, KernelSpec], Context]:
        for kind in kinds:
            CONTEXTS[kind] = fn
        return fn
    return register


def op_context(backend: Any, spec: KernelSpec) -> Context:
    fn = CONTEXTS.get(spec.op)
    return fn(backend, spec) if fn else {}


def strides(shape: tuple[Dim, ...]) -> list[str]:
    """Row-major element strides as C expressions."""
    out = []
    for axis in range(len(shape)):
        out.append(cexpr.numel_expr(shape[axis + 1:]) if axis + 1 < len(shape) else "INT64_C(1)")
    return out


def _epilogue(spec: KernelSpec, first_extra: int) -> Context:
    """bias + epilogue extras of linear and conv2d: the accumulator is x0."""
    out = spec.outputs[0]
    extras = []
    arg = first_extra
    if spec.attrs.has_bias:
        extras.append({"name": "bias", "arg": arg, "epilogue": None, "offset": ""})
        arg += 1
    for j, t in enumerate(spec.inputs[arg:], start=1):
        extras.append({"name": f"e{j}", "arg": arg + j - 1, "epilogue": j,
                       "offset": cexpr.offset_expr(t.shape, out.shape, "i")})
    n_vals = 1 + len(spec.inputs) - arg
    return {"has_bias": spec.attrs.has_bias, "extras": extras,
            "body": cexpr.program_lines(spec.attrs.epilogue, [f"x{i}" for i in range(n_vals)], "r")}


@context_for("fused_elementwise")
def _fused(b: Any, spec: KernelSpec) -> Context:
    out = spec.outputs[0]
    return {"numel_out": cexpr.numel_expr(out.shape),
            "offsets": [cexpr.offset_expr(t.shape, out.shape, "i") for t in spec.inputs],
            "body": cexpr.program_lines(spec.attrs.program, [f"x{i}" for i in range(len(spec.inputs))], "r"),
            **_vector_lanes(spec)}


_VECTOR_TYPES = (DType.F16, DType.BF16, DType.F32)


def _vector_lanes(spec: KernelSpec) -> Context:
    """How the GPU elementwise kernel moves 16 bytes a thread: `vec` elements of
    one output row, when the row length is static and a multiple of vec and
    every tensor is a float of the output's width. Each input then either runs
    along the row ("row": vec contiguous elements, one 16-byte load) or repeats
    one value across it ("one": broadcast in the last dim, or a scalar)."""
    out = spec.outputs[0]
    item = out.dtype.itemsize
    last = out.shape[-1] if out.rank else None
    if (out.dtype not in _VECTOR_TYPES or not isinstance(last, int) or last % (16 // item)
            or any(t.dtype not in _VECTOR_TYPES or t.dtype.itemsize != item for t in spec.inputs)):
        return {"vec": 1, "lanes": []}
    lanes = ["row" if t.rank and t.shape[-1] == last and last != 1 else "one" for t in spec.inputs]
    return {"vec": 16 // item, "lanes": lanes}


@context_for("linear")
def _linear(b: Any, spec: KernelSpec) -> Context:
    x, w = spec.inputs[0], spec.inputs[1]
    m, k = cexpr.rows_cols(x)
    return {"M": m, "K": k, "N": cexpr.dim_expr(w.shape[0])} | _epilogue(spec, 2)


@context_for("layernorm", "softmax")
def _rows(b: Any, spec: KernelSpec) -> Context:
    x = spec.inputs[0]
    r, c = cexpr.rows_cols(x)
    norm = spec.op == "layernorm"
    # Elements per 16-byte load, when the row length is a multiple of it (every
    # row then starts 16-byte aligned); both ops need a static row length.
    n = x.shape[-1] if x.rank else 1
    per16 = 16 // x.dtype.itemsize
    vec = per16 if isinstance(n, int) and n % per16 == 0 else 1
    # A row that 32 lanes hold in registers in at most 8 16-byte accesses each
    # (2048 halves, 1024 floats) is normalised by one warp, read once.
    chunks = -(-n // (32 * vec)) if isinstance(n, int) else 0
    return {"R": r, "C": c, "eps": repr(float(spec.attrs.eps)) if norm else "",
            "has_residual": norm and spec.attrs.has_residual,
            "cols": n if isinstance(n, int) else None, "vec": vec,
            "warp_chunks": chunks if norm and vec > 1 and 0 < chunks <= 8 else 0}


@context_for("conv2d")
def _conv(b: Any, spec: KernelSpec) -> Context:
    x, w, out = spec.inputs[0], spec.inputs[1], spec.outputs[0]
    a = spec.attrs
    o, kh, kw, cg = w.shape
    return {"N": cexpr.dim_expr(x.shape[0]), "H": x.shape[1], "W": x.shape[2], "C": x.shape[3],
            "O": o, "KH": kh, "KW": kw, "OH": out.shape[1], "OW": out.shape[2],
            "SH": a.stride[0], "SW": a.stride[1], "PT": a.pads[0], "PL": a.pads[1],
            "DH": a.dilation[0], "DW": a.dilation[1], "G": a.groups, "CG": cg, "OG": o // a.groups,
            "numel_out": cexpr.numel_expr(out.shape), "halo": conv_halo(b.api, spec)} | _epilogue(spec, 2)


def conv_halo(api: str, spec: KernelSpec) -> bool:
    """gpu/conv2d_halo.j2 serves it: CUDA halves, a 3x3 filter at stride 1 with one pixel of padding all round,
    64 input channels (one 128-byte row a pixel), output channels in blocks of 64, a static image size."""
    x, w = spec.inputs[0], spec.inputs[1]
    a = spec.attrs
    return (api == "cuda" and x.dtype in (DType.F16, DType.BF16) and tuple(w.shape[1:]) == (3, 3, 64)
            and a.groups == 1 and tuple(a.stride) == (1, 1) and tuple(a.dilation) == (1, 1)
            and tuple(a.pads) == (1, 1, 1, 1) and isinstance(w.shape[0], int) and w.shape[0] % 64 == 0
            and isinstance(x.shape[1], int) and isinstance(x.shape[2], int))


@context_for("pool2d")
def _pool(b: Any, spec: KernelSpec) -> Context:
    x, out = spec.inputs[0], spec.outputs[0]
    a = spec.attrs
    return {"N": cexpr.dim_expr(x.shape[0]), "H": x.shape[1], "W": x.shape[2], "C": x.shape[3],
            "OH": out.shape[1], "OW": out.shape[2], "KH": a.kernel[0], "KW": a.kernel[1],
            "SH": a.stride[0], "SW": a.stride[1], "PT": a.pads[0], "PL": a.pads[1], "PB": a.pads[2],
            "PR": a.pads[3], "mode": a.mode, "count_include_pad": a.count_include_pad,
            "numel_out": cexpr.numel_expr(out.shape), "numel_in": cexpr.numel_expr(x.shape),
            **_row_vector(x.shape[3], x.dtype.itemsize)}


@context_for("reduce_sum", "reduce_mean", "reduce_max")
def _reduce(b: Any, spec: KernelSpec) -> Context:
    """The input as [OUTER, RED, INNER]: the reduced axes are consecutive."""
    x = spec.inputs[0]
    axes = sorted(spec.attrs.axes)
    return {"mode": spec.op.removeprefix("reduce_"), "OUTER": cexpr.numel_expr(x.shape[:axes[0]]),
            "RED": cexpr.numel_expr(x.shape[axes[0]:axes[-1] + 1]), "INNER": cexpr.numel_expr(x.shape[axes[-1] + 1:]),
            "numel_out": cexpr.numel_expr(spec.outputs[0].shape)}


@context_for("permute")
def _permute(b: Any, spec: KernelSpec) -> Context:
    """out[i] = in[sum_k coord_k(i) * in_strides[k]], coords over the output dims."""
    x, out = spec.inputs[0], spec.outputs[0]
    st = strides(x.shape)
    return {"rank": out.rank, "out_dims": [cexpr.dim_expr(d) for d in out.shape],
            "in_strides": [st[p] for p in spec.attrs.perm], "numel_out": cexpr.numel_expr(out.shape)}


@context_for("slice")
def _slice(b: Any, spec: KernelSpec) -> Context:
    """out[i] = in[base + sum_k coord_k(i) * in_strides[k]] (steps folded into the strides)."""
    x, out = spec.inputs[0], spec.outputs[0]
    st = strides(x.shape)
    a = spec.attrs
    base = " + ".join(f"INT64_C({s}) * ({st[k]})" for k, s in enumerate(a.starts) if s) or "INT64_C(0)"
    return {"rank": out.rank, "out_dims": [cexpr.dim_expr(d) for d in out.shape],
            "in_strides": [f"INT64_C({step}) * ({st[k]})" for k, step in enumerate(a.steps)],
            "base": base, "numel_out": cexpr.numel_expr(out.shape)}


def _window(spec: KernelSpec) -> Context:
    """The fields of an im2col window (im2col's and patch_linear's attrs name them alike): the input's layout, the
    filter, stride, padding and dilation, and `src`, where channel c of pixel (img, ih, iw) lives."""
    x, out = spec.inputs[0], spec.outputs[0]
    a = spec.attrs
    _, h, w, c = (x.shape[0], *x.shape[2:], x.shape[1]) if a.channels_first else x.shape
    src = "((img * {C} + c) * {H} + ih) * {W} + iw" if a.channels_first else "((img * {H} + ih) * {W} + iw) * {C} + c"
    return {"src": src.format(H=h, W=w, C=c), "H": h, "W": w, "C": c,
            "OH": out.shape[1], "OW": out.shape[2], "KH": a.kernel[0], "KW": a.kernel[1],
            "SH": a.stride[0], "SW": a.stride[1], "PT": a.pads[0], "PL": a.pads[1], "DH": a.dilation[0],
            "DW": a.dilation[1], "KC": a.kernel[0] * a.kernel[1] * c, "numel_in": cexpr.numel_expr(x.shape)}


@context_for("im2col")
def _im2col(b: Any, spec: KernelSpec) -> Context:
    x, out = spec.inputs[0], spec.outputs[0]
    return _window(spec) | {"K": spec.attrs.cols, "numel_out": cexpr.numel_expr(out.shape),
                            **_row_vector(spec.attrs.cols, x.dtype.itemsize)}


@context_for("patch_linear")
def _patch_linear(b: Any, spec: KernelSpec) -> Context:
    """im2col's window fields (its kernel gathers them) + linear's N and epilogue; K is the weight's
    padded width, KC = KH*KW*C the columns that hold taps."""
    x, w, out = spec.inputs[0], spec.inputs[1], spec.outputs[0]
    a = spec.attrs
    return _window(spec) | {
        "K": w.shape[1], "N": w.shape[0], "channels_first": a.channels_first, "M": cexpr.numel_expr(out.shape[:3]),
        "WWP": patch_window_width(out.shape[2], a.stride[1], a.kernel[1], a.dilation[1]),
        "mma": patch_linear_mma(b.api, x.dtype, w.shape[0], w.shape[1])} | _epilogue(spec, 2)


def patch_window_width(ow: int, sw: int, kw: int, dw: int) -> int:
    """Input columns one output row's windows span (padding included), rounded up to even."""
    span = (ow - 1) * sw + (kw - 1) * dw + 1
    return span + span % 2


def patch_linear_mma(api: str, dtype: DType, n: int, k: int) -> bool:
    """gpu/patch_linear.j2's tensor-core path: CUDA halves, output channels that two warps split into pairs of
    n8 tiles (a multiple of 32, up to 128), and a patch of up to 512 columns in shared memory."""
    return api == "cuda" and dtype in (DType.F16, DType.BF16) and n % 32 == 0 and n <= 128 and k <= 512


# Unsigned types as wide as 1, 2, 4, 8 and 16 bytes: raw element bits and vector stores.
_RAW = {1: "uint8_t", 2: "uint16_t", 4: "uint32_t", 8: "uint64_t", 16: "uint4"}


def _row_vector(cols: int, itemsize: int) -> dict[str, Any]:
    """The widest store (at most 16 bytes) that a row of `cols` elements divides into evenly,
    so every row starts vector aligned."""
    vec = 16 // itemsize
    while cols % vec:
        vec //= 2
    return {"raw": _RAW[itemsize], "vec": vec, "vec_bytes": vec * itemsize, "vec_type": _RAW[vec * itemsize]}


@context_for("pad")
def _pad(b: Any, spec: KernelSpec) -> Context:
    """out[i] = in[sum_k (coord_k(i) - before_k) * in_strides[k]] when every coord lands inside, else 0."""
    x, out = spec.inputs[0], spec.outputs[0]
    return {"rank": out.rank, "out_dims": [cexpr.dim_expr(d) for d in out.shape],
            "in_dims": [cexpr.dim_expr(d) for d in x.shape], "in_strides": strides(x.shape),
            "before": [spec.attrs.pads[2 * k] for k in range(x.rank)], "numel_out": cexpr.numel_expr(out.shape)}


@context_for("concat")
def _concat(b: Any, spec: KernelSpec) -> Context:
    """Each input is [OUTER, inner_j]; the output is [OUTER, OUT_INNER] with input j at column offset_j.
    An input broadcast over OUTER (its dims before the axis all 1) repeats its one row: row stride 0."""
    axis = spec.attrs.axis
    out = spec.outputs[0]
    pieces, offset = [], 0
    tail = cexpr.numel_expr(out.shape[axis + 1:])
    for j, t in enumerate(spec.inputs):
        width = t.shape[axis]
        inner = f"INT64_C({width}) * ({tail})"
        broadcast = t.shape[:axis] != out.shape[:axis]
        pieces.append({"arg": j, "inner": inner, "offset": f"INT64_C({offset}) * ({tail})",
                       "row_stride": "INT64_C(0)" if broadcast else inner})
        offset += width
    return {"OUTER": cexpr.numel_expr(out.shape[:axis]), "OUT_INNER": f"INT64_C({offset}) * ({tail})",
            "pieces": pieces}


@context_for("embedding")
def _embedding(b: Any, spec: KernelSpec) -> Context:
    table, idx = spec.inputs
    return {"V": table.shape[0], "D": table.shape[1], "ROWS": cexpr.numel_expr(idx.shape),
            "it": b.ctype(idx.dtype)}


@context_for("cast", "copy")
def _cast(b: Any, spec: KernelSpec) -> Context:
    return {"numel_out": cexpr.numel_expr(spec.outputs[0].shape), "it": b.ctype(spec.inputs[0].dtype),
            "ot": b.ctype(spec.outputs[0].dtype),
            "nbytes": f"({cexpr.numel_expr(spec.outputs[0].shape)}) * {spec.outputs[0].dtype.itemsize}"}


@context_for("matmul")
def _matmul(b: Any, spec: KernelSpec) -> Context:
    """out[bi] = a[a_off(bi)] @ b[b_off(bi)], bi over the broadcast batch dims."""
    a, bb, out = spec.inputs[0], spec.inputs[1], spec.outputs[0]
    batch = out.shape[:-2]
    m, n, k = a.shape[-2], bb.shape[-1], a.shape[-1]

    def batch_offset(t: TensorType) -> str:
        mat = f"({cexpr.dim_expr(t.shape[-2])}) * ({cexpr.dim_expr(t.shape[-1])})"
        return f"({cexpr.offset_expr(t.shape[:-2], batch, 'bi')}) * {mat}"

    return {"BATCH": cexpr.numel_expr(batch), "M": cexpr.dim_expr(m), "N": cexpr.dim_expr(n),
            "K": cexpr.dim_expr(k), "a_off": batch_offset(a), "b_off": batch_offset(bb)}


def attention_mma(api: str, dtype: DType, d: int, dv: int) -> bool:
    """Whether gpu/attention.j2 takes its tensor-core (mma.sync m16n8k16) path:
    CUDA, f16/bf16, both head dims multiples of 16 and at most 128 (the
    per-thread register tiles grow with them); anything else runs the SIMT path."""
    return (api == "cuda" and dtype in (DType.F16, DType.BF16) and d % 16 == 0 and dv % 16 == 0
            and 0 < d <= 128 and 0 < dv <= 128)


@context_for("attention")
def _attention(b: Any, spec: KernelSpec) -> Context:
    """Element strides per (batch, head, position) of q, k, v and out, and each
    one's base offset, whatever the layout; the mask's strides are 0 along its
    broadcast dims. The mask, when present, is the last input."""
    a = spec.attrs
    out = spec.outputs[0]
    bdim, sq, hdim, dv = out.shape if a.layout != "bhsd" else (out.shape[0], out.shape[2], out.shape[1], out.shape[3])

    def bhs(t: TensorType, base: str = "INT64_C(0)") -> dict[str, str]:
        st = strides(t.shape)
        if a.layout == "bhsd":
            return {"b": st[0], "h": st[1], "s": st[2], "base": base}
        if a.layout == "bshd":
            return {"b": st[0], "h": st[2], "s": st[1], "base": base}
        return {"b": st[0], "h": st[3], "s": st[1], "base": base}  # bs3hd: [B, S, 3, H, D]

    if a.layout == "bs3hd":
        qkv = spec.inputs[0]
        sk, d = qkv.shape[1], qkv.shape[4]
        plane = strides(qkv.shape)[2]
        q, k, v = (bhs(qkv, f"INT64_C({i}) * ({plane})") for i in range(3))
        args = {"q": 0, "k": 0, "v": 0}
    else:
        qt, kt, vt = spec.inputs[:3]
        sk = kt.shape[1] if a.layout == "bshd" else kt.shape[2]
        d = qt.shape[3]
        q, k, v = bhs(qt), bhs(kt), bhs(vt)
        args = {"q": 0, "k": 1, "v": 2}
    ctx: Context = {"B": cexpr.dim_expr(bdim), "H": cexpr.dim_expr(hdim), "SQ": cexpr.dim_expr(sq),
                    "SK": cexpr.dim_expr(sk), "D": d, "DV": dv, "scale": repr(float(a.scale)),
                    "causal": a.causal, "has_mask": a.has_mask, "args": args,
                    "mask_arg": len(spec.inputs) - 1, "out_arg": len(spec.inputs),
                    "q": q, "k": k, "v": v, "o": bhs(out),
                    "mma": attention_mma(getattr(b, "api", ""), out.dtype, d, dv)}
    if a.layout == "bs3hd":
        ctx["o"] = {"b": strides(out.shape)[0], "h": strides(out.shape)[2], "s": strides(out.shape)[1],
                    "base": "INT64_C(0)"}
    if a.has_mask:
        mask = spec.inputs[-1]
        full = (bdim, hdim, sq, sk)
        padded = (1,) * (4 - mask.rank) + tuple(mask.shape)
        st = strides(padded)
        ctx["m"] = {axis: ("INT64_C(0)" if padded[i] == 1 and full[i] != 1 else st[i])
                    for i, axis in enumerate(("b", "h", "q", "k"))}
    fields = {"H": ctx["H"], "SQ": ctx["SQ"], "SK": ctx["SK"]}
    for t in "qkvom" if a.has_mask else "qkvo":
        fields |= {f"{t}_{axis}": expr for axis, expr in ctx[t].items() if axis != "base"}
    if not a.has_mask:
        fields |= {f"m_{axis}": "INT64_C(0)" for axis in "bhqk"}
    ctx["consts"] = {name: value for name, expr in fields.items() if (value := cexpr.literal_value(expr)) is not None}
    return ctx


def is_int(dtype: DType) -> bool:
    return dtype in (DType.I32, DType.I64, DType.BOOL)
