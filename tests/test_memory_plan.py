"""planner_svc.lower.plan_arena: liveness-based placement of activations.

plan_arena(sizes, first, last) -> (offsets, peak): a tensor is live over the
closed step interval [first, last]; two tensors whose intervals intersect
(including one dying at the step where the other is made: that op reads one
and writes the other) must not share bytes, dead bytes may be reused.
"""
from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from kiln.builder import GraphBuilder, relu, symbol
from kiln.ops import ReshapeAttrs
from planner_svc.lower import ALIGN, lower, plan_arena


def aligned(n: int) -> int:
    return -(-n // ALIGN) * ALIGN


def check_plan(sizes, first, last, offsets, peak) -> None:
    """The invariants every plan must satisfy."""
    assert set(offsets) == set(sizes)
    for n in sizes:
        assert offsets[n] >= 0 and offsets[n] % ALIGN == 0, (n, offsets[n])
        assert offsets[n] + sizes[n] <= peak, (n, offsets[n], sizes[n], peak)
    names = sorted(sizes)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            if first[a] <= last[b] and first[b] <= last[a]:
                a_lo, a_hi = offsets[a], offsets[a] + aligned(sizes[a])
                b_lo, b_hi = offsets[b], offsets[b] + aligned(sizes[b])
                assert a_hi <= b_lo or b_hi <= a_lo, f"{a} [{a_lo},{a_hi}) and {b} [{b_lo},{b_hi}) are live together"
    assert peak == max((offsets[n] + aligned(sizes[n]) for n in sizes), default=0)
    assert peak <= sum(aligned(s) for s in sizes.values())


def plan(spec: dict[str, tuple[int, int, int]]):
    """spec: name -> (size, first, last)."""
    sizes = {n: s for n, (s, _, _) in spec.items()}
    first = {n: f for n, (_, f, _) in spec.items()}
    last = {n: lst for n, (_, _, lst) in spec.items()}
    offsets, peak = plan_arena(sizes, first, last)
    check_plan(sizes, first, last, offsets, peak)
    return offsets, peak


def test_empty():
    assert plan_arena({}, {}, {}) == ({}, 0)


def test_single_buffer_is_aligned():
    offsets, peak = plan({"a": (1, 0, 0)})
    assert offsets == {"a": 0}
    assert peak == ALIGN


def test_dead_buffer_is_reused():
    offsets, peak = plan({"a": (1000, 0, 1), "b": (1000, 2, 3)})
    assert offsets == {"a": 0, "b": 0}
    assert peak == aligned(1000)


def test_live_buffers_do_not_overlap():
    offsets, peak = plan({"a": (1000, 0, 3), "b": (300, 1, 2)})
    assert offsets == {"a": 0, "b": aligned(1000)}
    assert peak == aligned(1000) + aligned(300)


def test_input_and_output_of_one_step_do_not_share():
    """a dies at step 1, where b is made: the kernel reads a while writing b."""
    offsets, peak = plan({"a": (512, 0, 1), "b": (512, 1, 2)})
    assert offsets["a"] != offsets["b"]
    assert peak == 1024


def test_chain_ping_pongs_between_two_buffers():
    # t_i is made by step i and read by step i + 1.
    spec = {f"t{i}": (4096, i, i + 1) for i in range(6)}
    offsets, peak = plan(spec)
    assert peak == 2 * 4096
    assert {offsets[f"t{i}"] for i in range(0, 6, 2)} == {0}
    assert {offsets[f"t{i}"] for i in range(1, 6, 2)} == {4096}


def test_hole_left_by_a_dead_buffer_is_filled_first_fit():
    offsets, peak = plan({
        "a": (256, 0, 5),
        "b": (256, 0, 1),     # dies at 1, leaving a hole at [256, 512)
        "c": (256, 0, 5),
        "d": (256, 2, 5),     # fits the hole
    })
    assert offsets == {"a": 0, "b": 256, "c": 512, "d": 256}
    assert peak == 768


def test_hole_too_small_is_skipped():
    offsets, peak = plan({
        "a": (256, 0, 5),
        "b": (256, 0, 1),
        "c": (256, 0, 5),
        "d": (512, 2, 5),     # needs 512: the 256-byte hole does not do
    })
    assert offsets["d"] == 768
    assert peak == 1280


def test_larger_buffer_first_among_those_made_at_one_step():
    offsets, _ = plan({"small": (256, 0, 1), "big": (4096, 0, 1)})
    assert offsets == {"big": 0, "small": 4096}


def test_no_reuse_when_everything_is_live():
    spec = {f"t{i}": (100 * (i + 1), 0, 9) for i in range(5)}
    offsets, peak = plan(spec)
    assert peak == sum(aligned(s) for s, _, _ in spec.values())
    assert len(set(offsets.values())) == 5


def test_peak_is_the_max_of_simultaneous_demand_for_equal_sizes():
    # Equal sizes: first-fit is optimal, so the peak is the most buffers ever live at once.
    rng = np.random.default_rng(0)
    spec = {}
    for i in range(40):
        f = int(rng.integers(0, 30))
        spec[f"t{i}"] = (ALIGN, f, f + int(rng.integers(0, 6)))
    _, peak = plan(spec)
    most_live = max(sum(f <= step <= lst for _, f, lst in spec.values()) for step in range(40))
    assert peak == most_live * ALIGN


intervals = st.dictionaries(
    st.text("abcdefgh", min_size=1, max_size=3),
    st.tuples(st.integers(1, 5000), st.integers(0, 20), st.integers(0, 6)),
    max_size=25,
)


@settings(max_examples=200, deadline=None)
@given(intervals)
def test_random_plans_keep_the_invariants(raw):
    spec = {n: (s, f, f + d) for n, (s, f, d) in raw.items()}
    plan(spec)


# --- through lower(): the plan's activations ---------------------------------------------------

def test_lower_places_a_chain_in_two_buffers():
    b = GraphBuilder("chain")
    h = b.input("x", (symbol("B", 1, 8), 64))
    for i in range(6):
        h = relu(h, name=f"r{i}")
    plan_ = lower(b.build(h), "cpu")
    acts = plan_.of_kind("activation")
    assert sorted(a.name for a in acts) == [f"r{i}.out" for i in range(5)]   # r5.out is the output
    size = 8 * 64 * 4                                                  # sized for B's max
    assert {a.index for a in acts} == {0, size}
    assert plan_.arena_bytes == 2 * size
    assert plan_.activation_bytes_total == 5 * size


def test_lower_keeps_a_fanned_out_activation_apart_and_reuses_dead_branches():
    b = GraphBuilder("fan")
    x = b.input("x", (4, 64))
    stem = relu(x, name="stem")
    outs = [relu(relu(stem, name=f"a{i}"), name=f"b{i}") for i in range(3)]
    plan_ = lower(b.build(*outs), "cpu")
    acts = {a.name: a.index for a in plan_.of_kind("activation")}
    assert set(acts) == {"stem.out", "a0.out", "a1.out", "a2.out"}
    # stem.out is read by every a_i, so it stays live until the last branch starts.
    assert acts["stem.out"] not in {acts["a0.out"], acts["a1.out"], acts["a2.out"]}
    # a_i.out dies at b_i, before a_{i+1} is made: the branches share one slot.
    assert acts["a0.out"] == acts["a1.out"] == acts["a2.out"]
    assert plan_.arena_bytes == 2 * 4 * 64 * 4


# --- a lowered plan, views included --------------------------------------------------------------

def check_lowered_plan(plan_) -> None:
    """check_plan on a lowered plan's activations, a view's uses counting for the
    buffer owning its bytes (so a reused owner that a view still needs fails);
    and every view lies inside its owner."""
    owners = {b.name: b for b in plan_.of_kind("activation")}
    first: dict[str, int] = {}
    last: dict[str, int] = {}
    for step, call in enumerate(plan_.calls):
        for name in call.args:
            buf = plan_.buffer(name)
            owner = buf.alias_of or buf.name
            if owner in owners:
                first.setdefault(owner, step)
                last[owner] = step
    assert set(first) == set(owners), f"activations no kernel touches: {set(owners) - set(first)}"
    sizes = {n: b.type.max_bytes() for n, b in owners.items()}
    check_plan(sizes, first, last, {n: b.index for n, b in owners.items()}, plan_.arena_bytes)
    for view in (b for b in plan_.buffers if b.alias_of):
        owner = plan_.buffer(view.alias_of)
        assert not owner.alias_of, f"{view.name} names {owner.name}, itself a view, as its owner"
        assert (view.kind, view.index) == (owner.kind, owner.index), view
        assert 0 <= view.alias_offset and view.alias_offset + view.type.max_bytes() <= owner.type.max_bytes(), view


def test_lowered_chain_with_views_keeps_the_invariants():
    b = GraphBuilder("viewed")
    x = b.input("x", (symbol("B", 1, 4), 64))
    h = relu(b.op("reshape", [relu(x, name="r0")], ReshapeAttrs((0, 8, 8))), name="r1")
    check_lowered_plan(lower(b.build(relu(h, name="r2")), "cpu"))
