"""Run a profiler's candidates under a hard timeout: all in one process when that goes
cleanly, else each in its own process group, so a hang or crash fails only its candidate.

One process for all saves a device start-up per candidate (about 0.7 s on an H200, most
of a GPU profile's time). Its results are kept only if every candidate came back ok and the
process exited cleanly: then nothing went wrong that isolation would have contained.
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


def _spawn(args: list[str], timeout_s: float) -> tuple[int, str, str] | None:
    """(exit status, stdout, stderr) of a run in its own process group; None when it ran past
    timeout_s, after the whole group (children it forked too) was killed."""
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        return None
    return proc.returncode, out, err


def run_candidate(exe: str, index: int, *, runs: int = 20, timeout_s: float = 60.0) -> CandidateResult:
    """A hang, a crash or garbage output fails this candidate only."""
    ran = _spawn([exe, str(index), str(runs)], timeout_s)
    if ran is None:
        return CandidateResult(index, False, float("inf"), 0, f"timed out after {timeout_s:.0f}s")
    returncode, out, err = ran
    if returncode < 0:
        return CandidateResult(index, False, float("inf"), 0,
                               f"killed by signal {signal.Signals(-returncode).name}")
    lines = [line for line in out.splitlines() if line.startswith("{")]
    try:
        data = json.loads(lines[-1])
    except (IndexError, json.JSONDecodeError):
        return CandidateResult(index, False, float("inf"), 0,
                               f"no JSON result (exit {returncode}): {(err or out)[-300:]}")
    if not data.get("ok"):
        return CandidateResult(index, False, float("inf"), 0, str(data.get("error", "failed")))
    return CandidateResult(index, True, float(data["median_ms"]), int(data["runs"]))


def run_together(exe: str, count: int, *, runs: int = 20, timeout_s: float = 60.0) -> list[CandidateResult] | None:
    """Every candidate in one process (`exe all RUNS`); None unless all came back ok, in order."""
    ran = _spawn([exe, "all", str(runs)], timeout_s)
    if ran is None or ran[0] != 0:
        return None
    results = []
    out = ran[1]
    for line in out.splitlines():
        if not line.startswith("{"):
            continue
        try:
            data = json.loads(line)
            results.append(CandidateResult(int(data["index"]), bool(data["ok"]), float(data["median_ms"]),
                                           int(data["runs"])))
        except (json.JSONDecodeError, KeyError, TypeError, ValueError):
            return None
    if [r.index for r in results] != list(range(count)) or not all(r.ok for r in results):
        return None
    return results


def run_all(exe: str, count: int, *, runs: int = 20, timeout_s: float = 60.0,
            together: bool = True) -> list[CandidateResult]:
    """timeout_s bounds one candidate's process, and the shared process as a whole."""
    if together and count > 1:
        results = run_together(exe, count, runs=runs, timeout_s=timeout_s)
        if results is not None:
            return results
    return [run_candidate(exe, i, runs=runs, timeout_s=timeout_s) for i in range(count)]
