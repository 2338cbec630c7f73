"""Kiln: build a graph, compile it on the farm, run the artifact."""
from __future__ import annotations

from typing import Any


def __getattr__(name: str) -> Any:
    # The importers pull in NumPy and the op registry; torch and onnx only when an import runs.
    if name in ("from_torch", "from_onnx"):
        from kiln import importers

        return getattr(importers, name)
    raise AttributeError(f"module 'kiln' has no attribute {name!r}")
