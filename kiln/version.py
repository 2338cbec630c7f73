"""Kiln's compiler version: a hash of the code and templates that shape bytes.

Read as files, not imports, so that the frontend can compute it without
importing the planner or the codegen worker.
"""
from __future__ import annotations

import functools
import hashlib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
_SHAPING = ("kiln", "planner_svc", "codegen_worker")
_SUFFIXES = {".py", ".j2", ".h", ".cc", ".cu"}


@functools.cache
def compiler_version() -> str:
    h = hashlib.sha256()
    for top in _SHAPING:
        for path in sorted((ROOT / top).rglob("*")):
            if path.suffix in _SUFFIXES and path.is_file() and "__pycache__" not in path.parts:
                h.update(path.relative_to(ROOT).as_posix().encode() + b"\0")
                h.update(path.read_bytes() + b"\0")
    return h.hexdigest()
