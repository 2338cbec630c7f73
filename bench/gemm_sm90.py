"""Kiln's CUTLASS sm90 linear (+ fused epilogue) vs PyTorch eager, same card, same run.

Each case is one BERT-base layer GEMM (batch 64, sequence 384: M = 24576) with
its epilogue; each is built once per pinned CUTLASS config, so the table shows
what the tile and schedule do to each epilogue. `gelu_cutlass_erff` renders
the GEMM with CUTLASS's own GELU functor (one erff per element), the one Kiln's
erf GELU replaced, so the two can be compared in one run. Run on an H100/H200:
    PYTHONPATH=. python3 bench/gemm_sm90.py --out bench/results/gemm_sm90.json
On a CPU box, `--build-only` with KILN_OBJECT_CACHE set compiles every kernel
beforehand (the GPU run then only links).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import subprocess
import tempfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from codegen_worker.backends import cutlass_sm90
from kiln.builder import GraphBuilder, gelu, gelu_tanh, linear
from kiln.dtypes import DType
from kiln.ir import Graph, IntVar
from tests.support import local_build as lb

M = 24576  # batch 64 x sequence 384
# (case, N, K, epilogue)
CASES = {"qkv": (2304, 768, "bias"), "ffn_up_identity": (3072, 768, "bias"), "ffn_up_gelu": (3072, 768, "gelu"),
         "ffn_up_gelu_cutlass_erff": (3072, 768, "gelu_cutlass_erff"), "ffn_up_gelu_tanh": (3072, 768, "gelu_tanh"),
         "ffn_down_residual": (768, 3072, "residual")}
CONFIGS = {"coop128x128": cutlass_sm90.DEFAULT, "coop128x256": cutlass_sm90.CANDIDATES[1],
           "pingpong128x128": cutlass_sm90.CANDIDATES[4]}


@contextlib.contextmanager
def cutlass_erff_gelu() -> Iterator[None]:
    """Render "gelu" with CUTLASS's erff functor, as Kiln did before gelu_erf.h."""
    saved = cutlass_sm90.ACTIVATIONS["gelu"]
    cutlass_sm90.ACTIVATIONS["gelu"] = "cutlass::epilogue::thread::GELU"
    try:
        yield
    finally:
        cutlass_sm90.ACTIVATIONS["gelu"] = saved


def kiln_graph(name: str, n: int, k: int, kind: str, w: np.ndarray, bias: np.ndarray) -> Graph:
    b = GraphBuilder(name)
    x = b.input("x", (IntVar("m", 1, M), k), DType.F16)
    y = linear(x, b.constant("w", w, DType.F16), b.constant("b", bias, DType.F16))
    if kind in ("gelu", "gelu_cutlass_erff"):
        y = gelu(y)
    elif kind == "gelu_tanh":
        y = gelu_tanh(y)
    elif kind == "residual":
        y = y + b.input("r", (IntVar("m", 1, M), n), DType.F16)
    return b.build(y)


def build_all(cases: list[str], configs: list[str], out: Path, jobs: int) -> dict[tuple[str, str], object]:
    rng = np.random.default_rng(0)
    graphs, weights = {}, {}
    for name in cases:
        n, k, kind = CASES[name]
        w = (rng.standard_normal((n, k)) / np.sqrt(k)).astype(np.float16)
        bias = rng.uniform(-1, 1, n).astype(np.float16)
        weights[name] = (w, bias)
        graphs[name] = kiln_graph(name, n, k, kind, w, bias)

    def build(pair: tuple[str, str]):
        name, cfg = pair
        return lb.build_local(graphs[name], "cuda:sm90", out / f"{name}.{cfg}", configs={"linear": CONFIGS[cfg]}, jobs=1)

    built = {}
    # The erff variant patches a module constant while it renders: its builds run apart from the rest.
    for erff in (False, True):
        pairs = [(c, f) for c in cases for f in configs if (CASES[c][2] == "gelu_cutlass_erff") == erff]
        with cutlass_erff_gelu() if erff else contextlib.nullcontext(), ThreadPoolExecutor(jobs) as pool:
            built.update(zip(pairs, pool.map(build, pairs), strict=True))
    return {"graphs": graphs, "weights": weights, "built": built}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", default="gemm_sm90.json")
    p.add_argument("--cases", default=",".join(CASES))
    p.add_argument("--configs", default=",".join(CONFIGS))
    p.add_argument("--jobs", type=int, default=8)
    p.add_argument("--build-only", action="store_true", help="compile (into KILN_OBJECT_CACHE) and stop")
    args = p.parse_args()
    cases, configs = args.cases.split(","), args.configs.split(",")
    tmp = Path(tempfile.mkdtemp())
    b = build_all(cases, configs, tmp, args.jobs)
    if args.build_only:
        print(f"built {len(b['built'])} artifacts under {tmp}")
        return

    import torch
    import torch.nn.functional as F

    from bench.models import timed
    from kiln.runtime import Model

    dev = torch.device("cuda")
    torch.manual_seed(0)
    a = torch.randn(8192, 8192, device=dev, dtype=torch.float16)
    peak = 2 * 8192**3 / (timed(lambda: a @ a, 10, warmup=3, inner=3) * 1e-3) / 1e12
    rows = []
    for name in cases:
        n, k, kind = CASES[name]
        w, bias = b["weights"][name]
        x = torch.randn(M, k, device=dev, dtype=torch.float16)
        r = torch.randn(M, n, device=dev, dtype=torch.float16)
        tw, tb = torch.from_numpy(w).to(dev), torch.from_numpy(bias).to(dev)
        feeds = {"x": x, "r": r} if kind == "residual" else {"x": x}

        def eager(x=x, r=r, tw=tw, tb=tb, kind=kind):
            y = F.linear(x, tw, tb)
            if kind in ("gelu", "gelu_cutlass_erff"):
                return F.gelu(y)
            if kind == "gelu_tanh":
                return F.gelu(y, approximate="tanh")
            return y + r if kind == "residual" else y

        ref64 = eager().double()
        eager_ms = timed(eager, 20, warmup=3, inner=10)
        flops = 2 * M * n * k
        for cfg in configs:
            model = Model(b["built"][(name, cfg)].dir)
            out_name = b["graphs"][name].outputs[0]
            out = torch.full((M, n), float("nan"), device=dev, dtype=torch.float16)
            model.run(feeds, out={out_name: out})
            torch.cuda.synchronize()
            err = float((out.double() - ref64).norm() / ref64.norm())
            ms = timed(lambda model=model, feeds=feeds, out=out, out_name=out_name:
                       model.run(feeds, out={out_name: out}), 20, warmup=3, inner=10)
            row = {"gemm": name, "M": M, "N": n, "K": k, "epilogue": kind, "config_name": cfg,
                   "config": CONFIGS[cfg], "rel_err_vs_torch_fp16": err, "kiln_ms": ms,
                   "kiln_tflops": flops / (ms * 1e-3) / 1e12, "eager_ms": eager_ms,
                   "eager_tflops": flops / (eager_ms * 1e-3) / 1e12}
            row["kiln_fraction_of_peak"] = row["kiln_tflops"] / peak
            rows.append(row)
            print(f"{name:26s} {cfg:16s} kiln {ms:.3f} ms ({row['kiln_tflops']:.0f} TF/s, "
                  f"{row['kiln_fraction_of_peak']:.0%} of peak)  eager {eager_ms:.3f} ms  err {err:.1e}", flush=True)
            model.close()
    card = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
                          capture_output=True, text=True).stdout.strip()
    result = {"card": card, "torch": torch.__version__, "measured_fp16_matmul_tflops": peak, "rows": rows}
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(json.dumps({"card": card, "peak_tflops": round(peak)}))


if __name__ == "__main__":
    main()
