"""Graph passes: each section builds a before graph, runs one pass, checks the
after structure, and checks with the float64 NumPy reference that the meaning
did not change (at several values of the symbolic batch dim).

The last section is a property test over random DAGs through the whole
pipeline and lower(): reference agreement on every output, and an arena plan
in which no two simultaneously live activations share bytes.
"""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kiln import reference
from kiln.builder import GraphBuilder, Value, gelu, layer_norm, linear, relu, softmax, symbol, tanh
from kiln.ir import Graph, IntVar, Op
from kiln.ops import BINARY, UNARY, EwInstr
from kiln.shapes import infer_types
from kiln.validate import graph_from_pb
from kiln.wire import graph_to_pb
from planner_svc.lower import ALIGN, lower
from planner_svc.passes import eliminate_dead_code, fuse_elementwise_chains, fuse_gemm_epilogues
from planner_svc.pipeline import PassContext, run_passes

B = symbol("B", 1, 8)
BATCHES = (1, 3, 8)


# --- helpers -----------------------------------------------------------------------------------

def kinds(graph: Graph) -> list[str]:
    return [op.kind for op in graph.ops]


def op(graph: Graph, name: str) -> Op:
    matches = [o for o in graph.ops if o.name == name]
    assert len(matches) == 1, (name, [o.name for o in graph.ops])
    return matches[0]


def program(o: Op) -> list[tuple[str, tuple[int, ...]]]:
    instrs = o.attrs.epilogue if o.kind == "linear" else o.attrs.program
    return [(i.op, i.args) for i in instrs]


def assert_same_meaning(before: Graph, after: Graph, *, rtol: float = 1e-10, batches=BATCHES) -> None:
    assert after.outputs == before.outputs
    assert after.inputs == before.inputs
    infer_types(after)                                   # well typed, in topological order
    for batch in batches:
        feeds = reference.random_inputs(before, seed=100 + batch, sizes={"B": batch})
        want = reference.run(before, feeds)
        got = reference.run(after, feeds)
        assert got.keys() == want.keys()
        for name in want:
            assert got[name].shape == want[name].shape, name
            assert np.allclose(got[name], want[name], rtol=rtol, atol=0), (name, batch)


def const(b: GraphBuilder, name: str, *shape: int, seed: int = 0) -> Value:
    return b.constant(name, np.random.default_rng(seed).standard_normal(shape))


# --- dead-code elimination ---------------------------------------------------------------------

def test_dce_drops_unused_branch_and_its_constants():
    b = GraphBuilder("dce")
    x = b.input("x", (B, 16))
    b.input("unused", (B, 4))
    c_live = const(b, "c_live", 16, seed=1)
    c_dead = const(b, "c_dead", 16, seed=2)
    w_dead = const(b, "w_dead", 8, 16, seed=3)
    live = relu(b.op("add", [x, c_live], name="live_add"), name="live_relu")
    dead = tanh(b.op("mul", [x, c_dead], name="dead_mul"), name="dead_tanh")
    linear(dead, w_dead, name="dead_fc")
    before = b.build(live)

    after = eliminate_dead_code(before)
    assert [o.name for o in after.ops] == ["live_add", "live_relu"]
    assert [c.name for c in after.constants] == ["c_live"]
    assert [t.name for t in after.inputs] == ["x", "unused"]     # the interface is kept
    assert_same_meaning(before, after)
    assert eliminate_dead_code(after) == after


def test_dce_keeps_a_producer_shared_with_a_dead_op():
    b = GraphBuilder("dce2")
    x = b.input("x", (B, 8))
    shared = relu(x, name="shared")
    out = -shared
    tanh(shared, name="dead")
    before = b.build(out)
    after = eliminate_dead_code(before)
    assert [o.name for o in after.ops] == ["shared", "neg_0"]
    assert_same_meaning(before, after)


def test_dce_keeps_every_output_and_op_order():
    b = GraphBuilder("dce3")
    x = b.input("x", (B, 8))
    w = const(b, "w", 8, 8)
    h1 = linear(x, w, name="fc")
    h2 = gelu(h1, name="act")
    h3 = relu(h1, name="side")
    before = b.build(h3, h2)
    after = eliminate_dead_code(before)
    assert after == before


# --- elementwise fusion ------------------------------------------------------------------------

def test_elementwise_chain_fuses_into_one_op():
    b = GraphBuilder("chain")
    a = b.input("a", (B, 16))
    bias = const(b, "bias", 16)
    h = relu(a, name="r")
    h = b.op("add", [h, bias], name="ad")          # bias broadcasts into the chain
    out = gelu(h, name="g")
    before = b.build(out)

    after = fuse_elementwise_chains(before)
    assert kinds(after) == ["fused_elementwise"]
    fused = after.ops[0]
    assert fused.name == "r+ad+g"
    assert fused.inputs == ("a", "bias")
    assert fused.outputs == ("g.out",)
    assert program(fused) == [("relu", (0,)), ("add", (2, 1)), ("gelu", (3,))]
    assert_same_meaning(before, after)


def test_diamond_fuses_into_one_op():
    b = GraphBuilder("diamond")
    x = b.input("x", (B, 8))
    out = b.op("mul", [relu(x, name="r"), tanh(x, name="t")], name="m")
    before = b.build(out)
    after = fuse_elementwise_chains(before)
    assert kinds(after) == ["fused_elementwise"]
    assert after.ops[0].inputs == ("x",)
    assert sorted(k for k, _ in program(after.ops[0])) == ["mul", "relu", "tanh"]
    assert_same_meaning(before, after)


def test_producer_with_two_consumers_is_not_fused():
    b = GraphBuilder("two_users")
    x = b.input("x", (B, 8))
    p = relu(x, name="p")
    out = b.op("add", [tanh(p, name="c1"), -p], name="sum")
    before = b.build(out)

    after = fuse_elementwise_chains(before)
    assert kinds(after) == ["fused_elementwise", "fused_elementwise"]
    first, second = after.ops
    assert first.name == "p" and program(first) == [("relu", (0,))]
    assert second.inputs == ("p.out",)                  # p is read, not recomputed
    assert sorted(k for k, _ in program(second)) == ["add", "neg", "tanh"]
    assert_same_meaning(before, after)


def test_producer_used_twice_by_one_consumer_is_not_fused():
    b = GraphBuilder("square")
    x = b.input("x", (B, 8))
    p = relu(x, name="p")
    before = b.build(p * p)
    after = fuse_elementwise_chains(before)
    assert [o.name for o in after.ops] == ["p", "mul_0"]
    assert_same_meaning(before, after)


def test_producer_that_is_a_graph_output_is_not_fused():
    b = GraphBuilder("out_producer")
    x = b.input("x", (B, 8))
    p = relu(x, name="p")
    c = tanh(p, name="c")
    before = b.build(c, p)

    after = fuse_elementwise_chains(before)
    assert [o.name for o in after.ops] == ["p", "c"]
    assert program(op(after, "c")) == [("tanh", (0,))]
    assert op(after, "c").inputs == ("p.out",)
    assert_same_meaning(before, after)


def test_broadcast_producer_is_not_fused_into_its_consumer():
    b = GraphBuilder("bcast")
    x = b.input("x", (B, 16))
    small = b.input("small", (16,))
    p = relu(small, name="p")                           # [16]
    out = b.op("add", [x, p], name="ad")                # [B, 16]
    before = b.build(out)

    after = fuse_elementwise_chains(before)
    assert [o.name for o in after.ops] == ["p", "ad"]
    assert op(after, "ad").inputs == ("x", "p.out")
    assert program(op(after, "ad")) == [("add", (0, 1))]
    assert_same_meaning(before, after)


def test_non_elementwise_op_breaks_the_chain():
    b = GraphBuilder("break")
    x = b.input("x", (B, 16))
    h = relu(x, name="r")
    h = layer_norm(h, const(b, "g", 16), const(b, "bt", 16), name="ln")
    before = b.build(gelu(h, name="g_act"))
    after = fuse_elementwise_chains(before)
    assert kinds(after) == ["fused_elementwise", "layernorm", "fused_elementwise"]
    assert_same_meaning(before, after)


def test_elementwise_fusion_is_idempotent():
    b = GraphBuilder("idem")
    x = b.input("x", (B, 8))
    p = relu(x, name="p")
    out = b.op("add", [tanh(p, name="c1"), -p], name="sum")
    once = fuse_elementwise_chains(b.build(out, p))
    twice = fuse_elementwise_chains(once)
    assert [(o.inputs, o.outputs, program(o)) for o in twice.ops] == [(o.inputs, o.outputs, program(o)) for o in once.ops]
    assert_same_meaning(once, twice)


# --- GEMM epilogue fusion ----------------------------------------------------------------------
# This pass absorbs fused_elementwise consumers, so its before graph is the
# output of the elementwise fusion pass.

def _mlp_input(b: GraphBuilder, bias: bool = True):
    x = b.input("x", (B, 8))
    w = const(b, "w", 16, 8, seed=5)
    bv = const(b, "b", 16, seed=6) if bias else None
    return x, linear(x, w, bv, name="fc")


def test_linear_gelu_fuses_into_the_epilogue():
    b = GraphBuilder("lin_gelu")
    _, h = _mlp_input(b)
    before = fuse_elementwise_chains(b.build(gelu(h, name="act")))
    assert kinds(before) == ["linear", "fused_elementwise"]

    after = fuse_gemm_epilogues(before)
    assert kinds(after) == ["linear"]
    fused = after.ops[0]
    assert fused.name == "fc+act"
    assert fused.inputs == ("x", "w", "b")
    assert fused.outputs == ("act.out",)
    assert fused.attrs.has_bias
    assert fused.attrs.epilogue == (EwInstr("gelu", (0,)),)
    assert_same_meaning(before, after)


@pytest.mark.parametrize("residual_first, expected", [(False, ("add", (0, 1))), (True, ("add", (1, 0)))])
def test_linear_add_residual_input_fuses(residual_first, expected):
    b = GraphBuilder("lin_res")
    _, h = _mlp_input(b)
    r = b.input("r", (B, 16))
    out = b.op("add", [r, h] if residual_first else [h, r], name="res")
    before = fuse_elementwise_chains(b.build(out))

    after = fuse_gemm_epilogues(before)
    assert kinds(after) == ["linear"]
    assert after.ops[0].inputs == ("x", "w", "b", "r")
    assert program(after.ops[0]) == [expected]
    assert_same_meaning(before, after)


def test_epilogue_keeps_operand_order():
    """sub(r, fc): the accumulator is the program's value 0, so the args must be remapped to (1, 0)."""
    b = GraphBuilder("lin_sub")
    _, h = _mlp_input(b)
    r = b.input("r", (B, 16))
    before = fuse_elementwise_chains(b.build(b.op("sub", [r, h], name="diff")))
    assert program(before.ops[1]) == [("sub", (0, 1))] and before.ops[1].inputs == ("r", "fc.out")
    after = fuse_gemm_epilogues(before)
    assert kinds(after) == ["linear"]
    assert after.ops[0].inputs == ("x", "w", "b", "r")
    assert program(after.ops[0]) == [("sub", (1, 0))]
    assert_same_meaning(before, after)


def test_linear_without_bias_takes_a_multi_step_epilogue():
    b = GraphBuilder("lin_chain")
    _, h = _mlp_input(b, bias=False)
    c = const(b, "c", 16, seed=7)
    out = tanh(b.op("mul", [h, c], name="scale"), name="t")
    before = fuse_elementwise_chains(b.build(out))
    after = fuse_gemm_epilogues(before)
    assert kinds(after) == ["linear"]
    assert after.ops[0].inputs == ("x", "w", "c")
    assert not after.ops[0].attrs.has_bias
    assert program(after.ops[0]) == [("mul", (0, 1)), ("tanh", (2,))]
    assert_same_meaning(before, after)


def test_linear_that_is_a_graph_output_does_not_fuse():
    b = GraphBuilder("lin_out")
    _, h = _mlp_input(b)
    before = fuse_elementwise_chains(b.build(gelu(h, name="act"), h))
    after = fuse_gemm_epilogues(before)
    assert kinds(after) == ["linear", "fused_elementwise"]
    assert op(after, "fc").attrs.epilogue == ()
    assert_same_meaning(before, after)


def test_linear_with_two_consumers_does_not_fuse():
    b = GraphBuilder("lin_two")
    _, h = _mlp_input(b)
    before = fuse_elementwise_chains(b.build(gelu(h, name="act"), tanh(h, name="other")))
    after = fuse_gemm_epilogues(before)
    assert op(after, "fc").attrs.epilogue == ()
    assert op(after, "fc").outputs == ("fc.out",)
    assert_same_meaning(before, after)


def test_linear_into_layernorm_does_not_fuse():
    b = GraphBuilder("lin_ln")
    _, h = _mlp_input(b)
    before = fuse_elementwise_chains(b.build(layer_norm(h, const(b, "g", 16), const(b, "bt", 16), name="ln")))
    assert fuse_gemm_epilogues(before) == before


def test_unfused_elementwise_consumer_is_left_alone():
    """The pass only absorbs fused_elementwise ops, so it must run after elementwise fusion."""
    b = GraphBuilder("raw")
    _, h = _mlp_input(b)
    before = b.build(gelu(h, name="act"))
    assert fuse_gemm_epilogues(before) == before


def test_consumer_that_broadcasts_the_linear_output_does_not_fuse():
    b = GraphBuilder("lin_bcast")
    x = b.input("x", (1, 8))
    w = const(b, "w", 16, 8)
    r = b.input("r", (4, 16))
    out = b.op("add", [linear(x, w, name="fc"), r], name="res")   # [1,16] + [4,16] -> [4,16]
    before = fuse_elementwise_chains(b.build(out))
    after = fuse_gemm_epilogues(before)
    assert kinds(after) == ["linear", "fused_elementwise"]
    assert_same_meaning(before, after)


def test_extra_input_made_after_the_linear_fuses_into_the_later_linear():
    b = GraphBuilder("two_fc")
    x = b.input("x", (B, 8))
    h1 = linear(x, const(b, "w1", 16, 8, seed=1), name="fc1")
    h2 = linear(x, const(b, "w2", 16, 8, seed=2), name="fc2")
    before = fuse_elementwise_chains(b.build(b.op("add", [h1, h2], name="sum")))

    after = fuse_gemm_epilogues(before)
    # fc1 cannot take the add (fc2's output does not exist yet when fc1 runs); fc2 can.
    assert [o.name for o in after.ops] == ["fc1", "fc2+sum"]
    assert op(after, "fc2+sum").inputs == ("x", "w2", "fc1.out")
    assert program(op(after, "fc2+sum")) == [("add", (1, 0))]
    assert_same_meaning(before, after)


def test_epilogue_fusion_is_idempotent():
    b = GraphBuilder("lin_twice")
    _, h = _mlp_input(b)
    p = relu(h, name="p")
    out = b.op("add", [tanh(p, name="c1"), -p], name="sum")
    before = fuse_elementwise_chains(b.build(out))
    once = fuse_gemm_epilogues(before)
    assert [o.name for o in once.ops] == ["fc+p", "neg_0+c1+sum"]
    assert fuse_gemm_epilogues(once) == once        # no second epilogue over the first
    assert_same_meaning(before, once)


# --- the pipeline ------------------------------------------------------------------------------

def _block() -> Graph:
    b = GraphBuilder("block")
    x = b.input("x", (B, 16))
    h = linear(x, const(b, "w1", 32, 16, seed=1), const(b, "b1", 32, seed=2), name="fc1")
    h = gelu(h, name="act")
    h = linear(h, const(b, "w2", 16, 32, seed=3), const(b, "b2", 16, seed=4), name="fc2")
    h = b.op("add", [h, x], name="res")
    out = layer_norm(h, const(b, "g", 16, seed=5), const(b, "bt", 16, seed=6), name="ln")
    linear(out, const(b, "w_dead", 4, 16, seed=7), name="dead_head")
    return b.build(out)


def test_pipeline_on_a_transformer_block():
    before = _block()
    after, records = run_passes(before)
    changed = [(r.name, r.ops_before, r.ops_after) for r in records if r.ops_before != r.ops_after or r.added]
    assert changed == [("dce", 6, 5), ("fuse_gemm_epilogue", 5, 3)]
    assert [o.name for o in after.ops] == ["fc1+act", "fc2+res", "ln"]
    assert program(op(after, "fc1+act")) == [("gelu", (0,))]
    assert op(after, "fc2+res").inputs == ("act.out", "w2", "b2", "x")
    assert program(op(after, "fc2+res")) == [("add", (0, 1))]
    assert "w_dead" not in {c.name for c in after.constants}
    assert_same_meaning(before, after)


def test_pipeline_disabled_passes():
    before = _block()
    # Without GEMM epilogues the residual add would go into the layernorm instead: keep both off.
    after, records = run_passes(before, PassContext(disabled=frozenset({"fuse_gemm_epilogue", "fuse_residual_layernorm"})))
    assert "fuse_gemm_epilogue" not in [r.name for r in records]
    assert kinds(after) == ["linear", "fused_elementwise", "linear", "fused_elementwise", "layernorm"]
    assert_same_meaning(before, after)


# --- property: random DAGs through the whole pipeline and lower() -------------------------------

UNARY_KINDS = ("relu", "gelu", "gelu_tanh", "silu", "sigmoid", "tanh", "neg")
BINARY_KINDS = ("add", "sub", "mul", "maximum")
KINDS = UNARY_KINDS + BINARY_KINDS + ("linear", "linear_bias", "layernorm", "softmax")

step_strategy = st.tuples(st.sampled_from(KINDS), st.integers(0, 63), st.integers(0, 63), st.sampled_from((8, 16)))
recipe_strategy = st.tuples(
    st.lists(step_strategy, min_size=1, max_size=12),
    st.lists(st.integers(0, 3), min_size=12, max_size=12),  # 0: that op's output is also a graph output
    st.integers(0, 2**32 - 1),                             # weights seed
    st.integers(1, 8),                                     # batch size to run at
)


def pick(values: list[Value], a: int) -> Value:
    """Even a: one of the three newest values (makes chains); odd a: any value (makes fan-out)."""
    if a % 2 == 0:
        return values[-1 - (a // 2) % min(3, len(values))]
    return values[(a // 2) % len(values)]


def build_random(steps, extra_outputs, seed) -> Graph:
    rng = np.random.default_rng(seed)
    b = GraphBuilder("random")
    pool = [b.input("x8", (B, 8)), b.input("x16", (B, 16)),
            b.constant("c8", rng.standard_normal(8)), b.constant("c16", rng.standard_normal(16))]
    made: list[Value] = []
    for i, (kind, a, c, n) in enumerate(steps):
        lhs = pick(pool, a)
        if kind in UNARY_KINDS:
            v = b.op(kind, [lhs])
        elif kind in BINARY_KINDS:
            partners = [p for p in pool if p.type.shape[-1] == lhs.type.shape[-1]]
            v = b.op(kind, [lhs, pick(partners, c)])
        elif kind.startswith("linear"):
            rows = [p for p in pool if p.type.rank == 2]
            x = pick(rows, a)
            k = x.type.shape[-1]
            w = b.constant(f"w{i}", rng.uniform(-1, 1, (n, k)) / np.sqrt(k))
            bias = b.constant(f"b{i}", rng.standard_normal(n)) if kind == "linear_bias" else None
            v = linear(x, w, bias)
        elif kind == "layernorm":
            f = lhs.type.shape[-1]
            v = layer_norm(lhs, b.constant(f"g{i}", 1 + 0.1 * rng.standard_normal(f)),
                           b.constant(f"beta{i}", 0.1 * rng.standard_normal(f)))
        else:
            v = softmax(lhs)
        pool.append(v)
        made.append(v)
    outputs = [v for v, flag in zip(made[:-1], extra_outputs, strict=False) if flag == 0] + [made[-1]]
    return b.build(*outputs)


def live_activations_disjoint(plan) -> None:
    """From the plan alone: activations live in the same call window must not share bytes."""
    acts = {buf.name: buf for buf in plan.of_kind("activation")}
    first: dict[str, int] = {}
    last: dict[str, int] = {}
    for i, call in enumerate(plan.calls):
        for name in call.args:
            assert any(buf.name == name for buf in plan.buffers), name
            if name in acts:
                first.setdefault(name, i)
                last[name] = i
    assert set(first) == set(acts)
    spans = {n: (acts[n].index, acts[n].index + acts[n].type.max_bytes()) for n in acts}
    for n, (lo, hi) in spans.items():
        assert lo % ALIGN == 0 and hi <= plan.arena_bytes, (n, lo, hi, plan.arena_bytes)
    names = sorted(acts)
    for i, p in enumerate(names):
        for q in names[i + 1:]:
            if first[p] <= last[q] and first[q] <= last[p]:        # live at the same time
                (lo1, hi1), (lo2, hi2) = spans[p], spans[q]
                assert hi1 <= lo2 or hi2 <= lo1, f"{p} {spans[p]} and {q} {spans[q]} overlap while both live"
    assert plan.arena_bytes <= plan.activation_bytes_total


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(recipe_strategy)
def test_random_dags_keep_their_meaning_and_plan_safely(recipe):
    steps, extra_outputs, seed, batch = recipe
    before = build_random(steps, extra_outputs, seed)
    graph_from_pb(graph_to_pb(before))                  # the generator makes only valid graphs

    after, _ = run_passes(before)
    assert after.outputs == before.outputs
    assert not [o.kind for o in after.ops if o.kind in UNARY or o.kind in BINARY], "unfused elementwise op left"
    names = [o.name for o in after.ops]
    assert len(set(names)) == len(names)

    feeds = reference.random_inputs(before, seed=seed, sizes={"B": batch})
    with np.errstate(all="ignore"):
        want = reference.run(before, feeds)
        got = reference.run(after, feeds)
    for name in before.outputs:
        assert got[name].shape == want[name].shape
        # Ops on constants alone fold into float32 constants: float32 rounding, not float64.
        assert np.allclose(got[name], want[name], rtol=1e-5, atol=1e-6, equal_nan=True), name

    plan = lower(after, "cpu")
    assert len(plan.calls) == len(after.ops)
    assert plan.symbols == (IntVar("B", 1, 8),)
    live_activations_disjoint(plan)
