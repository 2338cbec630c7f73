"""ResNet-50's stride-1 3x3 convs (56x56x64, 28x28x128, 14x14x256, 7x7x512; bias + ReLU, batch 1..256), every
conv candidate of an sm90 build profiled at batch 1, 16 and 256: CUTLASS 3.x's TMA warp-specialized kernels against
CUTLASS 2.x's mma.sync implicit GEMM (which the profiler leaves out on sm90: here it is added) and, over 64
channels, Kiln's halo conv (gpu/conv2d_halo.j2). The specs are
ResNet-50's own (same key), so the picks printed feed bench/models.py --picks. Run on an H100/H200:
    PYTHONPATH=. python3 bench/conv_ab.py --out conv_ab.json
"""
from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from bench.tune import profile
from codegen_worker.backends import cutlass_sm80
from kiln.builder import GraphBuilder
from kiln.dtypes import DType
from kiln.ir import Graph, IntVar
from kiln.ops import Conv2dAttrs, EwInstr

SHAPES = ((56, 64), (28, 128), (14, 256), (7, 512))


def graph() -> Graph:
    b = GraphBuilder("resnet_3x3")
    batch = IntVar("batch", 1, 256)
    rng = np.random.default_rng(0)
    outs = []
    for hw, c in SHAPES:
        x = b.input(f"x{hw}", (batch, hw, hw, c), DType.F16)
        w = b.constant(f"w{hw}", rng.uniform(-1, 1, (c, 3, 3, c)) / np.sqrt(9 * c), DType.F16)
        bias = b.constant(f"b{hw}", rng.uniform(-0.5, 0.5, c), DType.F16)
        attrs = Conv2dAttrs(pads=(1, 1, 1, 1), has_bias=True, epilogue=(EwInstr("relu", (0,)),))
        outs.append(b.op("conv2d", [x, w, bias], attrs))
    return b.build(*outs)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", default="conv_ab.json")
    p.add_argument("--jobs", type=int, default=16)
    args = p.parse_args()
    card = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
                          capture_output=True, text=True).stdout.strip()
    picks, report = profile(graph(), args.jobs, Path(tempfile.mkdtemp(prefix="kiln-conv-ab-")),
                            extra={"conv2d": cutlass_sm80.CONV_CANDIDATES})
    for spec in report["specs"]:
        print(spec["shapes"])
        for point in spec["points"]:
            best = {}
            for c in point["candidates"]:
                if c["ok"]:
                    impl = c["config"].get("impl", "halo" if c["config"].get("halo") else "kiln")
                    if impl not in best or c["median_ms"] < best[impl][0]:
                        best[impl] = (c["median_ms"], c["config"].get("tile"))
            print(f"  at {point['at']}: " + "  ".join(f"{k} {v[0]:.4f} ms {v[1]}" for k, v in sorted(best.items())))
    Path(args.out).write_text(json.dumps({"card": card, "picks": picks, "report": report}, indent=1))


if __name__ == "__main__":
    main()
