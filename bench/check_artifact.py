"""Run a fetched artifact on this machine's device and check it against the
float64 NumPy reference of the model it was compiled from. Prints and saves JSON."""
from __future__ import annotations

import argparse
import json
import platform
import subprocess
import time

import numpy as np

from kiln import reference
from kiln.loader import load_model
from kiln.runtime import Model


def device_name() -> str:
    try:
        return subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
                              capture_output=True, text=True, timeout=30).stdout.strip()
    except OSError:
        return platform.processor() or platform.machine()


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--dir", required=True)
    p.add_argument("--model", required=True)
    p.add_argument("--batches", default="1,7,64,128")
    p.add_argument("--json", default=None)
    args = p.parse_args()
    graph = load_model(args.model)
    model = Model(args.dir)
    matches = model.manifest.built_from(graph)
    print(f"{args.model}: {'the graph the artifact was compiled from' if matches else 'NOT the artifact graph'} "
          f"(job key {model.manifest.job_key[:12]})")
    rows = []
    for batch in (int(b) for b in args.batches.split(",")):
        feeds = reference.random_inputs(graph, seed=batch, sizes={"batch": batch})
        t0 = time.perf_counter()
        got = model.run(feeds)
        ms = (time.perf_counter() - t0) * 1e3
        want = reference.run(graph, feeds)
        for name in graph.outputs:
            g = np.asarray(got[name], np.float64)
            w = want[name]
            err = float(np.linalg.norm(g - w) / np.linalg.norm(w))
            dtype = str(np.asarray(got[name]).dtype)
            tol = 1e-4 if dtype == "float32" else 1e-2
            rows.append({"batch": batch, "output": name, "dtype": dtype, "rel_err": err, "finite": bool(np.isfinite(g).all()),
                         "ok": bool(err < tol and np.isfinite(g).all()), "tolerance": tol, "wall_ms_incl_copies": round(ms, 3)})
            print(f"batch {batch:4d} {name:20s} {dtype:8s} rel_err {err:.3e} (tol {tol:g}) "
                  f"{'OK' if rows[-1]['ok'] else 'FAIL'}")
    result = {"device": device_name(), "artifact_target": model.manifest.target, "job_key": model.manifest.job_key,
              "kernels": [{"kernel": k.kernel, "ops": list(k.ops), "config": k.config} for k in model.manifest.kernels],
              "same_graph": matches, "rows": rows, "all_ok": matches and all(r["ok"] for r in rows)}
    print(json.dumps({"device": result["device"], "all_ok": result["all_ok"]}))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    raise SystemExit(0 if result["all_ok"] else 1)


if __name__ == "__main__":
    main()
