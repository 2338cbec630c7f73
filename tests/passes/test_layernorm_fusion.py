"""Residual add + layernorm: the op's has_residual contract and the fusion pass alone and in the pipeline."""
from __future__ import annotations

import numpy as np
import pytest

from kiln.builder import GraphBuilder, Value, gelu, layer_norm, linear, softmax, tanh
from kiln.ir import Graph, Op
from kiln.ops import LayerNormAttrs, ShapeError, get_op
from kiln.shapes import GraphError
from kiln.validate import graph_from_pb
from kiln.wire import attrs_to_pb, graph_to_pb
from planner_svc.passes import fuse_elementwise_chains, fuse_residual_layernorm
from planner_svc.pipeline import PassContext, run_passes
from tests.passes.helpers import B, assert_same_meaning, const, kinds


def _norm(b: GraphBuilder, h: Value, n: int = 16, name: str = "ln") -> Value:
    return layer_norm(h, const(b, f"{name}.g", n, seed=5), const(b, f"{name}.b", n, seed=6), name=name)


def _op(graph: Graph, name: str) -> Op:
    return next(o for o in graph.ops if o.name == name)


# --- the op ------------------------------------------------------------------------------------

def test_reference_normalises_the_sum():
    rng = np.random.default_rng(0)
    x, r = rng.standard_normal((3, 5, 16)), rng.standard_normal((3, 5, 16))
    g, beta = 1 + 0.1 * rng.standard_normal(16), 0.1 * rng.standard_normal(16)
    op = get_op("layernorm")
    fused = op.reference([x, g, beta, r], LayerNormAttrs(1e-5, has_residual=True))[0]
    plain = op.reference([x + r, g, beta], LayerNormAttrs(1e-5))[0]
    assert np.array_equal(fused, plain)
    assert not np.allclose(fused, op.reference([x, g, beta], LayerNormAttrs(1e-5))[0])


@pytest.mark.parametrize(("has_residual", "n_inputs", "message"),
                         [(True, 3, "has_residual=True takes 4 inputs, got 3"),
                          (False, 4, "has_residual=False takes 3 inputs, got 4")])
def test_input_count_follows_has_residual(has_residual, n_inputs, message):
    b = GraphBuilder("count")
    ins = [b.input("x", (B, 16)), const(b, "g", 16), const(b, "b", 16, seed=1), b.input("r", (B, 16))]
    with pytest.raises((ShapeError, GraphError), match=message):
        b.op("layernorm", ins[:n_inputs], LayerNormAttrs(has_residual=has_residual))


@pytest.mark.parametrize("shape", [(16,), (1, 16), (4, 16)])
def test_residual_must_have_the_shape_of_x(shape):
    b = GraphBuilder("bcast")
    x, r = b.input("x", (B, 16)), b.input("r", shape)
    with pytest.raises((ShapeError, GraphError), match="residual must have x's shape"):
        b.op("layernorm", [x, const(b, "g", 16), const(b, "b", 16, seed=1), r], LayerNormAttrs(has_residual=True))


def test_wire_keeps_the_default_implicit_and_carries_the_flag():
    assert attrs_to_pb(LayerNormAttrs()) == {}
    assert set(attrs_to_pb(LayerNormAttrs(1e-12))) == {"eps"}
    b = GraphBuilder("wire")
    x, r = b.input("x", (B, 16)), b.input("r", (B, 16))
    y = b.op("layernorm", [x, const(b, "g", 16), const(b, "b", 16, seed=1), r], LayerNormAttrs(1e-6, True), name="ln")
    graph = b.build(y)
    msg = graph_to_pb(graph)
    assert msg.ops[0].attrs["has_residual"].b is True
    back = graph_from_pb(msg)
    assert back.ops[0].attrs == LayerNormAttrs(1e-6, True)
    assert back.ops[0].inputs == ("x", "g", "b", "r")


# --- the pass alone ----------------------------------------------------------------------------

def test_plain_add_is_absorbed():
    b = GraphBuilder("plain")
    x, r = b.input("x", (B, 4, 16)), b.input("r", (B, 4, 16))
    before = b.build(_norm(b, b.op("add", [x, r], name="res")))
    after = fuse_residual_layernorm(before)
    assert [(o.name, o.kind) for o in after.ops] == [("res+ln", "layernorm")]
    ln = after.ops[0]
    assert ln.inputs == ("x", "ln.g", "ln.b", "r") and ln.attrs == LayerNormAttrs(1e-5, True)
    assert ln.outputs == ("ln.out",)
    assert_same_meaning(before, after)


def test_single_add_fused_elementwise_is_absorbed_with_addends_in_program_order():
    b = GraphBuilder("fused")
    x, r = b.input("x", (B, 16)), b.input("r", (B, 16))
    h = softmax(x, name="sm")                         # a produced addend: must stay before the norm
    before = fuse_elementwise_chains(b.build(_norm(b, b.op("add", [r, h], name="res"))))
    assert kinds(before) == ["softmax", "fused_elementwise", "layernorm"]
    after = fuse_residual_layernorm(before)
    assert kinds(after) == ["softmax", "layernorm"]
    assert _op(after, "res+ln").inputs == ("r", "ln.g", "ln.b", "sm.out")
    assert_same_meaning(before, after)


def test_an_addend_added_to_itself():
    b = GraphBuilder("twice")
    x = b.input("x", (B, 16))
    h = tanh(x, name="t")
    before = b.build(_norm(b, b.op("add", [h, h], name="res")))
    after = fuse_residual_layernorm(before)
    assert _op(after, "res+ln").inputs == ("t.out", "ln.g", "ln.b", "t.out")
    assert_same_meaning(before, after)


def test_every_norm_of_a_graph_takes_its_own_add():
    b = GraphBuilder("two")
    x, r, s = (b.input(n, (B, 16)) for n in ("x", "r", "s"))
    h = _norm(b, b.op("add", [x, r], name="a1"), name="ln1")
    before = b.build(_norm(b, b.op("add", [h, s], name="a2"), name="ln2"))
    after = fuse_residual_layernorm(before)
    assert [o.name for o in after.ops] == ["a1+ln1", "a2+ln2"]
    assert _op(after, "a2+ln2").inputs == ("ln1.out", "ln2.g", "ln2.b", "s")
    assert_same_meaning(before, after)


def _unchanged(before: Graph) -> None:
    assert fuse_residual_layernorm(before) == before
    assert fuse_residual_layernorm(fuse_elementwise_chains(before)) == fuse_elementwise_chains(before)


def test_not_when_the_sum_is_a_graph_output():
    b = GraphBuilder("out")
    x, r = b.input("x", (B, 16)), b.input("r", (B, 16))
    h = b.op("add", [x, r], name="res")
    _unchanged(b.build(_norm(b, h), h))


def test_not_when_the_sum_has_another_reader():
    """A pre-LN residual stream: x + f(x) feeds the norm and the next residual add."""
    b = GraphBuilder("stream")
    x, r = b.input("x", (B, 16)), b.input("r", (B, 16))
    h = b.op("add", [x, r], name="res")
    _unchanged(b.build(b.op("add", [gelu(_norm(b, h)), h])))


def test_not_when_an_addend_broadcasts():
    b = GraphBuilder("bcast")
    x, r = b.input("x", (B, 16)), b.input("r", (16,))
    _unchanged(b.build(_norm(b, b.op("add", [x, r], name="res"))))


def test_not_when_the_sum_feeds_gamma_or_beta():
    b = GraphBuilder("gamma")
    x, u, v = b.input("x", (B, 16)), b.input("u", (16,)), b.input("v", (16,))
    gam = b.op("add", [u, v], name="gsum")
    _unchanged(b.build(layer_norm(x, gam, const(b, "bt", 16), name="ln")))


def test_not_for_other_programs():
    b = GraphBuilder("programs")
    x, r, s = (b.input(n, (B, 16)) for n in ("x", "r", "s"))
    three = _norm(b, x + r + s, name="ln3")           # one fused program of two adds
    sub = _norm(b, b.op("sub", [x, r]), name="lnsub")
    act = _norm(b, gelu(x + r), name="lnact")         # add then an activation
    before = fuse_elementwise_chains(b.build(three, sub, act))
    assert fuse_residual_layernorm(before) == before


def test_not_into_a_norm_that_already_has_a_residual():
    b = GraphBuilder("has")
    x, r, s = (b.input(n, (B, 16)) for n in ("x", "r", "s"))
    h = b.op("add", [x, r], name="res")
    y = b.op("layernorm", [h, const(b, "g", 16), const(b, "bt", 16, seed=1), s], LayerNormAttrs(has_residual=True))
    _unchanged(b.build(y))


# --- in the pipeline ---------------------------------------------------------------------------

def _post_ln_block(b: GraphBuilder, x: Value) -> Value:
    h = linear(x, const(b, "w", 16, 16, seed=1, scale=0.25), const(b, "bias", 16, seed=2), name="fc")
    return _norm(b, b.op("add", [h, x], name="res"))


def test_a_gemm_epilogue_takes_the_residual_first():
    b = GraphBuilder("post_ln")
    before = b.build(_post_ln_block(b, b.input("x", (B, 16))))
    after, records = run_passes(before)
    assert [o.name for o in after.ops] == ["fc+res", "ln"]
    assert not _op(after, "ln").attrs.has_residual
    assert next(r for r in records if r.name == "fuse_residual_layernorm").fired == ()
    assert_same_meaning(before, after)


def test_the_norm_takes_the_residual_a_gemm_could_not():
    """The GEMM is disabled here; in graphs it is a matmul of two activations, or an add with no GEMM."""
    b = GraphBuilder("post_ln")
    before = b.build(_post_ln_block(b, b.input("x", (B, 16))))
    after, records = run_passes(before, PassContext(disabled=frozenset({"fuse_gemm_epilogue"})))
    assert [(o.name, o.kind) for o in after.ops] == [("fc", "linear"), ("res+ln", "layernorm")]
    assert next(r for r in records if r.name == "fuse_residual_layernorm").fired == ("layernorm res+ln",)
    assert_same_meaning(before, after)


def test_residual_of_an_activation_matmul_in_the_pipeline():
    b = GraphBuilder("mm")
    x, y = b.input("x", (B, 4, 16)), b.input("y", (B, 16, 16))
    h = b.op("matmul", [x, y], name="mm")
    before = b.build(_norm(b, b.op("add", [h, x], name="res")))
    after, _ = run_passes(before)
    assert [(o.name, o.kind) for o in after.ops] == [("mm", "matmul"), ("res+ln", "layernorm")]
    assert_same_meaning(before, after)
