"""The CLI contract on a local cluster: cluster up/status/down, compile --json, fetch, run."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from kiln import reference
from kiln.cluster import compose_services
from kiln.loader import load_model

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


def kiln(env: dict[str, str], *args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "kiln.cli", *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"kiln {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def test_local_cluster_runs_the_compose_services(tmp_path):
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("KILN_")},
           "KILN_CLUSTER_DIR": str(tmp_path / "cluster"), "KILN_MLP_DTYPE": "float32,float16"}
    kiln(env, "cluster", "up")
    try:
        status = kiln(env, "cluster", "status")
        state = json.loads((tmp_path / "cluster" / "cluster.json").read_text())
        started = {p["name"]: p["command"] for p in state["procs"]}
        # The same commands as docker-compose.yml, with this Python.
        for name, (cmd, _env) in compose_services().items():
            if name in started:
                assert started[name][1:] == cmd[1:]
        assert {"frontend", "planner", "codegen-worker-cpu", "profile-worker-cpu"} <= set(started)
        assert "DOWN" not in status.stdout

        out = kiln(env, "compile", "examples/mlp.py", "--target", "cpu", "--json").stdout
        result = json.loads(out.strip().splitlines()[-1])
        assert result["state"] == "SUCCEEDED" and len(result["artifact"]) == 64 and result["cached"] is False
        again = json.loads(kiln(env, "compile", "examples/mlp.py", "--target", "cpu", "--json").stdout.splitlines()[-1])
        assert again["cached"] is True and again["artifact"] == result["artifact"]

        art = tmp_path / "art"
        kiln(env, "fetch", result["artifact"], "-o", str(art))
        graph = load_model(str(ROOT / "examples" / "mlp.py"))
        feeds = reference.random_inputs(graph, seed=4, sizes={"batch": 9})
        np.savez(tmp_path / "in.npz", **feeds)
        kiln(env, "run", str(art), "--inputs", str(tmp_path / "in.npz"), "--outputs", str(tmp_path / "out.npz"))
        want = reference.run(graph, feeds)
        with np.load(tmp_path / "out.npz") as got:
            for name, tol in zip(graph.outputs, (1e-5, 1e-2), strict=True):
                g = got[name].astype(np.float64)
                assert np.linalg.norm(g - want[name]) / np.linalg.norm(want[name]) < tol

        # `kiln profile run`: the fleet profiles the model's kernels, no artifact; the database then holds them.
        warmed = kiln(env, "profile", "run", "examples/mlp.py", "--target", "cpu")
        assert "profiled" in warmed.stdout and "kernels" in warmed.stderr
        exported = kiln(env, "profile", "export", "-").stdout.splitlines()
        assert len(exported) >= 2 * 5 and all(json.loads(line)["device_kind"] == "cpu.x86_64" for line in exported)

        bad = kiln(env, "fetch", "00" * 32, "-o", str(tmp_path / "nothing"), check=False)
        assert bad.returncode != 0
    finally:
        kiln(env, "cluster", "down")
    assert kiln(env, "cluster", "status", check=False).returncode != 0
