"""ResNet-50's stem (7x7 stride-2 conv over 3 channels, 64 out, folded BN bias + ReLU, from the NCHW input) built
three ways and timed side by side on one GPU: as one patch_linear in each config, as im2col + a CUTLASS GEMM (the
patch_linear pass left out), and PyTorch's cuDNN conv (eager, channels-last, the layout ResNet runs in).

Floors: FLOPs over the measured fp16 matrix rate, and the bytes a kernel cannot avoid (the NCHW input read once, the
NHWC output written once) over the measured copy bandwidth. Run on an H100/H200:
    PYTHONPATH=. python3 bench/stem.py --out stem.json
"""
from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import torch

from bench.models import timed
from kiln.builder import GraphBuilder
from kiln.dtypes import DType
from kiln.ir import Graph, IntVar
from kiln.ops import Conv2dAttrs, EwInstr, PermuteAttrs
from kiln.runtime import Model
from tests.support import local_build as lb

TARGET = "cuda:sm90"
BATCHES = (1, 32, 128, 256)


def stem_graph(weight: np.ndarray, bias: np.ndarray) -> Graph:
    b = GraphBuilder("stem")
    x = b.input("x", (IntVar("batch", 1, max(BATCHES)), 3, 224, 224), DType.F16)
    nhwc = b.op("permute", [x], PermuteAttrs((0, 2, 3, 1)))
    w = b.constant("w", weight, DType.F16)
    bb = b.constant("bias", bias, DType.F16)
    attrs = Conv2dAttrs(stride=(2, 2), pads=(3, 3, 3, 3), has_bias=True, epilogue=(EwInstr("relu", (0,)),))
    return b.build(b.op("conv2d", [nhwc, w, bb], attrs))


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", default="stem.json")
    p.add_argument("--configs", default='[{"block_m": 64}, {"block_m": 128}, {"block_m": 128, "row_tiles": true}]',
                   help="JSON list of patch_linear configs")
    args = p.parse_args()
    torch.manual_seed(0)
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.float16)
    peak = 2 * 8192**3 / (timed(lambda: a @ a, 20) * 1e-3) / 1e12
    src = torch.empty(1 << 30, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    copy_gbs = 2 * src.numel() / (timed(lambda: dst.copy_(src), 20) * 1e-3) / 1e9
    card = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
                          capture_output=True, text=True).stdout.strip()
    print(f"{card}: fp16 matmul {peak:.0f} TFLOP/s, copy {copy_gbs:.0f} GB/s (read + write)", flush=True)

    rng = np.random.default_rng(0)
    weight = rng.uniform(-1, 1, (64, 7, 7, 3)) / np.sqrt(147)
    bias = rng.uniform(-0.5, 0.5, 64)
    graph = stem_graph(weight, bias)
    work = Path(tempfile.mkdtemp())
    builds = {}
    for config in json.loads(args.configs):
        name = "patch_linear_" + "_".join(f"{k}{int(v)}" for k, v in config.items())
        builds[name] = lb.build_local(graph, TARGET, work / name, {"patch_linear": config})
    builds["im2col_gemm"] = lb.build_local(graph, TARGET, work / "im2col", disabled_passes=frozenset({"patch_linear"}))
    for name, built in builds.items():
        print(f"{name}: kernels {[(c.spec.op, built.configs[c.kernel]) for c in built.plan.calls]}", flush=True)
    models = {name: Model(built.dir) for name, built in builds.items()}
    conv = torch.nn.Conv2d(3, 64, 7, stride=2, padding=3).cuda().half().to(memory_format=torch.channels_last)
    with torch.no_grad():
        conv.weight.copy_(torch.from_numpy(weight.transpose(0, 3, 1, 2)))
        conv.bias.copy_(torch.from_numpy(bias))

    results = {"card": card, "torch": torch.__version__, "fp16_matmul_tflops": peak, "copy_gbs": copy_gbs, "rows": []}
    stream = torch.cuda.Stream()
    for batch in BATCHES:
        x = torch.randn(batch, 3, 224, 224, device="cuda", dtype=torch.float16)
        x_cl = x.contiguous(memory_format=torch.channels_last)
        with torch.no_grad():
            ref = torch.relu(conv(x_cl)).permute(0, 2, 3, 1).float()
        row = {"batch": batch, "gflops": 2 * batch * 112 * 112 * 64 * 147 / 1e9}
        row["flop_floor_ms"] = row["gflops"] / peak
        row["byte_floor_ms"] = (x.numel() + batch * 112 * 112 * 64) * 2 / (copy_gbs * 1e9) * 1e3
        for name, m in models.items():
            y = torch.empty(batch, 112, 112, 64, device="cuda", dtype=torch.float16)

            def run(m=m, y=y, x=x):
                with torch.cuda.stream(stream):
                    m.run({"x": x}, out={m.manifest.outputs[0].name: y}, graph=True)
                torch.cuda.current_stream().wait_stream(stream)
            run()
            torch.cuda.synchronize()
            row[f"{name}_rel_err_vs_cudnn"] = float((y.float() - ref).norm() / ref.norm())
            row[f"{name}_ms"] = timed(run, reps=50)
        with torch.no_grad():
            row["torch_cudnn_ms"] = timed(lambda x_cl=x_cl: torch.relu(conv(x_cl)), reps=50)
        results["rows"].append(row)
        Path(args.out).write_text(json.dumps(results, indent=1))
        print(f"batch {batch:3d}: " + "  ".join(f"{k[:-3]} {v:.4f}" for k, v in row.items() if k.endswith("_ms"))
              + "  errs " + " ".join(f"{v:.1e}" for k, v in row.items() if k.endswith("_cudnn")), flush=True)
    for m in models.values():
        m.close()


if __name__ == "__main__":
    main()
