"""Property: random CNN and transformer graphs keep their meaning through every pass and lower().

The generators mix the new op kinds: conv -> batchnorm -> relu chains with
residual adds (batch norm folded or rewritten), permute/reshape chains, and
attention patterns in each exporter's spelling (matched or, where a step
breaks the pattern, left as matmuls), over a symbolic batch dim.
"""
from __future__ import annotations

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kiln import reference
from kiln.builder import GraphBuilder, Value, gelu, layer_norm, relu, symbol
from kiln.ir import Graph
from kiln.ops import BatchNormAttrs, Conv2dAttrs
from planner_svc.lower import lower
from planner_svc.passes import fuse_residual_layernorm
from planner_svc.pipeline import run_passes
from tests.passes.models import permute, projection, reshape, self_attention
from tests.test_passes import live_activations_disjoint

B = symbol("B", 1, 3)
CNN_STEPS = ("conv", "conv_bias", "bn", "relu", "residual", "permute_pair", "reshape_pair", "scale_one")
TF_STEPS = ("torch", "onnx", "sdpa", "torch_nomask", "linear", "gelu", "layernorm", "residual", "permute_pair",
            "add_norm")


def _batchnorm(b: GraphBuilder, x: Value, rng: np.random.Generator) -> Value:
    c = x.type.shape[-1]
    stats = [1 + 0.2 * rng.standard_normal(c), 0.2 * rng.standard_normal(c), 0.2 * rng.standard_normal(c),
             rng.uniform(0.5, 1.5, c)]
    return b.op("batchnorm", [x, *(b.constant(f"bn{len(b.ops)}.{i}", s) for i, s in enumerate(stats))],
                BatchNormAttrs())


def build_cnn(steps: list[tuple[str, int]], seed: int) -> Graph:
    rng = np.random.default_rng(seed)
    b = GraphBuilder("cnn")
    h = b.input("x", (B, 5, 5, 4))
    made = [h]
    for kind, pick in steps:
        if kind.startswith("conv"):
            w = b.constant(f"w{len(b.ops)}", rng.standard_normal((4, 3, 3, 4)) * 0.3)
            ins = [h, w] + ([b.constant(f"cb{len(b.ops)}", rng.standard_normal(4))] if kind == "conv_bias" else [])
            h = b.op("conv2d", ins, Conv2dAttrs(pads=(1, 1, 1, 1), has_bias=kind == "conv_bias"))
        elif kind == "bn":
            h = _batchnorm(b, h, rng)
        elif kind == "relu":
            h = relu(h)
        elif kind == "residual":
            h = h + made[pick % len(made)]
        elif kind == "permute_pair":
            h = permute(permute(h, (0, 2, 1, 3)), (0, 2, 1, 3))
        elif kind == "reshape_pair":
            h = reshape(reshape(h, (0, 25, 4)), (0, 5, 5, 4))
        else:
            h = h * b.constant(f"one{len(b.ops)}", np.ones(4))
        made.append(h)
    extra = made[1 + steps[0][1] % (len(made) - 1)] if len(made) > 2 else None
    return b.build(h, extra) if extra is not None and extra.name != h.name else b.build(h)


def build_transformer(steps: list[tuple[str, int]], seed: int) -> Graph:
    rng = np.random.default_rng(seed)
    b = GraphBuilder("tf")
    h = b.input("x", (B, 4, 8))
    mask = b.input("mask", (B, 1, 1, 4))
    made = [h]
    for i, (kind, pick) in enumerate(steps):
        if kind in ("torch", "onnx", "sdpa", "torch_nomask"):
            style = "torch" if kind == "torch_nomask" else kind
            h = self_attention(b, h, None if kind == "torch_nomask" else mask, f"a{i}", 8, 2, rng, style)
        elif kind == "linear":
            h = projection(b, h, f"p{i}", 8, 8, rng, "onnx" if pick % 2 else "torch")
        elif kind == "gelu":
            h = gelu(h)
        elif kind == "layernorm":
            h = layer_norm(h, b.constant(f"g{i}", 1 + 0.1 * rng.standard_normal(8)),
                           b.constant(f"be{i}", 0.1 * rng.standard_normal(8)))
        elif kind == "residual":
            h = h + made[pick % len(made)]
        elif kind == "add_norm":  # post-LN "add & norm": the GEMM epilogue or the norm takes the add
            h = layer_norm(h + made[pick % len(made)], b.constant(f"g{i}", 1 + 0.1 * rng.standard_normal(8)),
                           b.constant(f"be{i}", 0.1 * rng.standard_normal(8)))
        else:
            h = reshape(permute(reshape(h, (0, 4, 2, 4)), (0, 2, 1, 3)), (0, 4, 8))
        made.append(h)
    return b.build(h)


def check(before: Graph, batch: int, seed: int) -> Graph:
    after, _ = run_passes(before)
    assert after.outputs == before.outputs and after.inputs == before.inputs
    assert "batchnorm" not in {op.kind for op in after.ops}
    feeds = reference.random_inputs(before, seed=seed, sizes={"B": batch})
    with np.errstate(all="ignore"):
        want, got = reference.run(before, feeds), reference.run(after, feeds)
    for name in before.outputs:
        assert got[name].shape == want[name].shape
        # Folded batch norms and biases are float32 constants: float32 rounding, not float64's.
        assert np.allclose(got[name], want[name], rtol=1e-5, atol=1e-5, equal_nan=True), name
    live_activations_disjoint(lower(after, "cpu"))
    return after


settings_ = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@settings_
@given(st.lists(st.tuples(st.sampled_from(CNN_STEPS), st.integers(0, 20)), min_size=1, max_size=7),
       st.integers(0, 2**32 - 1), st.integers(1, 3))
def test_random_cnns(steps, seed, batch):
    before = build_cnn(steps, seed)
    after = check(before, batch, seed)
    kinds = [op.kind for op in after.ops]
    # Permute pairs cancel, except where a pair's result is a graph output (a kernel must write it).
    producers = before.producers()
    assert kinds.count("permute") <= sum(producers[o].kind == "permute" for o in before.outputs)
    convs = sum(k.startswith("conv") for k, _ in steps)
    # Each conv is one GEMM-like kernel: a conv2d, a linear (pointwise), a patch_linear (few channels in, few out),
    # or im2col + linear (few channels in, many out).
    gemms = kinds.count("conv2d") + kinds.count("linear") + kinds.count("patch_linear")
    assert gemms == convs and kinds.count("im2col") <= convs


@settings_
@given(st.lists(st.tuples(st.sampled_from(TF_STEPS), st.integers(0, 20)), min_size=1, max_size=5),
       st.integers(0, 2**32 - 1), st.integers(1, 3))
def test_random_transformers(steps, seed, batch):
    after = check(build_transformer(steps, seed), batch, seed)
    kinds = [op.kind for op in after.ops]
    assert fuse_residual_layernorm(after) == after    # no add the pipeline could still give a norm
    n_attn = sum(k in ("torch", "onnx", "sdpa", "torch_nomask") for k, _ in steps)
    assert kinds.count("attention") == n_attn and "softmax" not in kinds
