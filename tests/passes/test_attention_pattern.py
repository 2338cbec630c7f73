"""fuse_attention: the exporters' spellings of softmax(q k^T * scale + mask) v become one attention op."""
from __future__ import annotations

import math

import numpy as np
import pytest

from kiln.builder import GraphBuilder, matmul, softmax
from kiln.ir import Graph
from planner_svc.passes import eliminate_dead_code, fuse_attention, remove_noops
from tests.passes.helpers import B, assert_same_meaning, kernels, kinds
from tests.passes.models import permute, projection, scalar, self_attention

S, HIDDEN, HEADS = 6, 16, 4
D = HIDDEN // HEADS


def layer(style: str, mask: str = "bert", out_proj: bool = False) -> Graph:
    b = GraphBuilder(f"attn_{style}")
    x = b.input("x", (B, S, HIDDEN))
    m = {"bert": lambda: b.input("mask", (B, 1, 1, S)), "square": lambda: b.input("mask", (S, S)),
         "none": lambda: None}[mask]()
    rng = np.random.default_rng(1)
    h = self_attention(b, x, m, "attn", HIDDEN, HEADS, rng, style)
    # A reshape that is a graph output must own its bytes (a copy), so real layers end in a projection.
    return b.build(projection(b, h, "out", HIDDEN, HIDDEN, rng, style) if out_proj else h)


def attention_ops(g: Graph):
    return [op for op in g.ops if op.kind == "attention"]


@pytest.mark.parametrize("style", ["torch", "onnx", "sdpa"])
@pytest.mark.parametrize("mask", ["bert", "square", "none"])
def test_export_spellings_become_one_bshd_attention(style, mask):
    before = layer(style, mask)
    after = fuse_attention(before)
    (attn,) = attention_ops(after)
    assert attn.attrs.layout == "bshd"
    assert attn.attrs.has_mask == (mask != "none")
    assert math.isclose(attn.attrs.scale, 1 / math.sqrt(D), rel_tol=1e-6)
    assert "softmax" not in kinds(after)
    assert kinds(after).count("matmul") == (3 if style == "onnx" else 0)   # ONNX's projections stay matmuls
    assert_same_meaning(before, after, rtol=1e-6 if style == "sdpa" else 1e-12)
    # The head permutes compose to identities, so q, k, v are views of the projections' outputs.
    clean = eliminate_dead_code(remove_noops(after))
    assert "permute" not in kinds(clean)
    assert_same_meaning(before, clean, rtol=1e-6 if style == "sdpa" else 1e-12)


@pytest.mark.parametrize("style", ["torch", "onnx", "sdpa"])
def test_no_permute_or_copy_kernel_remains(style):
    assert kernels(layer(style, out_proj=True)) == ["linear", "attention", "linear"]


def test_bhsd_inputs_give_a_bhsd_attention_without_permutes():
    b = GraphBuilder("bhsd")
    q, k, v = (b.input(n, (B, HEADS, S, D)) for n in "qkv")
    mask = b.input("mask", (B, 1, S, S))
    scores = matmul(q, permute(k, (0, 1, 3, 2))) / scalar(b, "sqrt_d", 2.0) + mask
    before = b.build(matmul(softmax(scores), v))
    after = eliminate_dead_code(remove_noops(fuse_attention(before)))
    assert kinds(after) == ["attention"]
    assert after.ops[0].attrs.layout == "bhsd" and after.ops[0].inputs == ("q", "k", "v", "mask")
    assert after.ops[0].attrs.scale == 0.5
    assert_same_meaning(before, after)


def test_k_given_already_transposed_needs_one_permute():
    b = GraphBuilder("kt_input")
    q, v = b.input("q", (B, HEADS, S, D)), b.input("v", (B, HEADS, S, D))
    kt = b.input("kt", (B, HEADS, D, S))
    before = b.build(matmul(softmax(matmul(q, kt) * scalar(b, "c", 0.3)), v))
    after = eliminate_dead_code(remove_noops(fuse_attention(before)))
    assert kinds(after) == ["permute", "attention"]
    assert after.ops[1].attrs.layout == "bhsd" and not after.ops[1].attrs.has_mask
    assert_same_meaning(before, after)


def test_context_read_in_bhsd_gets_one_permute_back():
    """Heads come from permutes, the context is used as [B, H, S, D]: bshd plus one permute beats three."""
    b = GraphBuilder("ctx_bhsd")
    x = b.input("x", (B, S, HEADS, D))
    q = permute(x * scalar(b, "two", 2.0), (0, 2, 1, 3))
    k = permute(-x, (0, 2, 1, 3))
    v = permute(x, (0, 2, 1, 3))
    before = b.build(matmul(softmax(matmul(q, permute(k, (0, 1, 3, 2)))), v))
    after = eliminate_dead_code(remove_noops(fuse_attention(before)))
    assert kinds(after).count("permute") == 1
    (attn,) = attention_ops(after)
    assert attn.attrs.layout == "bshd"
    assert_same_meaning(before, after)


def _scores_graph(variant: str) -> Graph:
    b = GraphBuilder(variant)
    q, k, v = (b.input(n, (B, HEADS, S, D)) for n in "qkv")
    mask = b.input("mask", (B, 1, 1, S))
    s = matmul(q, permute(k, (0, 1, 3, 2)))
    c = scalar(b, "c", 0.5)
    if variant == "mask_before_scale":
        s = (s + mask) * c
    elif variant == "tensor_scale":
        s = s * b.input("t", (B, HEADS, S, S))
    elif variant == "scores_reused":
        p = softmax(s)
        return b.build(matmul(p, v), s)
    elif variant == "probs_reused":
        p = softmax(s * c)
        return b.build(matmul(p, v), p)
    return b.build(matmul(softmax(s), v))


@pytest.mark.parametrize("variant", ["mask_before_scale", "tensor_scale", "scores_reused", "probs_reused"])
def test_lookalikes_are_left_alone(variant):
    before = _scores_graph(variant)
    after = fuse_attention(before)
    assert after == before


def test_two_attentions_in_one_graph():
    b = GraphBuilder("two")
    x = b.input("x", (B, S, HIDDEN))
    rng = np.random.default_rng(3)
    h = self_attention(b, x, None, "a0", HIDDEN, HEADS, rng)
    h = self_attention(b, h, None, "a1", HIDDEN, HEADS, rng, "onnx")
    before = b.build(h)
    after = fuse_attention(before)
    assert len(attention_ops(after)) == 2
    assert_same_meaning(before, after)


def test_head_dim_over_the_limit_is_not_fused():
    b = GraphBuilder("big_d")
    q, k, v = (b.input(n, (1, 1, 2, 300)) for n in "qkv")
    before = b.build(matmul(softmax(matmul(q, permute(k, (0, 1, 3, 2)))), v))
    assert fuse_attention(before) == before


def test_attention_output_as_graph_output_is_copied_once():
    """The lowering gives a graph output its own bytes: the final reshape view becomes a copy."""
    assert kernels(layer("torch")) == ["linear", "attention", "copy"]
