"""The lowering, as one list of named steps, each with its reason."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from kiln.ir import Graph
from kiln.shapes import infer_types
from planner_svc.passes import eliminate_dead_code, fuse_elementwise_chains, fuse_gemm_epilogues

Pass = Callable[[Graph], Graph]

PASSES: tuple[tuple[str, Pass, str], ...] = (
    ("dce", eliminate_dead_code, "no kernel for work nobody reads"),
    ("fuse_elementwise", fuse_elementwise_chains, "one pass over memory for a chain of pointwise ops"),
    ("fuse_gemm_epilogue", fuse_gemm_epilogues, "apply pointwise work to the GEMM accumulator in registers"),
    ("dce_after_fusion", eliminate_dead_code, "fusion can orphan constants"),
)


@dataclass(frozen=True)
class PassRecord:
    name: str
    why: str
    ops_before: int
    ops_after: int
    removed: tuple[str, ...]
    added: tuple[str, ...]


@dataclass
class PassContext:
    """Options for one pipeline run. Passes never read the environment."""

    disabled: frozenset[str] = frozenset()
    instruments: list[Callable[[str, Graph], None]] = field(default_factory=list)
    verify: bool = True


def run_passes(graph: Graph, ctx: PassContext | None = None) -> tuple[Graph, list[PassRecord]]:
    ctx = ctx or PassContext()
    records = []
    for name, fn, why in PASSES:
        if name in ctx.disabled:
            continue
        before = {op.name for op in graph.ops}
        new = fn(graph)
        if ctx.verify:
            infer_types(new)  # every pass must leave a well-typed graph
        after = {op.name for op in new.ops}
        records.append(PassRecord(name, why, len(graph.ops), len(new.ops),
                                  tuple(sorted(before - after)), tuple(sorted(after - before))))
        for instrument in ctx.instruments:
            instrument(name, new)
        graph = new
    return graph, records
