"""The canonical form of a graph that job keys hash: everything that can change
the artifact's bytes (names included: they are the artifact's interface)."""
from __future__ import annotations

from typing import Any

from kiln.codec import to_json
from kiln.ir import Graph


def canonical_graph(graph: Graph) -> dict[str, Any]:
    return {
        "name": graph.name,
        "inputs": [[t.name, to_json(t.type)] for t in graph.inputs],
        "outputs": list(graph.outputs),
        "constants": [[c.name, to_json(c.type), c.sha256] for c in graph.constants],
        "ops": [[op.name, op.kind, list(op.inputs), list(op.outputs), to_json(op.attrs)] for op in graph.ops],
    }
