"""Kiln's CUTLASS sm90 linear (+ fused epilogue) vs PyTorch eager and torch.compile,
same card, same run. Prints a table and writes JSON. Run on an H100/H200:
    PYTHONPATH=. python3 bench/gemm_sm90.py --out bench/results/gemm_sm90.json
"""
from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from bench.models import timed
from kiln.builder import GraphBuilder, gelu, linear
from kiln.dtypes import DType
from kiln.ir import IntVar
from kiln.runtime import Model
from tests.support import local_build as lb

# BERT-base, batch 64, sequence 384: the GEMMs of one layer.
SHAPES = [("qkv", 24576, 2304, 768, "bias"), ("ffn_up_gelu", 24576, 3072, 768, "gelu"),
          ("ffn_down_residual", 24576, 768, 3072, "residual")]


def kiln_graph(name: str, m: int, n: int, k: int, kind: str, w: np.ndarray, bias: np.ndarray):
    b = GraphBuilder(name)
    x = b.input("x", (IntVar("m", 1, m), k), DType.F16)
    y = linear(x, b.constant("w", w, DType.F16), b.constant("b", bias, DType.F16))
    if kind == "gelu":
        y = gelu(y)
    elif kind == "residual":
        y = y + b.input("r", (IntVar("m", 1, m), n), DType.F16)
    return b.build(y)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", default="gemm_sm90.json")
    p.add_argument("--compile", action="store_true", help="also time torch.compile (default mode)")
    args = p.parse_args()
    dev = torch.device("cuda")
    torch.manual_seed(0)
    a = torch.randn(8192, 8192, device=dev, dtype=torch.float16)
    peak = 2 * 8192**3 / (timed(lambda: a @ a, 20) * 1e-3) / 1e12
    rng = np.random.default_rng(0)
    cases = []
    for name, m, n, k, kind in SHAPES:
        w = (rng.standard_normal((n, k)) / np.sqrt(k)).astype(np.float16)
        bias = rng.uniform(-1, 1, n).astype(np.float16)
        cases.append((name, m, n, k, kind, w, bias, kiln_graph(name, m, n, k, kind, w, bias)))
    tmp = Path(tempfile.mkdtemp())
    with ThreadPoolExecutor(len(cases)) as pool:
        builds = list(pool.map(lambda c: lb.build_local(c[7], "cuda:sm90", tmp / c[0], jobs=1), cases))
    rows = []
    for (name, m, n, k, kind, w, bias, graph), built in zip(cases, builds, strict=True):
        model = Model(built.dir)
        x = torch.randn(m, k, device=dev, dtype=torch.float16)
        r = torch.randn(m, n, device=dev, dtype=torch.float16)
        tw, tb = torch.from_numpy(w).to(dev), torch.from_numpy(bias).to(dev)
        feeds = {"x": x, "r": r} if kind == "residual" else {"x": x}

        def eager(x=x, r=r, tw=tw, tb=tb, kind=kind):
            y = F.linear(x, tw, tb)
            return F.gelu(y) if kind == "gelu" else y + r if kind == "residual" else y

        out_name = graph.outputs[0]
        got = model.run(feeds)[out_name].float()
        ref = eager().float()
        err = float((got - ref).norm() / ref.norm())
        flops = 2 * m * n * k
        row = {"gemm": name, "M": m, "N": n, "K": k, "epilogue": kind, "config": built.configs["k0"],
               "rel_err_vs_torch": err, "kiln_ms": timed(lambda model=model, feeds=feeds: model.run(feeds)),
               "eager_ms": timed(eager)}
        if args.compile:
            compiled = torch.compile(eager)
            row["compile_ms"] = timed(compiled)
        for key in [k_ for k_ in row if k_.endswith("_ms")]:
            row[key.replace("_ms", "_tflops")] = flops / (row[key] * 1e-3) / 1e12
        row["kiln_fraction_of_peak"] = row["kiln_tflops"] / peak
        rows.append(row)
        print(f"{name:18s} {m}x{n}x{k} kiln {row['kiln_ms']:.3f} ms ({row['kiln_tflops']:.0f} TF/s, "
              f"{row['kiln_fraction_of_peak']:.0%} of peak)  eager {row['eager_ms']:.3f} ms"
              + (f"  compile {row['compile_ms']:.3f} ms" if "compile_ms" in row else "") + f"  err {err:.1e}")
        model.close()
    card = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
                          capture_output=True, text=True).stdout.strip()
    result = {"card": card, "torch": torch.__version__, "measured_fp16_matmul_tflops": peak, "rows": rows}
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(json.dumps({"card": card, "peak_tflops": round(peak)}))


if __name__ == "__main__":
    main()
