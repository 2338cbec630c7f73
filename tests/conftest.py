"""Suite-wide hooks."""
from __future__ import annotations

import functools
import os
import subprocess

import pytest


@functools.cache
def _no_gpu_reason() -> str | None:
    """Why `gpu` tests cannot run here, or None when an NVIDIA GPU answers."""
    if os.environ.get("CI"):
        return "CI is set: CI machines have no GPU"
    try:
        proc = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as err:
        return f"no NVIDIA GPU: nvidia-smi -L failed ({err.__class__.__name__})"
    if proc.returncode != 0 or "GPU" not in proc.stdout:
        return f"no NVIDIA GPU: nvidia-smi -L exited {proc.returncode}"
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    gpu_items = [item for item in items if item.get_closest_marker("gpu")]
    if not gpu_items:
        return
    reason = _no_gpu_reason()
    if reason:
        skip = pytest.mark.skip(reason=reason)
        for item in gpu_items:
            item.add_marker(skip)
