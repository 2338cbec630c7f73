"""The card's memory bandwidth as PyTorch's own kernels reach it: reading (a sum), writing (fill_) and
copying, each over buffers far larger than L2. It is the floor that memory-bound kernels are counted
against (bytes over this rate), and it tells a slow kernel from a slow write path: ResNet-50's stem im2col
writes 976 MB at 1.26 TB/s on an H200, and whether that is the kernel or the card's write rate is what
this answers. Run on an H100/H200:
    PYTHONPATH=. python3 bench/bandwidth.py --out bench/results/bandwidth.json
"""
from __future__ import annotations

import argparse
import json

import torch

from bench.check_artifact import device_name
from bench.models import timed


def measure(mib: int) -> list[dict[str, float | str]]:
    n = mib * 2**20 // 2
    x = torch.randn(n, device="cuda").half()
    y = torch.empty_like(x)
    nbytes = x.numel() * x.element_size()
    cases = [
        ("read (sum)", lambda: x.sum(dtype=torch.float32), nbytes),
        ("write (fill_)", lambda: y.fill_(1.0), nbytes),
        ("copy (read + write)", lambda: y.copy_(x), 2 * nbytes),
    ]
    rows = []
    for name, fn, moved in cases:
        ms = timed(fn)
        rows.append({"op": name, "mib": mib, "bytes_moved": moved, "ms": ms, "tb_per_s": moved / (ms * 1e-3) / 1e12})
        print(f"{name:22s} {mib:5d} MiB  {ms:7.3f} ms  {rows[-1]['tb_per_s']:.2f} TB/s", flush=True)
    return rows


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", default="bandwidth.json")
    p.add_argument("--mib", default="256,976", help="comma list of buffer sizes in MiB (each far past L2)")
    args = p.parse_args()
    card = device_name()
    print(card, flush=True)
    rows = [r for mib in args.mib.split(",") for r in measure(int(mib))]
    with open(args.out, "w") as f:
        json.dump({"card": card, "torch": torch.__version__, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
