"""fuse_qkv_projections: Q, K, V linears on one input -> one linear, packed bs3hd attention."""
from __future__ import annotations

import numpy as np

from kiln.builder import GraphBuilder
from kiln.ir import Graph, Tensor
from planner_svc.passes import eliminate_dead_code, fuse_attention, fuse_qkv_projections, remove_noops
from tests.passes.helpers import B, assert_same_meaning, kinds
from tests.passes.models import self_attention

S, HIDDEN, HEADS = 5, 24, 3


def prepared(cross: bool = False, k_read_twice: bool = False) -> tuple[Graph, Graph]:
    """(the layer, the layer after attention fusion and clean-up: this pass's input)."""
    b = GraphBuilder("qkv")
    x = b.input("x", (B, S, HIDDEN))
    mask = b.input("mask", (B, 1, 1, S))
    rng = np.random.default_rng(2)
    out = self_attention(b, x, mask, "attn", HIDDEN, HEADS, rng)
    before = b.build(out)
    if cross or k_read_twice:
        ops = list(before.ops)
        key = next(i for i, o in enumerate(ops) if o.name == "linear_1")
        if cross:   # K reads another tensor: cross-attention
            ops[key] = ops[key].replace(inputs=("x2",) + ops[key].inputs[1:])
            before = before.replace(inputs=before.inputs + (Tensor("x2", before.inputs[0].type),), ops=tuple(ops))
        else:
            before = before.replace(outputs=before.outputs + ("linear_1.out",))
    return before, eliminate_dead_code(remove_noops(fuse_attention(before)))


def test_three_projections_become_one_gemm():
    before, ready = prepared()
    assert kinds(ready).count("linear") == 3
    after = fuse_qkv_projections(ready)
    assert kinds(after) == ["linear", "reshape", "attention", "reshape"]
    fused, view, attn = after.ops[:3]
    consts = after.constant_map()
    assert consts[fused.inputs[1]].type.shape == (3 * HIDDEN, HIDDEN)
    assert consts[fused.inputs[2]].type.shape == (3 * HIDDEN,)
    assert view.attrs.shape == (0, 0, 3, HEADS, HIDDEN // HEADS)
    assert attn.attrs.layout == "bs3hd" and attn.inputs == (view.outputs[0], "mask")
    assert_same_meaning(before, after)


def test_cross_attention_is_not_packed():
    _, ready = prepared(cross=True)
    assert fuse_qkv_projections(ready) == ready


def test_projection_read_elsewhere_is_not_packed():
    _, ready = prepared(k_read_twice=True)
    assert fuse_qkv_projections(ready) == ready
