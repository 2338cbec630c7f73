"""Content keys: sha256 over a canonical encoding, each with a version salt.

Bump a salt to disown every result made under the old one.
"""
from __future__ import annotations

import hashlib
import json
from typing import Any

JOB_SALT = "kiln-job-v1"
OBJECT_SALT = "kiln-object-v1"
PROFILE_SALT = "kiln-profile-v1"
SPEC_SALT = "kiln-spec-v1"


def canonical(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def digest(salt: str, value: Any) -> str:
    return hashlib.sha256(salt.encode() + b"\0" + canonical(value)).hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def job_options(profile: bool, cuda_graph: bool, profile_only: bool = False) -> dict[str, Any]:
    """The options a job's key covers. profile_only is absent when false, so compile jobs keep their keys."""
    options: dict[str, Any] = {"profile": profile or profile_only, "cuda_graph": cuda_graph}
    if profile_only:
        options["profile_only"] = True
    return options


def job_key(graph_canonical: Any, target: str, options: dict, compiler_version: str, toolchain: str) -> str:
    return digest(JOB_SALT, {"graph": graph_canonical, "target": target, "options": options,
                             "compiler": compiler_version, "toolchain": toolchain})


def object_key(source: str, compiler: str, flags: list[str], arch: str) -> str:
    return digest(OBJECT_SALT, {"source": sha256_bytes(source.encode()), "compiler": compiler,
                                "flags": list(flags), "arch": arch})


def profile_key(device: dict, toolchain: str, spec_key: str, config: Any) -> str:
    return digest(PROFILE_SALT, {"device": device, "toolchain": toolchain, "spec": spec_key, "config": config})
