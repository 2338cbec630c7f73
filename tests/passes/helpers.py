"""Shared checks: the float64 reference before and after, and kernel lists after lowering."""
from __future__ import annotations

import numpy as np

from kiln import reference
from kiln.builder import GraphBuilder, Value, symbol
from kiln.ir import Graph
from kiln.shapes import infer_types
from planner_svc.lower import lower
from planner_svc.pipeline import run_passes

B = symbol("B", 1, 4)
BATCHES = (1, 3)


def kinds(graph: Graph) -> list[str]:
    return [op.kind for op in graph.ops]


def const(b: GraphBuilder, name: str, *shape: int, seed: int = 0, scale: float = 1.0) -> Value:
    return b.constant(name, scale * np.random.default_rng(seed).standard_normal(shape))


def assert_same_meaning(before: Graph, after: Graph, *, rtol: float = 1e-12, atol: float = 0.0,
                        batches=BATCHES) -> None:
    """Same interface, well typed, and equal outputs at several values of B on random inputs."""
    assert after.inputs == before.inputs and after.outputs == before.outputs
    infer_types(after)
    for batch in batches:
        feeds = reference.random_inputs(before, seed=10 + batch, sizes={"B": batch})
        want, got = reference.run(before, feeds), reference.run(after, feeds)
        for name in want:
            assert got[name].shape == want[name].shape, name
            assert np.allclose(got[name], want[name], rtol=rtol, atol=atol), (name, batch,
                                                                            np.abs(got[name] - want[name]).max())
            assert np.abs(want[name]).max() > 0          # never compare zeros with zeros


def kernels(graph: Graph) -> list[str]:
    """The kernel kinds after the whole pipeline and lowering."""
    return [call.spec.op for call in lower(run_passes(graph)[0], "cpu").calls]
