"""Kiln's fused attention (gpu/attention.j2, tensor-core path) vs PyTorch's
scaled_dot_product_attention on the same card in the same run: BERT-base
shapes (H=12, S=384, D=64, fp16, bshd as a QKV linear leaves them), batch
1/8/32/64 (--seq and --batches change them), with a [B, 1, 1, S] additive
key-padding mask and without.

Every candidate config of the CUDA backend is built and timed; SDPA runs with
its default dispatch and forced to each backend (flash, cuDNN, efficient,
math) where torch.nn.attention.sdpa_kernel has it; a backend that refuses a
case is recorded with its error. Times are CUDA-event medians per call (each
sample times `--inner` back-to-back calls, so launch overhead is amortised the
same way for both). Run on an H100/H200:
    PYTHONPATH=. python3 bench/attention_sm90.py --out bench/results/attention_sm90.json
"""
from __future__ import annotations

import argparse
import functools
import json
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from bench.models import timed
from codegen_worker.backends import get_backend
from kiln.builder import GraphBuilder
from kiln.dtypes import DType
from kiln.ir import Graph, IntVar
from kiln.ops import AttentionAttrs
from kiln.runtime import Model
from kiln.targets import get_target
from planner_svc.lower import lower
from planner_svc.pipeline import run_passes
from tests.support import local_build as lb

H, S, D = 12, 384, 64
BATCHES = (1, 8, 32, 64)
TARGET = "cuda:sm90"


def attention_graph(masked: bool) -> Graph:
    b = GraphBuilder("bert_attention_mask" if masked else "bert_attention")
    batch = IntVar("batch", 1, max(BATCHES))
    ins = [b.input(n, (batch, S, H, D), DType.F16) for n in "qkv"]
    if masked:
        ins.append(b.input("mask", (batch, 1, 1, S), DType.F16))
    return b.build(b.op("attention", ins, AttentionAttrs(D ** -0.5, False, masked, "bshd")))


def candidate_configs(graph: Graph) -> list[dict[str, Any]]:
    spec = lower(run_passes(graph)[0], TARGET).calls[0].spec
    return get_backend("cuda").candidate_configs(spec, get_target(TARGET))


def sdpa_backends() -> dict[str, Any]:
    """name -> context manager factory forcing that SDPA backend (None: default dispatch)."""
    out: dict[str, Any] = {"sdpa_default": None}
    try:
        from torch.nn.attention import SDPBackend, sdpa_kernel
    except ImportError:
        return out
    for name, attr in (("sdpa_flash", "FLASH_ATTENTION"), ("sdpa_cudnn", "CUDNN_ATTENTION"),
                       ("sdpa_efficient", "EFFICIENT_ATTENTION"), ("sdpa_math", "MATH")):
        backend = getattr(SDPBackend, attr, None)
        if backend is not None:
            out[name] = functools.partial(sdpa_kernel, backend)
    return out


def time_sdpa(q, k, v, mask, reps: int, inner: int) -> dict[str, Any]:
    """q/k/v are [B, S, H, D]; SDPA reads them as [B, H, S, D] views (no copies)."""
    qt, kt, vt = (t.transpose(1, 2) for t in (q, k, v))
    results: dict[str, Any] = {}
    for name, forced in sdpa_backends().items():
        def call(forced=forced):
            if forced is None:
                return F.scaled_dot_product_attention(qt, kt, vt, attn_mask=mask)
            with forced():
                return F.scaled_dot_product_attention(qt, kt, vt, attn_mask=mask)
        try:
            call()
            torch.cuda.synchronize()
            results[name] = timed(call, reps, warmup=10, inner=inner)
        except RuntimeError as err:  # a forced backend that does not take this case
            results[name] = None
            results[name + "_error"] = str(err).splitlines()[0][:200]
    return results


def main() -> None:
    global S, BATCHES  # attention_graph and the timing loop read them
    p = argparse.ArgumentParser()
    p.add_argument("--out", default="attention_sm90.json")
    p.add_argument("--reps", type=int, default=50)
    p.add_argument("--inner", type=int, default=10)
    p.add_argument("--default-only", action="store_true", help="time only the backend's default config")
    p.add_argument("--seq", type=int, default=384, help="sequence length (BERT-base: 384)")
    p.add_argument("--batches", default="1,8,32,64", help="comma list of batch sizes")
    p.add_argument("--configs", default="", help="JSON list of configs to time after the default one, in place "
                   "of the backend's candidates (configs it would not offer, for a variant under trial)")
    args = p.parse_args()
    S, BATCHES = args.seq, tuple(int(b) for b in args.batches.split(","))
    dev = torch.device("cuda")
    torch.manual_seed(0)

    builds: list[tuple[bool, dict[str, Any], Graph]] = []
    for masked in (False, True):
        graph = attention_graph(masked)
        configs = candidate_configs(graph)
        if args.configs:
            configs = configs[:1] + json.loads(args.configs)
        for cfg in configs[:1] if args.default_only else configs:
            builds.append((masked, cfg, graph))
    tmp = Path(tempfile.mkdtemp())
    with ThreadPoolExecutor(len(builds)) as pool:
        # One folder per build: configs may share block sizes (warp_rows, wgmma, min_blocks differ).
        built = list(pool.map(lambda ix: lb.build_local(
            ix[1][2], TARGET, tmp / f"b{ix[0]}", {"attention": ix[1][1]}, jobs=1), enumerate(builds)))
    models = [(masked, cfg, Model(b.dir), graph.outputs[0]) for (masked, cfg, graph), b in zip(builds, built, strict=True)]

    rows = []
    for batch in BATCHES:
        q, k, v = (torch.randn(batch, S, H, D, device=dev, dtype=torch.float16) for _ in range(3))
        keep = torch.randint(S // 4, S + 1, (batch,), device=dev)
        pad = torch.where(torch.arange(S, device=dev)[None, :] < keep[:, None], 0.0, -10000.0)
        mask = pad.view(batch, 1, 1, S).to(torch.float16)
        flops = 4 * batch * H * S * S * D
        for masked in (False, True):
            feeds = {"q": q, "k": k, "v": v} | ({"mask": mask} if masked else {})
            ref = F.scaled_dot_product_attention(*(t.transpose(1, 2).float() for t in (q, k, v)),
                                                 attn_mask=mask.float() if masked else None).transpose(1, 2)
            row: dict[str, Any] = {"batch": batch, "heads": H, "seq": S, "head_dim": D, "mask": masked,
                                   "layout": "bshd", "kiln": []}
            for m_masked, cfg, model, name in models:
                if m_masked != masked:
                    continue
                out = {name: torch.empty(batch, S, H, D, device=dev, dtype=torch.float16)}
                got = model.run(feeds, out=out)[name]
                err = float((got.float() - ref).norm() / ref.norm())
                ms = timed(lambda model=model, feeds=feeds, out=out: model.run(feeds, out=out), args.reps,
                           warmup=10, inner=args.inner)
                row["kiln"].append({"config": cfg, "ms": ms, "tflops": flops / (ms * 1e-3) / 1e12, "rel_err": err})
            best = min(row["kiln"], key=lambda r: r["ms"])
            row["kiln_default_ms"] = row["kiln"][0]["ms"]
            row["kiln_best_ms"], row["kiln_best_config"] = best["ms"], best["config"]
            row.update(time_sdpa(q, k, v, mask if masked else None, args.reps, args.inner))
            for key in [k_ for k_ in row if k_.startswith("sdpa_") and not k_.endswith("_error")]:
                if row[key] is not None:
                    row[key.replace("sdpa_", "kiln_best_over_")] = row["kiln_best_ms"] / row[key]
            rows.append(row)
            sdpa = "  ".join(f"{k_[5:]} {v_:.3f}" if v_ is not None else f"{k_[5:]} n/a"
                             for k_, v_ in row.items() if k_.startswith("sdpa_") and not k_.endswith("_error"))
            print(f"B={batch:<3d} mask={masked!s:<5} kiln default {row['kiln_default_ms']:.3f} ms, best "
                  f"{best['ms']:.3f} ms {best['config']} ({best['tflops']:.0f} TF/s, err {best['rel_err']:.1e})  |  "
                  f"sdpa ms: {sdpa}")
    for _, _, model, _ in models:
        model.close()
    card = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
                          capture_output=True, text=True).stdout.strip()
    result = {"card": card, "torch": torch.__version__, "reps": args.reps, "inner": args.inner, "rows": rows}
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(json.dumps({"card": card, "out": args.out}))


if __name__ == "__main__":
    main()
