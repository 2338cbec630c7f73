"""Linear -> GELU -> Linear -> residual add -> LayerNorm, in fp32 and fp16.

`kiln compile examples/mlp.py --target cpu` compiles it; KILN_MLP_DTYPE picks
one dtype (default: both, as two outputs of one graph).
"""
from __future__ import annotations

import os

from kiln import nn
from kiln.builder import GraphBuilder, Value, gelu, symbol
from kiln.dtypes import DType

HIDDEN, FFN = 256, 1024


def block(x: Value, prefix: str, dtype: DType) -> Value:
    h = nn.Linear(f"{prefix}.fc1", HIDDEN, FFN, dtype=dtype)(x)
    h = gelu(h)
    h = nn.Linear(f"{prefix}.fc2", FFN, HIDDEN, dtype=dtype)(h)
    return nn.LayerNorm(f"{prefix}.ln", HIDDEN, dtype=dtype)(h + x)


def build():
    dtypes = [DType(d) for d in os.environ.get("KILN_MLP_DTYPE", "float32,float16").split(",")]
    b = GraphBuilder("mlp")
    batch = symbol("batch", 1, 128)
    outs = []
    for dt in dtypes:
        tag = "f32" if dt is DType.F32 else "f16"
        x = b.input(f"x_{tag}", (batch, HIDDEN), dt)
        outs.append(block(x, f"mlp_{tag}", dt))
    return b.build(*outs)
