"""Whole layers through the pipeline and the lowering: the issue's kernel-count figures."""
from __future__ import annotations

import numpy as np

from kiln import reference
from kiln.builder import symbol
from planner_svc.lower import lower
from planner_svc.pipeline import run_passes
from tests.passes.helpers import assert_same_meaning
from tests.passes.models import bert_encoder, bert_model, resnet50
from tests.support.op_cases import case_feeds

B = symbol("B", 1, 4)
LAYER_KERNELS = ["linear", "attention", "linear", "layernorm", "linear", "linear", "layernorm"]


def test_bert_layers_are_seven_kernels_each_with_no_copy_or_permute():
    for style in ("torch", "onnx", "sdpa"):
        before = bert_encoder(B, 8, 2, hidden=32, heads=4, ffn=64, style=style)
        after, _ = run_passes(before)
        plan = lower(after, "cpu")
        ops = [c.spec.op for c in plan.calls]
        # One kernel for the mask, made once for every layer; then 7 a layer.
        assert ops == ["fused_elementwise"] + LAYER_KERNELS * 2, style
        attn = [c for c in plan.calls if c.spec.op == "attention"]
        assert all(c.spec.attrs.layout == "bs3hd" for c in attn)
        epilogues = [c.spec.attrs.epilogue for c in plan.calls if c.spec.op == "linear"]
        assert [len(e) for e in epilogues] == [0, 1, 1, 1] * 2      # qkv; out+res; ffn1+gelu; ffn2+res
        assert_same_meaning(before, after, rtol=1e-9, atol=1e-12)
        # The memory plan reuses activations across layers.
        assert plan.arena_bytes < plan.activation_bytes_total


def test_bert_base_shapes_plan_without_running():
    graph = bert_encoder(symbol("B", 1, 64), 384, 1)
    plan = lower(run_passes(graph)[0], "cpu")
    assert [c.spec.op for c in plan.calls] == ["fused_elementwise"] + LAYER_KERNELS
    qkv = plan.calls[1].spec
    assert qkv.inputs[1].shape == (3 * 768, 768)


def test_resnet50_is_one_kernel_per_conv():
    graph = resnet50(symbol("B", 1, 8), size=64)
    plan = lower(run_passes(graph)[0], "cpu")
    ops = [c.spec.op for c in plan.calls]
    assert [op.kind for op in graph.ops].count("conv2d") == 53
    # 33 are pointwise (each bottleneck's conv1 and conv3, layer1's downsample): plain GEMMs;
    # the 3-channel stem is one patch_linear (its patches gathered inside the GEMM).
    assert ops.count("conv2d") == 19 and ops.count("linear") == 33 + 1
    assert ops[:2] == ["patch_linear", "pool2d"] and ops[-2:] == ["reduce_mean", "linear"]
    assert len(ops) == 53 + 3
    assert "batchnorm" not in ops and "fused_elementwise" not in ops


def _same_outputs_on_valid_ids(before, after) -> None:
    """assert_same_meaning's check, with token ids in range (random normals are not ids)."""
    for batch in (1, 3):
        feeds = case_feeds(before, seed=batch, sizes={"B": batch})
        want, got = reference.run(before, feeds), reference.run(after, feeds)
        for name in want:
            assert np.abs(want[name]).max() > 0
            assert np.allclose(got[name], want[name], rtol=1e-9, atol=1e-12), (name, batch)


def test_distilbert_embedding_sum_is_read_by_its_layernorm():
    """word + position embeddings (both [B, S, H]) -> LayerNorm: no GEMM can take that add, the norm does."""
    before = bert_model(B, 8, 1, hidden=32, heads=4, ffn=64, embeddings="distilbert")
    after, _ = run_passes(before)
    plan = lower(after, "cpu")
    assert [c.spec.op for c in plan.calls] == ["embedding", "embedding", "layernorm", "fused_elementwise"] + LAYER_KERNELS
    norms = [c.spec for c in plan.calls if c.spec.op == "layernorm"]
    assert [n.attrs.has_residual for n in norms] == [True, False, False]   # the layers' adds stay in GEMM epilogues
    assert len(norms[0].inputs) == 4 and norms[0].inputs[3] == norms[0].inputs[0]
    _same_outputs_on_valid_ids(before, after)


def test_bert_three_way_embedding_sum_stays_one_fused_elementwise():
    """word + token type + broadcast position: one fused kernel of two adds, then a plain norm
    (moving its last add into the norm would save no traffic)."""
    before = bert_model(B, 8, 1, hidden=32, heads=4, ffn=64, embeddings="bert")
    after, _ = run_passes(before)
    plan = lower(after, "cpu")
    assert [c.spec.op for c in plan.calls] == (["embedding", "embedding", "fused_elementwise", "layernorm",
                                                 "fused_elementwise"] + LAYER_KERNELS)
    assert not any(c.spec.attrs.has_residual for c in plan.calls if c.spec.op == "layernorm")
    _same_outputs_on_valid_ids(before, after)
