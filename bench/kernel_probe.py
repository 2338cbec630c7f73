"""One Kiln kernel, built with a pinned config and run a few times, for a
profiler or a sanitizer to watch: `ncu` (hardware counters: where a kernel's
time goes) and `compute-sanitizer` (racecheck, memcheck, synccheck), which
bench/gpu_check.sh runs as its `ncu` and `sanitize` stages.

Ops: BERT-base's attention (bs3hd, a key-padding mask, S = 384, H = 12,
D = 64), its FFN-up (x[B*384, 768] @ w[3072, 768]^T + bias, erf GELU; --no-gelu: bias
alone, the same GEMM without that epilogue), and
ResNet-50's stem as one patch_linear (batch x 3 x 224 x 224, NCHW).
The first run is checked against the float64 reference, so a sanitizer run
also says the answer was right. Run on an H100/H200:
    PYTHONPATH=. python3 bench/kernel_probe.py --op attention --batch 8 \
        --config '{"block_q": 128, "block_k": 64, "wgmma": true, "overlap": true}'
"""
from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np

from bench.stem import stem_graph
from kiln import reference
from kiln.builder import GraphBuilder, gelu, linear
from kiln.dtypes import DType
from kiln.ir import Graph, IntVar
from kiln.ops import AttentionAttrs
from kiln.runtime import Model
from tests.support import local_build as lb

TARGET = "cuda:sm90"
S, H, D, HIDDEN, FFN = 384, 12, 64, 768, 3072


def attention_graph(max_batch: int) -> Graph:
    b = GraphBuilder("probe_attention")
    batch = IntVar("batch", 1, max_batch)
    qkv = b.input("qkv", (batch, S, 3, H, D), DType.F16)
    mask = b.input("mask", (batch, 1, 1, S), DType.F16)
    return b.build(b.op("attention", [qkv, mask], AttentionAttrs(D ** -0.5, False, True, "bs3hd")))


def ffn_up_graph(max_batch: int, gelu_epilogue: bool = True) -> Graph:
    b = GraphBuilder("probe_ffn_up")
    rows = IntVar("batch", 1, max_batch * S)
    rng = np.random.default_rng(3)
    x = b.input("x", (rows, HIDDEN), DType.F16)
    w = b.constant("w", rng.uniform(-1, 1, (FFN, HIDDEN)) / np.sqrt(HIDDEN), DType.F16)
    bias = b.constant("bias", rng.uniform(-1, 1, FFN), DType.F16)
    y = linear(x, w, bias)
    return b.build(gelu(y) if gelu_epilogue else y)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--op", choices=("attention", "ffn_up", "stem"), default="attention")
    p.add_argument("--config", default="", help="JSON config pinned for the op (default: the backend's default)")
    p.add_argument("--batch", type=int, default=8, help="BERT batch (ffn_up: batch x 384 rows)")
    p.add_argument("--no-gelu", action="store_true",
                   help="ffn_up with its bias alone: the GEMM without the erf GELU epilogue, to set beside it")
    p.add_argument("--runs", type=int, default=3, help="runs after the checked one")
    p.add_argument("--target", default=TARGET, help="cpu checks the script itself on a machine without a GPU")
    args = p.parse_args()
    if args.op == "stem":  # ResNet-50's stem as one patch_linear (bench/stem.py), batch images
        rng = np.random.default_rng(0)
        graph = stem_graph(rng.uniform(-1, 1, (64, 7, 7, 3)) / np.sqrt(147), rng.uniform(-0.5, 0.5, 64))
    else:
        graph = attention_graph(args.batch) if args.op == "attention" else ffn_up_graph(args.batch, not args.no_gelu)
    op = {"attention": "attention", "ffn_up": "linear", "stem": "patch_linear"}[args.op]
    configs = {op: json.loads(args.config)} if args.config else None
    built = lb.build_local(graph, args.target, Path(tempfile.mkdtemp(prefix="kiln-probe-")), configs)
    sizes = {"batch": args.batch * S if args.op == "ffn_up" else args.batch}
    feeds = lb.feeds_for(graph, seed=5, sizes=sizes)
    if args.op == "attention":  # a key-padding mask: item i keeps 384 - 37 i keys
        keep = np.maximum(S - 37 * np.arange(args.batch), 1)
        feeds["mask"] = np.where(np.arange(S)[None, :] < keep[:, None], 0.0, -10000.0).reshape(
            args.batch, 1, 1, S).astype(feeds["mask"].dtype)
    model = Model(built.dir)
    try:
        got = model.run(feeds)
        ref = reference.run(graph, feeds)
        name = graph.outputs[0]
        err = lb.rel_err(np.asarray(got[name], dtype=np.float64), ref[name])
        for _ in range(args.runs):
            model.run(feeds)
    finally:
        model.close()
    ok = bool(np.isfinite(err) and err < lb.TOLERANCE[args.target.split(":")[0]][DType.F16])
    print(json.dumps({"op": args.op, "config": built.configs, "batch": args.batch, "rel_err": err, "ok": ok}))
    if not ok:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
