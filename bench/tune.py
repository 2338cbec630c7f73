"""Profile a model's GEMM, conv and attention candidates on this GPU and pick the
fastest per kernel spec: what the farm's profile workers do for
`kiln compile --profile`, in one process, because the GPU machine has no broker.

Each spec with several candidates gets one profiler executable holding all of
them (every candidate checked against the first before it is timed, device
events, median). Objects come from KILN_OBJECT_CACHE when it holds them, so
the compiling can happen beforehand on a CPU machine:

    KILN_OBJECT_CACHE=.gpu/objects PYTHONPATH=. python3 bench/tune.py --prepare   # CPU box: compile only
    KILN_OBJECT_CACHE=.gpu/objects PYTHONPATH=. python3 bench/tune.py --out picks.json   # GPU box
bench/models.py --profile calls profile() and times both builds.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch

import kiln
from bench.models import earlier_picks, make
from codegen_worker import build
from codegen_worker.backends import get_backend
from kiln.ir import Graph
from kiln.plan import KernelSpec
from kiln.targets import get_target
from kiln.tuning import dispatch_config, profile_points
from planner_svc.lower import lower
from planner_svc.pipeline import run_passes
from tests.support import local_build as lb

TARGET = "cuda:sm90"
TUNED_OPS = ("linear", "conv2d", "attention")


def model_graph(name: str) -> Graph:
    model, inputs, dyn = make(name)
    example = tuple(t.half() if t.is_floating_point() else t for t in inputs(2))
    return kiln.from_torch(model.half(), example, dynamic_shapes=dyn, name=name)


def tuned_specs(graph: Graph, extra: dict[str, list[dict[str, Any]]] | None = None,
                ) -> dict[str, tuple[KernelSpec, list[dict[str, Any]]]]:
    """spec key -> (spec, candidates) for every kernel with a choice to make; extra: op kind -> configs tried
    beside the backend's candidates where they fit (those the profiler leaves out, for an A/B)."""
    backend, target = get_backend("cuda"), get_target(TARGET)
    plan = lower(run_passes(graph)[0], TARGET)
    out = {}
    for call in plan.calls:
        if call.spec.op in TUNED_OPS and call.spec.key() not in out:
            candidates = backend.candidate_configs(call.spec, target)
            candidates += [c for c in (extra or {}).get(call.spec.op, []) if backend.fits(call.spec, target, c)]
            if len(candidates) > 1:
                out[call.spec.key()] = (call.spec, candidates)
    return out


def _compile_all(kernels: list[build.RenderedKernel], jobs: int, work: Path) -> list[bytes]:
    backend, target = get_backend("cuda"), get_target(TARGET)
    unique = list({k.object_key: k for k in kernels}.values())
    work.mkdir(parents=True, exist_ok=True)
    done = [0]

    def one(k: build.RenderedKernel) -> bytes:
        obj = lb.compile_cached(backend, target, k, work)[0]
        done[0] += 1
        if done[0] % 10 == 0 or done[0] == len(unique):
            print(f"  compiled {done[0]}/{len(unique)}", flush=True)
        return obj

    with ThreadPoolExecutor(jobs) as pool:
        by_key = dict(zip((k.object_key for k in unique), pool.map(one, unique), strict=True))
    return [by_key[k.object_key] for k in kernels]


def prepare(names: list[str], jobs: int, picks: Path | None = None) -> None:
    """Compile every default kernel of the models and every candidate (no GPU needed);
    with picks (an earlier run's), only what bench/models.py --picks builds: the pick of
    each spec it covers and the default of every other kernel."""
    backend, target = get_backend("cuda"), get_target(TARGET)
    kernels = []
    for name in names:
        graph = model_graph(name)
        known = earlier_picks(picks, name) if picks else {}
        for key, (spec, candidates) in tuned_specs(graph).items():
            if key in known:
                rk = build.render(backend, target, spec, known[key])
                kernels += [rk, *rk.parts]  # a dispatch pick links each range's own object
            else:
                kernels += [build.render(backend, target, spec, c) for c in candidates]
        for call in lower(run_passes(graph)[0], TARGET).calls:
            if call.spec.key() not in known:
                kernels.append(build.render(backend, target, call.spec, backend.default_config(call.spec, target)))
    print(f"{len({k.object_key for k in kernels})} objects for {names}", flush=True)
    t0 = time.time()
    _compile_all(kernels, jobs, Path(tempfile.mkdtemp(prefix="kiln-prepare-")))
    print(f"prepared in {time.time() - t0:.0f} s", flush=True)


def profile(graph: Graph, jobs: int, work: Path, runs: int = 20, known: dict[str, dict] | None = None,
            extra: dict[str, list[dict[str, Any]]] | None = None) -> tuple[dict[str, dict], dict[str, Any]]:
    """(spec key -> picked config, report) for every spec of graph with candidates;
    specs in `known` (picks of an earlier run on the same card) keep their pick unprofiled."""
    backend, target = get_backend("cuda"), get_target(TARGET)
    from profile_worker.runner import run_all

    known = known or {}
    every = tuned_specs(graph, extra)
    specs = {k: v for k, v in every.items() if k not in known}
    rendered = {key: [build.render(backend, target, spec, c) for c in cands] for key, (spec, cands) in specs.items()}
    t0 = time.time()
    flat = [rk for rks in rendered.values() for rk in rks]
    objects = iter(_compile_all(flat, jobs, work / "objects"))
    objs = {key: [next(objects) for _ in rks] for key, rks in rendered.items()}
    compile_s = time.time() - t0
    t0 = time.time()

    jobs_list = [(key, i, at) for key, (spec, _) in specs.items() for i, at in enumerate(profile_points(spec))]

    def make_exe(job: tuple[str, int, list[int]]) -> Path:
        key, i, at = job
        return build.build_profiler(backend, target, specs[key][0], rendered[key], objs[key],
                                    work / key[:16] / str(i), at)

    with ThreadPoolExecutor(jobs) as pool:
        exes = dict(zip(((k, i) for k, i, _ in jobs_list), pool.map(make_exe, jobs_list), strict=True))
    link_s = time.time() - t0
    picks, report = {k: v for k, v in known.items() if k in every}, []
    t0 = time.time()
    for key, (spec, candidates) in specs.items():
        points = profile_points(spec)
        bests, per_point = [], []
        for i, at in enumerate(points):
            results = run_all(str(exes[(key, i)]), len(candidates), runs=runs, timeout_s=120)
            ok = [(r.median_ms, j) for j, r in enumerate(results) if r.ok]
            best = min(ok)[1] if ok else 0
            bests.append(candidates[best])
            default_ms = results[0].median_ms if results[0].ok else None
            per_point.append({"at": at, "pick": candidates[best],
                              "candidates": [{"config": c, "ok": r.ok, "median_ms": r.median_ms, "error": r.error}
                                             for c, r in zip(candidates, results, strict=True)],
                              "speedup_vs_default": default_ms / results[best].median_ms if default_ms and ok else None})
            print(f"  {spec.op:9s} {[str(t) for t in spec.inputs[:2]]} at {at}: default {default_ms} ms -> "
                  f"{candidates[best].get('tile', candidates[best])} {results[best].median_ms:.4f} ms", flush=True)
        picks[key] = dispatch_config(points, bests)
        report.append({"spec": key, "op": spec.op, "shapes": [str(t) for t in spec.inputs[:2]],
                       "points": per_point, "config": picks[key]})
    summary = {"specs": len(specs), "reused_picks": len(picks) - len(specs), "candidates": len(flat),
               "profilers": len(jobs_list),
               "compile_s": round(compile_s, 1),
               "profiler_build_s": round(link_s, 1), "profile_run_s": round(time.time() - t0, 1)}
    print(f"  profiled {summary}", flush=True)
    return picks, {"summary": summary, "specs": report}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--models", default="resnet50,bert_base")
    p.add_argument("--prepare", action="store_true", help="compile every candidate into KILN_OBJECT_CACHE, no GPU")
    p.add_argument("--jobs", type=int, default=16)
    p.add_argument("--out", default="picks.json")
    p.add_argument("--picks", default="",
                   help="{model: picks}, a models.json or a picks.json: with --prepare compile only those; "
                        "otherwise the specs they name keep their pick and only the others are profiled")
    args = p.parse_args()
    names = args.models.split(",")
    if args.prepare:
        prepare(names, args.jobs, Path(args.picks) if args.picks else None)
        return
    assert torch.cuda.is_available(), "profiling needs a GPU (use --prepare to only compile)"
    out = {}
    for name in names:
        known = earlier_picks(Path(args.picks), name) if args.picks else {}
        picks, report = profile(model_graph(name), args.jobs, Path(tempfile.mkdtemp()) / name, known=known)
        out[name] = {"picks": picks, **report}
        Path(args.out).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
