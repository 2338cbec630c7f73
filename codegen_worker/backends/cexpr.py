"""C expressions shared by every C-style backend: sizes, offsets, pointwise math.

Only these strings know how an op computes one element; the backends decide
where the loop runs (a host loop, a CUDA grid, a HIP grid).
"""
from __future__ import annotations

import math
import re

from kiln.ir import Dim, IntVar, TensorType
from kiln.ops import EwInstr

UNARY_C = {
    "relu": "fmaxf({0}, 0.0f)",
    "gelu": "(0.5f * {0} * (1.0f + erff({0} * 0.70710678118654752f)))",
    "gelu_tanh": "(0.5f * {0} * (1.0f + tanhf(0.7978845608028654f * ({0} + 0.044715f * {0} * {0} * {0}))))",
    "silu": "({0} / (1.0f + expf(-{0})))",
    "sigmoid": "(1.0f / (1.0f + expf(-{0})))",
    "tanh": "tanhf({0})",
    "exp": "expf({0})",
    "neg": "(-{0})",
    "sqrt": "sqrtf({0})",
    "rsqrt": "(1.0f / sqrtf({0}))",
    "reciprocal": "(1.0f / {0})",
    "erf": "erff({0})",
    "abs": "fabsf({0})",
    "log": "logf({0})",
}
BINARY_C = {
    "add": "({0} + {1})",
    "sub": "({0} - {1})",
    "mul": "({0} * {1})",
    "div": "({0} / {1})",
    "maximum": "fmaxf({0}, {1})",
    "minimum": "fminf({0}, {1})",
    "pow": "powf({0}, {1})",
}


def dim_expr(d: Dim) -> str:
    """Spec symbols are s0, s1, ...: C variables the kernel reads from dims[]."""
    return d.name if isinstance(d, IntVar) else f"INT64_C({d})"


def literal_value(expr: str) -> int | None:
    """The value of an expression that is one literal as dim_expr/numel_expr write it (a static
    extent or stride), else None."""
    m = re.fullmatch(r"\(*INT64_C\((-?\d+)\)\)*", expr.strip())
    return int(m.group(1)) if m else None


def numel_expr(shape: tuple[Dim, ...]) -> str:
    static = math.prod(d for d in shape if isinstance(d, int))
    parts = [d.name for d in shape if isinstance(d, IntVar)]
    if static != 1 or not parts:
        parts.append(f"INT64_C({static})")
    return " * ".join(parts)


def offset_expr(inp: tuple[Dim, ...], out: tuple[Dim, ...], index: str) -> str:
    """Offset into a row-major input broadcast against `out`, at flat `index`."""
    if inp == out:
        return index
    r = len(out) - len(inp)
    padded = (1,) * r + tuple(inp)
    # Trailing-suffix broadcast (a bias row): index modulo the suffix size.
    k = len(out)
    while k > 0 and padded[k - 1] == out[k - 1]:
        k -= 1
    if all(d == 1 for d in padded[:k]):
        suffix = out[k:]
        return f"({index} % ({numel_expr(suffix)}))" if suffix else "0"
    terms = []
    out_stride = "INT64_C(1)"
    in_stride = "INT64_C(1)"
    for axis in reversed(range(len(out))):
        coord = f"(({index} / ({out_stride})) % {dim_expr(out[axis])})"
        if padded[axis] != 1:
            terms.append(f"{coord} * ({in_stride})")
            in_stride = f"{in_stride} * {dim_expr(padded[axis])}"
        out_stride = f"{out_stride} * {dim_expr(out[axis])}"
    return "(" + " + ".join(terms) + ")" if terms else "0"


def program_lines(program: tuple[EwInstr, ...], inputs: list[str], result: str) -> list[str]:
    """`float vN = ...;` lines computing the program, the last into `result`."""
    names = list(inputs)
    lines = []
    for i, instr in enumerate(program):
        table = UNARY_C if len(instr.args) == 1 else BINARY_C
        expr = table[instr.op].format(*(names[a] for a in instr.args))
        name = result if i == len(program) - 1 else f"v{i}"
        lines.append(f"{'' if name == result else 'const float '}{name} = {expr};")
        names.append(name)
    return lines


def symbol_lines(symbols: tuple[IntVar, ...]) -> list[str]:
    return [f"const int64_t {s.name} = dims[{i}];" for i, s in enumerate(symbols)]


def rows_cols(t: TensorType) -> tuple[str, str]:
    """A tensor as rows x last-dim (the shape GEMMs and norms see)."""
    return numel_expr(t.shape[:-1]) if t.rank > 1 else "INT64_C(1)", dim_expr(t.shape[-1])
