"""Profile BERT-base's GEMM and attention candidates on this GPU, then time the
model with the profiled picks against the heuristic defaults, same card, same run.

This is what the farm's profile workers do for `kiln compile --profile` (one
profiler binary per kernel spec, every candidate checked then timed with device
events, median), run in one process because the GPU machine has no broker.

    PYTHONPATH=. python3 bench/tune_bert.py --out bench/results/tune_bert.json
"""
from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

import kiln
from bench.models import BATCHES, SEQ, timed
from codegen_worker import build
from codegen_worker.backends import get_backend
from kiln.runtime import Model
from kiln.targets import get_target
from planner_svc.lower import lower
from planner_svc.pipeline import run_passes
from profile_worker.runner import run_all
from tests.support import local_build as lb
from tests.support import torch_models as tm

TARGET = "cuda:sm90"


def profile_specs(graph, jobs: int, work: Path) -> tuple[dict[str, dict], list[dict]]:
    backend, target = get_backend("cuda"), get_target(TARGET)
    plan = lower(run_passes(graph)[0], TARGET)
    specs = {c.spec.key(): c.spec for c in plan.calls if c.spec.op in ("linear", "attention")}
    jobs_list = []
    for key, spec in specs.items():
        candidates = backend.candidate_configs(spec, target)
        if len(candidates) > 1:
            jobs_list.append((key, spec, candidates, [build.render(backend, target, spec, c) for c in candidates]))
    t0 = time.time()
    flat = [(key, rk) for key, _, _, rks in jobs_list for rk in rks]
    with ThreadPoolExecutor(jobs) as pool:
        objects = list(pool.map(lambda kr: build.compile_kernel(backend, target, kr[1])[0], flat))
    compile_s = time.time() - t0
    by_key: dict[str, list[bytes]] = {}
    for (key, _), obj in zip(flat, objects, strict=True):
        by_key.setdefault(key, []).append(obj)
    picks, report = {}, []
    t0 = time.time()
    for key, spec, candidates, rks in jobs_list:
        d = work / key[:12]
        d.mkdir(parents=True, exist_ok=True)
        exe = build.build_profiler(backend, target, spec, rks, by_key[key], d)
        results = run_all(str(exe), len(candidates), runs=20, timeout_s=120)
        ok = [(r.median_ms, i) for i, r in enumerate(results) if r.ok]
        best = min(ok)[1] if ok else 0
        picks[key] = candidates[best]
        report.append({"spec": key, "op": spec.op, "shapes": [str(t) for t in spec.inputs[:2]],
                       "profiled_at": build.profile_dims(spec),
                       "candidates": [{"config": c, "ok": r.ok, "median_ms": r.median_ms, "error": r.error}
                                      for c, r in zip(candidates, results, strict=True)],
                       "default": candidates[0], "pick": candidates[best],
                       "speedup_vs_default": (results[0].median_ms / results[best].median_ms
                                              if results[0].ok and results[best].ok else None)})
        print(f"{spec.op:9s} {report[-1]['shapes']}: default {results[0].median_ms:.4f} ms -> pick "
              f"{candidates[best]} {results[best].median_ms:.4f} ms", flush=True)
    profile_s = time.time() - t0
    return picks, [{"compile_s": round(compile_s, 1), "profile_run_s": round(profile_s, 1),
                    "kernels": len(jobs_list), "candidates": len(flat)}, *report]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", default="tune_bert.json")
    p.add_argument("--jobs", type=int, default=16)
    args = p.parse_args()
    card = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
                          capture_output=True, text=True).stdout.strip()
    model = tm.bert_base().half()
    batch = torch.export.Dim("batch", min=1, max=max(BATCHES["bert_base"]))
    graph = kiln.from_torch(model, tm.bert_inputs(2, SEQ, 30522), dynamic_shapes=({0: batch}, {0: batch}),
                            name="bert_base")
    work = Path(tempfile.mkdtemp())
    t0 = time.time()
    picks, report = profile_specs(graph, args.jobs, work / "prof")
    tune_s = time.time() - t0
    builds = {}
    for label, configs in (("heuristic", None), ("profiled", picks)):
        t0 = time.time()
        builds[label] = (lb.build_local(graph, TARGET, work / label, configs, jobs=args.jobs), time.time() - t0)
    models = {label: Model(b.dir) for label, (b, _) in builds.items()}
    names = [t.name for t in graph.inputs]
    out_name = graph.outputs[0]
    stream = torch.cuda.Stream()
    rows = []
    for n in BATCHES["bert_base"]:
        feeds = dict(zip(names, (t.cuda() for t in tm.bert_inputs(n, SEQ, 30522, seed=n)), strict=True))
        row = {"batch": n}
        for label, m in models.items():
            y = torch.empty(n, SEQ, 768, dtype=torch.float16, device="cuda")

            def run(m=m, y=y, feeds=feeds):
                with torch.cuda.stream(stream):
                    m.run(feeds, out={out_name: y}, graph=True)
                torch.cuda.current_stream().wait_stream(stream)
            row[f"{label}_ms"] = timed(run)
        rows.append(row)
        print(f"batch {n}: heuristic {row['heuristic_ms']:.3f} ms, profiled {row['profiled_ms']:.3f} ms", flush=True)
    result = {"card": card, "tune_s": round(tune_s, 1), "profile": report,
              "build_s": {k: round(v[1], 1) for k, v in builds.items()}, "rows": rows}
    Path(args.out).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
