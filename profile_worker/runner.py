"""Run one profiler candidate in its own process group with a hard timeout.

No Celery here: the GPU check runs this directly on a machine with no broker.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
from dataclasses import dataclass


@dataclass(frozen=True)
class CandidateResult:
    index: int
    ok: bool
    median_ms: float
    runs: int
    error: str = ""


def run_candidate(exe: str, index: int, *, runs: int = 20, timeout_s: float = 60.0) -> CandidateResult:
    """A hang, a crash or garbage output fails this candidate only."""
    proc = subprocess.Popen([exe, str(index), str(runs)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        return CandidateResult(index, False, float("inf"), 0, f"timed out after {timeout_s:.0f}s")
    if proc.returncode < 0:
        return CandidateResult(index, False, float("inf"), 0,
                               f"killed by signal {signal.Signals(-proc.returncode).name}")
    lines = [line for line in out.splitlines() if line.startswith("{")]
    try:
        data = json.loads(lines[-1])
    except (IndexError, json.JSONDecodeError):
        return CandidateResult(index, False, float("inf"), 0,
                               f"no JSON result (exit {proc.returncode}): {(err or out)[-300:]}")
    if not data.get("ok"):
        return CandidateResult(index, False, float("inf"), 0, str(data.get("error", "failed")))
    return CandidateResult(index, True, float(data["median_ms"]), int(data["runs"]))


def run_all(exe: str, count: int, *, runs: int = 20, timeout_s: float = 60.0) -> list[CandidateResult]:
    return [run_candidate(exe, i, runs=runs, timeout_s=timeout_s) for i in range(count)]
