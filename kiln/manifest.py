"""The artifact's manifest: what a loader needs to call libmodel.so correctly.

An artifact is addressed by the sha256 of its manifest's bytes; the manifest
names every file of the artifact by its own sha256.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from kiln import keys
from kiln.canon import canonical_graph
from kiln.codec import from_json, to_json
from kiln.dtypes import DType
from kiln.ir import Dim, Graph, IntVar

FORMAT = 1


@dataclass(frozen=True)
class TensorSig:
    name: str
    dtype: DType
    shape: tuple[Dim, ...]


@dataclass(frozen=True)
class FileEntry:
    path: str
    sha256: str
    size: int


@dataclass(frozen=True)
class KernelEntry:
    kernel: str
    ops: tuple[str, ...]
    spec_key: str
    fn: str
    object: str
    config: dict[str, Any]
    profiled: bool


@dataclass(frozen=True)
class Manifest:
    format: int
    graph: str
    target: str
    job_key: str
    compiler_version: str
    toolchain: str
    inputs: tuple[TensorSig, ...]
    outputs: tuple[TensorSig, ...]
    symbols: tuple[IntVar, ...]
    files: tuple[FileEntry, ...]
    kernels: tuple[KernelEntry, ...]
    arena_bytes: int
    profiled: bool

    def dumps(self) -> bytes:
        return json.dumps(to_json(self), sort_keys=True, indent=1).encode()

    @staticmethod
    def loads(data: bytes) -> Manifest:
        return from_json(Manifest, json.loads(data))

    def file(self, path: str) -> FileEntry:
        return next(f for f in self.files if f.path == path)

    def built_from(self, graph: Graph) -> bool:
        """Whether `graph` (names, ops and every constant's bytes) is the one this artifact was compiled
        from: its job key, under this artifact's target, options, compiler and toolchain, is this one's.
        A model file that imports a seeded model on another machine proves so that it made the same weights.
        The manifest does not record a job's cuda_graph option, so both values are tried."""
        canon = canonical_graph(graph)
        return any(keys.job_key(canon, self.target, keys.job_options(self.profiled, cuda_graph), self.compiler_version,
                                self.toolchain) == self.job_key for cuda_graph in (False, True))
