"""Turn MODEL arguments (a Python file with build()) into a Graph."""
from __future__ import annotations

import importlib.util
from pathlib import Path

from kiln.ir import Graph


def load_model(path: str) -> Graph:
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"model file {path} does not exist")
    if p.suffix != ".py":
        raise ValueError(f"{path}: MODEL must be a Python file with a build() function")
    spec = importlib.util.spec_from_file_location(f"kiln_model_{p.stem}", p)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not hasattr(module, "build"):
        raise ValueError(f"{path} has no build() function")
    graph = module.build()
    if not isinstance(graph, Graph):
        raise TypeError(f"{path}: build() returned {type(graph).__name__}, not a kiln Graph")
    return graph
