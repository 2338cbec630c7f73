"""bench/kernel_probe.py, the program gpu_check.sh's ncu and sanitize stages
watch, on the cpu target: both ops build, run and match float64, and a wrong
answer would exit non-zero (what a sanitizer run relies on to say it was right)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("op,batch,extra", [("attention", 2, []), ("ffn_up", 1, []), ("ffn_up", 1, ["--no-gelu"])])
def test_probe_runs_and_checks_its_answer(op, batch, extra):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, str(ROOT / "bench" / "kernel_probe.py"), "--op", op, "--batch", str(batch),
                          "--runs", "1", "--target", "cpu", *extra], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    line = json.loads(out.stdout.strip().splitlines()[-1])
    assert line["ok"] and line["op"] == op and 0 < line["rel_err"] < 1e-2
    assert len(line["config"]) == 1  # one kernel: the op under the profiler, nothing else
