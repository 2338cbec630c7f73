"""Whole models: Kiln vs PyTorch eager vs torch.compile, same card, same run.

Imports ResNet-50 and BERT-base (sequence 384) from their torch.nn definitions
(tests/support/torch_models.py, random weights) with kiln.from_torch, builds
each once for cuda:sm90 with a symbolic batch (tests/support/local_build: the
farm's codegen without the farm, since the GPU machine has no Redis/Celery),
checks it against a float64 NumPy reference on fresh random inputs, then times
every batch size with CUDA events (warm-up, median). Kiln runs with CUDA-graph
replay on preallocated outputs, as a serving loop would.

    PYTHONPATH=. python3 bench/models.py --out bench/results/models.json
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

import kiln
from kiln import reference
from kiln.ir import Graph, IntVar
from kiln.runtime import Model
from kiln.shapes import infer_types
from tests.support import local_build as lb
from tests.support import torch_models as tm

BATCHES = {"resnet50": [1, 32, 128, 256], "bert_base": [1, 8, 32, 64], "vit_b16": [1, 32, 128]}
SEQ = 384
# The symbolic batch range each model is built for (kernel specs, hence object keys, depend on it).
MAX_BATCH = {name: max(sizes) for name, sizes in BATCHES.items()}


def timed(fn, reps: int = 30, warmup: int = 5, inner: int = 1) -> float:
    """Median ms a call over `reps` CUDA-event samples. A sample times `inner`
    back-to-back calls: with inner > 1 the host stays ahead of the GPU, so launch
    cost is amortised; with 1 it is part of each call, as a server sees it."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        for _ in range(inner):
            fn()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b) / inner)
    return statistics.median(times)


def graph_flops(graph: Graph, sizes: dict[str, int]) -> float:
    """Multiply-adds x 2 of the matrix ops: the work Tensor Cores must do."""
    types = infer_types(graph)

    def shape(name: str) -> list[int]:
        return [sizes[d.name] if isinstance(d, IntVar) else d for d in types[name].shape]

    total = 0.0
    for op in graph.ops:
        if op.kind == "linear":
            x, w = shape(op.inputs[0]), shape(op.inputs[1])
            total += 2 * math.prod(x[:-1]) * w[0] * w[1]
        elif op.kind == "matmul":
            out, a = shape(op.outputs[0]), shape(op.inputs[0])
            total += 2 * math.prod(out) * a[-1]
        elif op.kind == "conv2d":
            out, w = shape(op.outputs[0]), shape(op.inputs[1])
            total += 2 * math.prod(out) * w[1] * w[2] * w[3]
        elif op.kind == "attention":
            out = shape(op.outputs[0])
            q = shape(op.inputs[0])
            lay = op.attrs.layout
            b, h, sq, dv = (out[0], out[2], out[1], out[3]) if lay != "bhsd" else tuple(out)
            sk = q[1] if lay != "bhsd" else shape(op.inputs[1])[2]
            d = q[-1]
            total += 2 * b * h * sq * sk * (d + dv)
    return total


def make(name: str) -> tuple[torch.nn.Module, Any, Any]:
    """(fp16 CUDA module, example-input factory, torch.export dynamic_shapes)."""
    batch = torch.export.Dim("batch", min=1, max=MAX_BATCH[name])
    if name == "resnet50":
        model = tm.resnet50()

        def inputs(n: int, seed: int = 0):
            g = torch.Generator().manual_seed(seed)
            return (torch.randn(n, 3, 224, 224, generator=g),)
        return model, inputs, ({0: batch},)
    if name == "vit_b16":
        model = tm.vit_b16()

        def inputs(n: int, seed: int = 0):
            g = torch.Generator().manual_seed(seed)
            return (torch.randn(n, 3, 224, 224, generator=g),)
        return model, inputs, ({0: batch},)
    model = tm.bert_base()

    def inputs(n: int, seed: int = 0):
        return tm.bert_inputs(n, SEQ, 30522, seed)
    return model, inputs, ({0: batch}, {0: batch})


def earlier_picks(path: Path, name: str) -> dict[str, Any]:
    """A model's picks from {model: picks}, from an earlier models.json (its tuning.picks) or from bench/tune.py's
    picks.json ({model: {"picks": ..., "specs": ...}})."""
    data = json.loads(path.read_text())
    if "models" in data:
        return next(((m.get("tuning") or {}).get("picks", {}) for m in data["models"] if m.get("model") == name), {})
    model = data.get(name, {})
    return model["picks"] if "picks" in model and "summary" in model else model


def bench_model(name: str, args: argparse.Namespace, peak: float, workdir: Path,
                save: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    """save(result) runs after every step, so a run cut short keeps what it measured."""
    model32, inputs, dyn = make(name)
    model16 = model32.half()
    example = tuple(t.half() if t.is_floating_point() else t for t in inputs(2))
    t0 = time.time()
    graph = kiln.from_torch(model16, example, dynamic_shapes=dyn, name=name)
    import_s = time.time() - t0
    t0 = time.time()
    tuning = None
    if args.picks and not args.profile:
        # An earlier run's picks, trusted as they are: one build, nothing profiled, no heuristic twin.
        known = earlier_picks(Path(args.picks), name)
        built = heuristic = lb.build_local(graph, "cuda:sm90", workdir / name, known, jobs=args.jobs)
        tuning = {"picks": known, "from": args.picks}
    else:
        heuristic = built = lb.build_local(graph, "cuda:sm90", workdir / name, jobs=args.jobs)
    build_s = time.time() - t0
    if args.profile:
        from bench.tune import profile

        t0 = time.time()
        known = earlier_picks(Path(args.picks), name) if args.picks else {}
        picks, tuning = profile(graph, args.jobs, workdir / f"{name}.profile", known=known)
        tuning["profile_total_s"] = round(time.time() - t0, 1)
        tuning["picks"] = picks
        save({"model": name, "tuning": tuning})  # the picks outlive a run cut short after profiling
        # The second compile: every pick known, every object cached, no profiler runs.
        t0 = time.time()
        built = lb.build_local(graph, "cuda:sm90", workdir / f"{name}.profiled", picks, jobs=args.jobs)
        tuning["second_compile_s"] = round(time.time() - t0, 1)
    # The same model with some passes left out (--ab-passes) or built from other picks (--ab-picks), timed beside
    # the main build in the same rounds: a pass's or a tuning's worth (kernels no picks name keep their defaults).
    ab = None
    if args.ab_passes or args.ab_picks:
        t0 = time.time()
        if args.ab_picks:
            configs = earlier_picks(Path(args.ab_picks), name)
        else:
            configs = (earlier_picks(Path(args.picks), name) if args.picks else {}) | built.configs_by_spec()
        ab = lb.build_local(graph, "cuda:sm90", workdir / f"{name}.ab", configs, jobs=args.jobs,
                            disabled_passes=frozenset(args.ab_passes))
        print(f"{name}: A/B build (passes off {args.ab_passes}, picks {args.ab_picks or 'the same'}): "
              f"{len(ab.plan.calls)} kernels, built in {time.time() - t0:.0f} s", flush=True)
    kernels = [c.spec.op for c in built.plan.calls]
    impls = {}
    for c in built.plan.calls:
        key = f"{c.spec.op}:{built.configs[c.kernel].get('impl', 'kiln')}"
        impls[key] = impls.get(key, 0) + 1
    m = Model(built.dir)
    result: dict[str, Any] = {"model": name, "import_s": round(import_s, 1), "build_s": round(build_s, 1),
                              "kernels": len(kernels), "kernel_impls": impls,
                              "arena_mib": built.plan.arena_bytes / 2**20,
                              "activations_sum_mib": built.plan.activation_bytes_total / 2**20, "rows": [],
                              "profiled": args.profile, "tuning": tuning}
    # Correctness on fresh inputs against float64 (small batch: NumPy float64 is slow).
    check_batch = 2
    feeds_t = tuple(t.half() if t.is_floating_point() else t for t in inputs(check_batch, seed=123))
    names = [t.name for t in graph.inputs]
    feeds_np = {n: t.float().numpy() if t.is_floating_point() else t.numpy() for n, t in zip(names, feeds_t, strict=True)}
    ref = next(iter(reference.run(graph, feeds_np).values()))
    got = m.run({n: t.cuda() for n, t in zip(names, feeds_t, strict=True)})
    got = next(iter(got.values())).float().cpu().numpy()
    with torch.no_grad():
        torch_out = model16.cuda()(*(t.cuda() for t in feeds_t)).float().cpu().numpy()
    result["rel_err_kiln_vs_fp64"] = lb.rel_err(got, ref)
    result["rel_err_torch_fp16_vs_fp64"] = lb.rel_err(torch_out, ref)
    heuristic_model = Model(heuristic.dir) if heuristic is not built else None
    ab_model = Model(ab.dir) if ab is not None else None
    if ab_model is not None:
        got_ab = ab_model.run({n: t.cuda() for n, t in zip(names, feeds_t, strict=True)})
        result["rel_err_kiln_ab_vs_fp64"] = lb.rel_err(next(iter(got_ab.values())).float().cpu().numpy(), ref)
        result["ab_passes"], result["ab_picks"] = args.ab_passes, args.ab_picks
        result["ab_kernels"] = len(ab.plan.calls)
    save(result)
    print(f"{name}: import {import_s:.0f} s, build {build_s:.0f} s, {len(kernels)} kernels {impls}, "
          f"rel err kiln {result['rel_err_kiln_vs_fp64']:.2e} torch-fp16 {result['rel_err_torch_fp16_vs_fp64']:.2e}",
          flush=True)
    model16 = model16.cuda()
    if name == "resnet50":
        model16 = model16.to(memory_format=torch.channels_last)
    compiled = {mode: torch.compile(model16, mode=mode) for mode in args.compile_modes}
    stream = torch.cuda.Stream()
    out_name = m.manifest.outputs[0].name
    for batch in BATCHES[name]:
        xs = tuple(t.half().cuda() if t.is_floating_point() else t.cuda() for t in inputs(batch, seed=batch))
        if name == "resnet50":
            xs_torch = (xs[0].contiguous(memory_format=torch.channels_last),)
        else:
            xs_torch = xs
        sizes = {"batch": batch}
        feeds = dict(zip(names, xs, strict=True))
        shape = [batch if isinstance(d, IntVar) else d for d in infer_types(graph)[graph.outputs[0]].shape]
        y = torch.empty(shape, dtype=torch.float16, device="cuda")

        def replay(model: Model, y: torch.Tensor, feeds: dict = feeds) -> Callable[[], None]:
            """One graph replay of `model` on Kiln's stream into `y`, the default stream waiting for it."""
            def run() -> None:
                with torch.cuda.stream(stream):
                    model.run(feeds, out={out_name: y}, graph=True)
                torch.cuda.current_stream().wait_stream(stream)
            return run

        kiln_run = replay(m, y)

        # Everything timed is timed once a round, the rounds alternating, so drift on the card
        # (clocks, temperature) falls on every contender alike; each keeps its median over rounds.
        contenders: dict[str, Callable[[], Any]] = {"kiln": kiln_run}
        if args.pdl_ab:
            contenders["kiln_no_pdl"] = kiln_run
        if heuristic_model is not None:
            contenders["kiln_heuristic"] = replay(heuristic_model, torch.empty_like(y))
        if ab_model is not None:
            contenders["kiln_ab"] = replay(ab_model, torch.empty_like(y))
        row: dict[str, Any] = {"batch": batch}
        with torch.no_grad():
            contenders["eager"] = lambda xs=xs_torch: model16(*xs)
            for mode, fn in compiled.items():
                t0 = time.time()
                fn(*xs_torch)
                torch.cuda.synchronize()
                row[f"compile_{mode}_first_call_s"] = round(time.time() - t0, 1)
                contenders[f"compile_{mode}"] = lambda xs=xs_torch, fn=fn: fn(*xs)
            samples: dict[str, list[float]] = {k: [] for k in contenders}
            for _ in range(args.rounds):
                for key, fn in contenders.items():
                    if key in ("kiln", "kiln_no_pdl"):
                        m.set_pdl(key == "kiln")  # recaptures the graph in timed()'s warm-up
                    samples[key].append(timed(fn))
            m.set_pdl(True)
        for key, values in samples.items():
            row[f"{key}_ms"] = statistics.median(values)
            if args.rounds > 1:
                row[f"{key}_ms_rounds"] = values  # not *_ms: peers are the *_ms keys
        flops = graph_flops(graph, sizes)
        row["gflops"] = flops / 1e9
        row["floor_ms"] = flops / (peak * 1e12) * 1e3
        row["kiln_fraction_of_floor"] = row["floor_ms"] / row["kiln_ms"]
        peers = {k: v for k, v in row.items() if k.endswith("_ms") and not k.startswith("kiln") and k != "floor_ms"}
        best = min(peers, key=peers.get)
        row["best_peer"], row["speedup_vs_best_peer"] = best, peers[best] / row["kiln_ms"]
        result["rows"].append(row)
        save(result)
        wanted = {BATCHES[name][b] if b < 0 else b for b in args.breakdown_batches}
        if batch in wanted:
            result.setdefault("breakdowns", []).append(kernel_breakdown(built, m, feeds, out_name, y, batch))
            result.setdefault("graph_timelines", []).append(
                graph_timeline(kiln_run, len(built.plan.calls), batch))
            save(result)
        print(f"  batch {batch:4d}: kiln {row['kiln_ms']:.3f} ms  "
              + (f"(heuristic {row['kiln_heuristic_ms']:.3f})  " if "kiln_heuristic_ms" in row else "")
              + (f"(no PDL {row['kiln_no_pdl_ms']:.3f})  " if "kiln_no_pdl_ms" in row else "")
              + (f"(A/B build {row['kiln_ab_ms']:.3f})  " if "kiln_ab_ms" in row else "")
              + "  ".join(f"{k[:-3]} {v:.3f}" for k, v in peers.items())
              + f"  floor {row['floor_ms']:.3f} ({row['kiln_fraction_of_floor']:.0%})", flush=True)
    m.close()
    for other in (heuristic_model, ab_model):
        if other is not None:
            other.close()
    return result


def busy_and_span(intervals: list[tuple[float, float]]) -> tuple[float, float]:
    """(time some interval covers, first start to last end) of (start, end) pairs: kernels that
    overlap (PDL lets one start while its predecessor drains) count once."""
    busy, end_so_far = 0.0, float("-inf")
    for start, end in sorted(intervals):
        if end > end_so_far:
            busy += end - max(start, end_so_far)
            end_so_far = end
    return busy, (max(e for _, e in intervals) - min(s for s, _ in intervals)) if intervals else 0.0


def graph_timeline(run: Callable[[], Any], kernels_per_run: int, batch: int, runs: int = 5) -> dict[str, Any]:
    """The replayed CUDA graph as the card ran it (the profiler traces the kernels inside a graph),
    PDL as in the timed runs. Per run: the span from its first kernel's start to its last one's end,
    the time some kernel ran, and the idle rest. Idle time is gaps between kernels; busy time over
    the eager breakdown's sum is the same kernels running slower inside the graph (clocks, L2)."""
    from torch.profiler import ProfilerActivity, profile

    for _ in range(2):
        run()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(runs):
            run()
            torch.cuda.synchronize()  # runs apart, so that each run's span is its own
    try:
        events = sorted(((e.time_range.start, e.time_range.end) for e in prof.events()
                         if e.device_type == torch.autograd.DeviceType.CUDA), key=lambda iv: iv[0])
    except (AttributeError, TypeError) as err:  # a torch whose events lack these fields
        print(f"  graph timeline: no device events ({err})", flush=True)
        return {"batch": batch, "error": str(err)}
    out: dict[str, Any] = {"batch": batch, "pdl": True, "device_events": len(events), "runs": runs,
                           "kernels_per_run": kernels_per_run}
    if len(events) % runs == 0 and events:
        per = len(events) // runs
        stats = [busy_and_span(events[i * per:(i + 1) * per]) for i in range(runs)]
        busy = statistics.median(b for b, _ in stats) / 1e3
        span = statistics.median(sp for _, sp in stats) / 1e3
        out.update(busy_ms=busy, span_ms=span, idle_ms=span - busy)
        print(f"  graph replay at batch {batch}: span {span:.3f} ms/run, kernels busy {busy:.3f}, "
              f"idle {span - busy:.3f} ({per} device events a run for {kernels_per_run} calls)", flush=True)
    else:
        print(f"  graph timeline: {len(events)} device events for {runs} runs: not split into runs", flush=True)
    return out


def kernel_breakdown(built: lb.LocalBuild, m: Model, feeds: dict, out_name: str, y: torch.Tensor,
                     batch: int, runs: int = 5) -> dict[str, Any]:
    """Device time per Kiln kernel (torch.profiler over eager runs), largest first: where the time goes.
    Programmatic dependent launch is off meanwhile: with it, a kernel starts early and waits for the one
    before, so its recorded time would hold part of its predecessor's."""
    from torch.profiler import ProfilerActivity, profile

    manifest = built.manifest()
    by_fn = {k.fn: k for k in manifest.kernels}
    fn_of = {k.kernel: k.fn for k in manifest.kernels}
    pdl_switched = m.set_pdl(False)
    try:
        for _ in range(2):
            m.run(feeds, out={out_name: y})
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(runs):
                m.run(feeds, out={out_name: y})
            torch.cuda.synchronize()
    finally:
        if pdl_switched:
            m.set_pdl(True)
    per_fn: dict[str, float] = {}
    other = 0.0
    # CUTLASS kernels are named by their template types, not by Kiln's function, so
    # kernels are matched to calls by launch order when each call launched one kernel.
    try:
        launches = sorted((e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA
                           and "memcpy" not in e.name.lower() and "memset" not in e.name.lower()),
                          key=lambda e: e.time_range.start)
    except (AttributeError, TypeError) as err:  # a torch whose events lack these fields
        print(f"  breakdown: no launch order ({err})", flush=True)
        launches = []
    calls = built.plan.calls
    if len(launches) == runs * len(calls):
        for j, e in enumerate(launches):
            fn = fn_of[calls[j % len(calls)].kernel]
            per_fn[fn] = per_fn.get(fn, 0.0) + e.time_range.elapsed_us()
    else:
        print(f"  breakdown: {len(launches)} launches for {runs} x {len(calls)} calls: matching by name", flush=True)
        for e in prof.key_averages():
            t = getattr(e, "device_time_total", 0.0) or getattr(e, "cuda_time_total", 0.0)
            fn = next((f for f in by_fn if f in e.key), None)
            if fn is None:
                other += t
            else:
                per_fn[fn] = per_fn.get(fn, 0.0) + t
    rows = []
    for fn, us in sorted(per_fn.items(), key=lambda kv: -kv[1]):
        k = by_fn[fn]
        uses = [c for c in built.plan.calls if fn_of[c.kernel] == fn]
        spec = uses[0].spec if uses else None
        rows.append({"fn": fn, "op": spec.op if spec else "?", "calls_per_run": len(uses),
                     "ms_per_run": us / runs / 1e3, "config": k.config,
                     "shapes": [str(t) for t in spec.inputs[:2]] if spec else []})
    total = sum(r["ms_per_run"] for r in rows)
    print(f"  breakdown at batch {batch}: kernels {total:.3f} ms/run, unattributed {other / runs / 1e3:.3f} ms/run")
    for r in rows[:12]:
        print(f"    {r['ms_per_run']:.3f} ms  x{r['calls_per_run']}  {r['op']:10s} {r['config']}  {r['shapes']}")
    return {"batch": batch, "pdl": False, "kernels_ms": total, "unattributed_ms": other / runs / 1e3, "rows": rows}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", default="models.json")
    p.add_argument("--models", default="resnet50,bert_base")
    p.add_argument("--compile-modes", default="default", help="comma list of torch.compile modes ('' for none)")
    p.add_argument("--jobs", type=int, default=16)
    p.add_argument("--picks", default="",
                   help="{model: {spec key: config}} or an earlier models.json: built as picked (with --profile: "
                        "only the specs it lacks are profiled)")
    p.add_argument("--batches", default="", help="comma list replacing every model's batch sizes")
    p.add_argument("--profile", action="store_true",
                   help="profile every GEMM/conv/attention candidate first (bench/tune.py); time both builds")
    p.add_argument("--rounds", type=int, default=1, help="time every contender this many times, alternating")
    p.add_argument("--pdl-ab", action="store_true",
                   help="also time Kiln with programmatic dependent launch off (kiln_no_pdl_ms)")
    p.add_argument("--ab-passes", default="", help="comma list of pipeline steps: also time a build without them")
    p.add_argument("--ab-picks", default="", help="also time a build from these picks (a models.json or {model: picks})")
    p.add_argument("--breakdown-batches", default="1,-1",
                   help="batches of the per-kernel breakdown (negative: from the end of the model's list)")
    args = p.parse_args()
    args.breakdown_batches = [int(b) for b in args.breakdown_batches.split(",") if b]
    args.ab_passes = [s for s in args.ab_passes.split(",") if s]
    args.compile_modes = [m for m in args.compile_modes.split(",") if m]
    if args.batches:
        for name in BATCHES:
            BATCHES[name] = [int(b) for b in args.batches.split(",")]
    torch.manual_seed(0)
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.float16)
    peak = 2 * 8192**3 / (timed(lambda: a @ a, 20) * 1e-3) / 1e12
    card = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
                          capture_output=True, text=True).stdout.strip()
    print(f"{card}: measured fp16 matmul {peak:.0f} TFLOP/s", flush=True)
    workdir = Path(tempfile.mkdtemp())
    results = {"card": card, "torch": torch.__version__, "measured_fp16_matmul_tflops": peak, "models": []}
    for name in args.models.split(","):
        slot = len(results["models"])
        results["models"].append({"model": name})

        def save(result: dict[str, Any], slot: int = slot) -> None:
            results["models"][slot] = result
            Path(args.out).write_text(json.dumps(results, indent=1))
        try:
            bench_model(name, args, peak, workdir, save)
        except Exception as err:  # one model's failure must not hide the others' numbers
            failed = {**results["models"][slot], "error": f"{type(err).__name__}: {err}"[:2000]}
            save(failed)
            print(f"{name}: FAILED {type(err).__name__}: {err}", flush=True)
    np.set_printoptions(precision=3)


if __name__ == "__main__":
    main()
