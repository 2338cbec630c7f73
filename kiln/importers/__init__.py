"""Importers from PyTorch (torch.export) and ONNX. torch and onnx are optional: imported on first use."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from kiln.importers.common import UnsupportedOps
from kiln.ir import Graph


def from_torch(model: Any, example_inputs: tuple | None = None, *, dynamic_shapes: Any = None,
               name: str | None = None) -> Graph:
    """A torch.nn.Module (exported with `example_inputs`) or a torch.export.ExportedProgram as a Kiln graph."""
    from kiln.importers.torch_export import from_torch as impl

    return impl(model, example_inputs, dynamic_shapes=dynamic_shapes, name=name)


def from_onnx(model: Any, *, dims: dict[str, tuple[int, int]] | None = None, name: str | None = None) -> Graph:
    """An ONNX model (a path or a ModelProto) as a Kiln graph; `dims` gives each named dynamic dim its range."""
    from kiln.importers.onnx import from_onnx as impl

    return impl(model, dims=dims, name=name)


def load_model_file(path: str, dims: dict[str, tuple[int, int]] | None = None) -> Graph:
    """What `kiln compile MODEL` accepts: a Python file with build(), a .onnx file or a .pt2 saved program."""
    p = Path(path)
    if p.suffix == ".onnx":
        if not p.exists():
            raise FileNotFoundError(f"model file {path} does not exist")
        return from_onnx(str(p), dims=dims)
    if p.suffix == ".pt2":
        if not p.exists():
            raise FileNotFoundError(f"model file {path} does not exist")
        import torch

        return from_torch(torch.export.load(str(p)), name=p.stem)
    from kiln.loader import load_model

    return load_model(path)


__all__ = ["UnsupportedOps", "from_onnx", "from_torch", "load_model_file"]
