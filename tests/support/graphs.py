"""Small graphs the farm tests compile; sizes vary so tests do not share kernels by accident."""
from __future__ import annotations

import numpy as np

from kiln import nn
from kiln.builder import GraphBuilder, gelu, relu, symbol
from kiln.dtypes import DType
from kiln.ir import Graph


def mlp(hidden: int = 64, ffn: int = 128, dtype: DType = DType.F32, name: str = "mlp", seed: int = 0) -> Graph:
    rng = np.random.default_rng(seed)
    b = GraphBuilder(name)
    x = b.input("x", (symbol("batch", 1, 32), hidden), dtype)
    h = nn.Linear("fc1", hidden, ffn, dtype=dtype, rng=rng)(x)
    h = gelu(h)
    h = nn.Linear("fc2", ffn, hidden, dtype=dtype, rng=rng)(h)
    y = nn.LayerNorm("ln", hidden, dtype=dtype, rng=rng)(h + x)
    return b.build(y)


def two_linears(k: int, n: int, second_n: int, name: str, seed: int = 0) -> Graph:
    """linear(k->n)+relu, then linear(n->second_n): the first kernel is shared by graphs with equal k, n."""
    rng = np.random.default_rng(seed)
    b = GraphBuilder(name)
    x = b.input("x", (symbol("batch", 1, 16), k), DType.F32)
    h = relu(nn.Linear("a", k, n, rng=rng)(x))
    y = nn.Linear("b", n, second_n, rng=rng)(h)
    return b.build(y)
