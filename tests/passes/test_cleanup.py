"""Clean-up passes alone: constant folding, no-op removal, CSE, GEMM canonical forms."""
from __future__ import annotations

import numpy as np

from kiln.builder import GraphBuilder, linear, matmul, relu, tanh
from kiln.dtypes import DType
from kiln.ops import CastAttrs, SliceAttrs
from planner_svc.passes import (
    absorb_bias_adds,
    eliminate_common_subexpressions,
    eliminate_dead_code,
    fold_constants,
    matmul_to_linear,
    remove_noops,
)
from tests.passes.helpers import B, assert_same_meaning, const, kinds
from tests.passes.models import permute, reshape, scalar


def test_transposed_weight_folds_into_a_constant():
    b = GraphBuilder("fold")
    x = b.input("x", (B, 6))
    wt = permute(const(b, "w", 6, 4, seed=1), (1, 0))            # torch.export's aten.t(weight)
    before = b.build(linear(x, wt, name="fc"))
    after = eliminate_dead_code(fold_constants(before))
    assert kinds(after) == ["linear"]
    folded = after.constant_map()["permute_0.out"]
    assert folded.type.shape == (4, 6) and folded.type.dtype is DType.F32
    assert [c.name for c in after.constants] == ["permute_0.out"]
    assert_same_meaning(before, after)


def test_reshape_and_cast_of_constants_fold_keeping_the_result_dtype():
    b = GraphBuilder("fold2")
    x = b.input("x", (B, 2, 3), DType.F16)
    c = reshape(const(b, "c", 6, seed=2), (2, 3))
    c16 = b.op("cast", [c], CastAttrs("float16"))
    before = b.build(x * c16)
    after = fold_constants(before)
    assert kinds(after) == ["mul"]
    assert after.constant_map()["cast_0.out"].type.dtype is DType.F16
    assert_same_meaning(before, after, rtol=1e-3, atol=1e-3)


def test_sqrt_of_a_constant_folds_but_a_graph_output_is_kept():
    b = GraphBuilder("fold3")
    x = b.input("x", (B, 3))
    root = b.op("sqrt", [scalar(b, "d", 16.0)])
    before = b.build(x / root, b.op("neg", [scalar(b, "e", 2.0)]))
    after = fold_constants(before)
    assert kinds(after) == ["div", "neg"]           # neg's result is an output: a kernel writes it
    assert_same_meaning(before, after)


def test_identity_permute_and_same_shape_reshape_go():
    b = GraphBuilder("noop")
    x = b.input("x", (B, 3, 4))
    h = permute(permute(relu(x), (0, 2, 1)), (0, 2, 1))
    h = reshape(h, (0, 3, 4))
    h = b.op("slice", [h], SliceAttrs((0, 0, 0), (4, 3, 4), (1, 1, 1)))
    h = b.op("cast", [h], CastAttrs("float32"))
    before = b.build(tanh(h))
    after = eliminate_dead_code(remove_noops(before))
    assert kinds(after) == ["relu", "tanh"]
    assert after.ops[1].inputs == ("relu_0.out",)
    assert_same_meaning(before, after)


def test_permute_chain_composes_into_one():
    b = GraphBuilder("perm2")
    x = b.input("x", (B, 2, 3, 4))
    before = b.build(relu(permute(permute(x, (0, 2, 1, 3)), (0, 1, 3, 2))))
    after = eliminate_dead_code(remove_noops(before))
    assert kinds(after) == ["permute", "relu"]
    assert after.ops[0].inputs == ("x",) and after.ops[0].attrs.perm == (0, 2, 3, 1)
    assert_same_meaning(before, after)


def test_reshape_chain_collapses_keeping_the_symbolic_dim():
    b = GraphBuilder("resh2")
    x = b.input("x", (B, 4, 6))
    before = b.build(relu(reshape(reshape(x, (0, 24)), (0, 2, 12))))
    after = eliminate_dead_code(remove_noops(before))
    assert kinds(after) == ["reshape", "relu"]
    assert after.ops[0].inputs == ("x",) and after.ops[0].attrs.shape == (0, 2, 12)
    assert_same_meaning(before, after)


def test_a_layout_round_trip_that_moves_nothing_is_a_reshape():
    # ViT: NHWC patches -> NCHW -> flatten(2) -> transpose(1, 2) is the NHWC tensor as [B, H*W, C].
    b = GraphBuilder("vit_tokens")
    x = b.input("x", (B, 3, 5, 4))
    before = b.build(relu(permute(reshape(permute(x, (0, 3, 1, 2)), (0, 4, 15)), (0, 2, 1))))
    after = eliminate_dead_code(remove_noops(before))
    assert kinds(after) == ["reshape", "relu"]
    assert after.ops[0].inputs == ("x",) and after.ops[0].attrs.shape == (0, 15, 4)
    assert_same_meaning(before, after)


def test_a_layout_round_trip_that_moves_elements_stays():
    b = GraphBuilder("not_a_round_trip")
    x = b.input("x", (B, 3, 5, 4))
    before = b.build(relu(permute(reshape(permute(x, (0, 3, 1, 2)), (0, 4, 15)), (0, 1, 2))))
    assert kinds(eliminate_dead_code(remove_noops(before))) == ["permute", "reshape", "relu"]
    moved = b.build(relu(permute(reshape(permute(x, (0, 3, 2, 1)), (0, 4, 15)), (0, 2, 1))))
    after = eliminate_dead_code(remove_noops(moved))
    assert "permute" in kinds(after)
    assert_same_meaning(moved, after)


def test_multiply_by_one_and_add_zero_go_only_when_exact_and_not_broadcasting():
    b = GraphBuilder("neutral")
    x = b.input("x", (B, 4))
    ones, zeros = b.constant("ones", np.ones(4)), b.constant("zeros", np.zeros(4))
    near = b.constant("near", np.full(4, 1.0 + 2**-20))
    h = (ones * relu(x)) + zeros
    h = h * near
    wide = b.input("wide", (3, 1, 4))
    before = b.build(h, relu(x) * b.constant("ones3", np.ones((3, 1, 4))), wide + zeros)
    after = eliminate_dead_code(remove_noops(before))
    assert kinds(after).count("mul") == 2         # by `near`, and the one that broadcasts to [3, B, 4]
    assert after.ops[-1].kind == "add"            # a graph output is kept
    assert_same_meaning(before, after)


def test_graph_output_noop_is_kept():
    b = GraphBuilder("out_noop")
    x = b.input("x", (B, 4))
    before = b.build(permute(relu(x), (0, 1)))
    assert remove_noops(before) == before


def test_cse_merges_duplicate_ops_and_constants():
    b = GraphBuilder("cse")
    x = b.input("x", (B, 4))
    w1 = b.constant("w1", np.arange(16.0).reshape(4, 4) / 10 - 0.5)
    w2 = b.constant("w2", np.arange(16.0).reshape(4, 4) / 10 - 0.5)
    h1, h2 = linear(permute(x, (0, 1)), w1), linear(permute(x, (0, 1)), w2)
    before = b.build(h1 + h2, relu(x))
    after = eliminate_dead_code(eliminate_common_subexpressions(before))
    # The weights merge, so the permutes and then the linears are duplicates.
    assert kinds(after) == ["permute", "linear", "add", "relu"]
    assert [c.name for c in after.constants] == ["w1"]
    assert after.ops[2].inputs == ("linear_0.out", "linear_0.out")
    assert_same_meaning(before, after)


def test_cse_leaves_duplicate_pointwise_ops_to_be_recomputed_in_fusion():
    b = GraphBuilder("cse_ew")
    x = b.input("x", (B, 4))
    before = b.build(relu(x) + tanh(relu(x)))
    assert eliminate_common_subexpressions(before) is before


def test_matmul_by_a_weight_plus_bias_becomes_one_linear_with_bias():
    """ONNX's MatMul(x, W[K, N]) + Add(b)."""
    b = GraphBuilder("onnx_linear")
    x = b.input("x", (B, 5, 6))
    before = b.build(matmul(x, const(b, "wt", 6, 8, seed=3)) + const(b, "bias", 8, seed=4))
    after = eliminate_dead_code(absorb_bias_adds(matmul_to_linear(before)))
    assert kinds(after) == ["linear"]
    fc = after.ops[0]
    assert fc.attrs.has_bias and fc.inputs[2] == "bias"
    assert after.constant_map()[fc.inputs[1]].type.shape == (8, 6)
    assert_same_meaning(before, after)


def test_matmul_of_two_activations_stays():
    b = GraphBuilder("mm")
    before = b.build(matmul(b.input("a", (B, 3, 4)), b.input("c", (B, 4, 2))))
    assert matmul_to_linear(before) is before


def test_a_linear_with_a_bias_keeps_a_second_bias_add_for_its_epilogue():
    b = GraphBuilder("two_bias")
    x = b.input("x", (B, 6))
    before = b.build(linear(x, const(b, "w", 8, 6), const(b, "b1", 8, seed=5)) + const(b, "b2", 8, seed=6))
    assert absorb_bias_adds(before) is before
