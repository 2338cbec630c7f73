"""Dead-code elimination: drop ops and constants no output depends on."""
from __future__ import annotations

from kiln.ir import Graph


def eliminate_dead_code(graph: Graph) -> Graph:
    live = set(graph.outputs)
    kept = []
    for op in reversed(graph.ops):
        if any(out in live for out in op.outputs):
            kept.append(op)
            live.update(op.inputs)
    constants = tuple(c for c in graph.constants if c.name in live)
    return graph.replace(ops=tuple(reversed(kept)), constants=constants)
