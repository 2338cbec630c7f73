"""Markdown tables from bench/models.py JSON files: one row per model and batch, then the
largest kernels of each breakdown with their share of the measured matrix rate.

    python3 bench/models_table.py run3_models.json run4_models.json
"""
from __future__ import annotations

import argparse
import json
import math
import re
from pathlib import Path
from typing import Any

PEERS = ("eager_ms", "compile_default_ms", "compile_reduce-overhead_ms", "compile_max-autotune_ms")


def rows_table(models: list[dict[str, Any]]) -> list[str]:
    peers = [p for p in PEERS if any(p in r for m in models for r in m.get("rows", []))]
    no_pdl = any("kiln_no_pdl_ms" in r for m in models for r in m.get("rows", []))
    heuristic = any("kiln_heuristic_ms" in r for m in models for r in m.get("rows", []))
    head = ["model", "batch", "Kiln ms", *(["Kiln heuristic ms"] if heuristic else []),
            *(["Kiln without PDL ms"] if no_pdl else []),
            *[p.removesuffix("_ms") + " ms" for p in peers],
            "floor ms", "Kiln / floor", "vs best peer"]
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for m in models:
        for r in m.get("rows", []):
            best = min((r[p] for p in peers if p in r), default=math.inf)
            kiln = r["kiln_ms"]
            cells = [m["model"], str(r["batch"]), f"**{kiln:.3f}**" if kiln <= best else f"{kiln:.3f}"]
            if heuristic:
                cells.append(f"{r.get('kiln_heuristic_ms', math.nan):.3f}")
            if no_pdl:
                cells.append(f"{r.get('kiln_no_pdl_ms', math.nan):.3f}")
            cells += [(f"**{r[p]:.3f}**" if r[p] == best and r[p] < kiln else f"{r[p]:.3f}") if p in r else "-"
                      for p in peers]
            ratio = best / kiln
            cells += [f"{r['floor_ms']:.3f}", f"{r['kiln_fraction_of_floor']:.0%}",
                      f"{ratio:.2f}x faster" if ratio >= 1 else f"{ratio:.2f}x (behind)"]
            out.append("| " + " | ".join(cells) + " |")
    return out


def _dims(shape: str, batch: int) -> list[int]:
    inner = shape[shape.index("[") + 1:shape.rindex("]")]
    inner = re.sub(r"\w+\[\d+\.\.\d+\]", str(batch), inner)  # the symbolic batch
    return [int(d) for d in inner.split(",")]


def breakdown_table(model: dict[str, Any], peak_tflops: float, top: int = 8) -> list[str]:
    out = []
    for bd in model.get("breakdowns", []):
        batch = bd["batch"]
        # Older files do not say; with PDL on, each kernel's time holds its wait on the one before it.
        pdl = {True: " (PDL on: a kernel's time includes its wait on the one before)", False: " (PDL off)"}.get(
            bd.get("pdl"), "")
        out += [f"**{model['model']} at batch {batch}**: kernels {bd['kernels_ms']:.3f} ms a run{pdl}.", "",
                "| op | calls | ms a run | shapes | TFLOP/s | of matrix rate |", "|---|---|---|---|---|---|"]
        for r in bd["rows"][:top]:
            rate = share = "-"
            if r["op"] == "linear" and len(r["shapes"]) == 2:
                x, w = _dims(r["shapes"][0], batch), _dims(r["shapes"][1], batch)
                flops = 2 * math.prod(x[:-1]) * w[0] * w[1] * r["calls_per_run"]
                tflops = flops / (r["ms_per_run"] * 1e-3) / 1e12
                rate, share = f"{tflops:.0f}", f"{tflops / peak_tflops:.0%}"
            out.append(f"| {r['op']} | {r['calls_per_run']} | {r['ms_per_run']:.3f} | {' '.join(r['shapes'])} "
                       f"| {rate} | {share} |")
        out.append("")
    return out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("files", nargs="+")
    args = p.parse_args()
    models, lines = [], []
    for f in args.files:
        data = json.loads(Path(f).read_text())
        for m in data["models"]:
            models.append(m)
            lines += breakdown_table(m, data["measured_fp16_matmul_tflops"])
    print("\n".join(rows_table(models) + [""] + lines))


if __name__ == "__main__":
    main()
