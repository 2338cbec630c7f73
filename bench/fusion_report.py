"""What the planner's fusion passes make of BERT-base and ResNet-50, as kernels and memory.

Builds the graphs with kiln.builder in the shape torch.export gives them
(tests/passes/models.py), runs the pass pipeline and the lowering, and
writes bench/results/fusion_<date>.{json,md}: kernels per layer, the kernel
list with each KernelSpec key, and the activation arena's peak against the
sum of all activations (of the unfused graph, one buffer per op output, and
of the planned graph). No device is needed: this is the plan, not a timing.

    .venv/bin/python bench/fusion_report.py [--date 2026-11-29]
"""
from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from kiln.ir import Graph  # noqa: E402
from planner_svc.lower import lower  # noqa: E402
from planner_svc.pipeline import run_passes  # noqa: E402
from tests.passes.models import bert_encoder, resnet50  # noqa: E402

MIB = 2**20


def report(name: str, graph: Graph, layer_of) -> dict:
    optimized, records = run_passes(graph)
    plan = lower(optimized, "cpu")
    unfused = lower(graph, "cpu")
    per_layer = Counter(layer_of(call.source_ops) for call in plan.calls)
    return {
        "model": name,
        "ops_before": len(graph.ops),
        "kernels": len(plan.calls),
        "kernels_per_layer": dict(sorted(per_layer.items())),
        "kernel_kinds": dict(Counter(call.spec.op for call in plan.calls)),
        "passes": [{"name": r.name, "ops_before": r.ops_before, "ops_after": r.ops_after, "fired": list(r.fired)}
                   for r in records if r.ops_before != r.ops_after or r.fired],
        "kernel_list": [{"kernel": c.kernel, "op": c.spec.op, "spec_key": c.spec.key(),
                         "source_ops": "+".join(c.source_ops)} for c in plan.calls],
        "peak_activation_bytes": plan.arena_bytes,
        "sum_planned_activation_bytes": plan.activation_bytes_total,
        "sum_unfused_activation_bytes": unfused.activation_bytes_total,
    }


def bert(batch: int, seq: int, layers: int) -> dict:
    graph = bert_encoder(batch, seq, layers)
    optimized, _ = run_passes(graph)
    plan = lower(optimized, "cpu")
    # A layer starts at its QKV GEMM (a linear reading a 3*768-wide weight).
    layer, owner = -1, {}
    for call in plan.calls:
        if call.spec.op == "linear" and call.spec.inputs[1].shape[0] == 3 * 768:
            layer += 1
        owner[call.source_ops] = f"layer{layer:02d}" if layer >= 0 else "mask (once)"
    result = report(f"BERT-base encoder, {layers} layers, batch {batch}, seq {seq}", graph, lambda s: owner[s])
    result["layer_kernel_sequence"] = [c.spec.op for c in plan.calls if owner[c.source_ops] == "layer00"]
    return result


def resnet(batch: int) -> dict:
    graph = resnet50(batch)
    convs = sum(op.kind == "conv2d" for op in graph.ops)

    def stage(sources: tuple[str, ...]) -> str:
        head = sources[0]
        return head.split(".")[0] if head.startswith("layer") else "stem/head"

    result = report(f"ResNet-50, batch {batch}, 224x224 NHWC", graph, stage)
    result["convs_in_graph"] = convs
    kinds = result["kernel_kinds"]
    # Every conv is one GEMM-like kernel: an implicit-GEMM conv, a pointwise conv run as a linear,
    # or the few-channel stem as im2col + linear (the fc head is the one linear that is no conv).
    result["conv_kernels"] = {"implicit-GEMM conv": kinds.get("conv2d", 0),
                              "GEMM (pointwise, or after im2col)": kinds.get("linear", 0) - 1,
                              "im2col": kinds.get("im2col", 0)}
    return result


def markdown(results: list[dict], date: str) -> str:
    lines = [f"# Planner fusion report ({date})", "",
             "Graphs built with kiln.builder in torch.export's shape (tests/passes/models.py); "
             "`bench/fusion_report.py` writes this file. Memory is the activation arena after "
             "liveness-based reuse, against the sum of all activations.", ""]
    for r in results:
        lines += [f"## {r['model']}", "",
                  f"- ops before passes: {r['ops_before']}; kernels after: {r['kernels']}",
                  f"- kernel kinds: {', '.join(f'{k} x{v}' for k, v in sorted(r['kernel_kinds'].items()))}",
                  f"- peak activation memory (arena): {r['peak_activation_bytes'] / MIB:.1f} MiB",
                  f"- sum of activations after fusion: {r['sum_planned_activation_bytes'] / MIB:.1f} MiB; "
                  f"of the unfused graph: {r['sum_unfused_activation_bytes'] / MIB:.1f} MiB", ""]
        if "layer_kernel_sequence" in r:
            lines += [f"- one layer: {' -> '.join(r['layer_kernel_sequence'])}", ""]
        if "conv_kernels" in r:
            split = ", ".join(f"{n} {k}" for k, n in r["conv_kernels"].items())
            lines += [f"- convs in graph: {r['convs_in_graph']}; their kernels: {split} "
                      "(each GEMM with its folded BN, ReLU and residual add)", ""]
        lines += ["| group | kernels |", "|---|---|"]
        lines += [f"| {k} | {v} |" for k, v in r["kernels_per_layer"].items()]
        lines += ["", "<details><summary>kernel list</summary>", "", "| kernel | op | spec key | source ops |",
                  "|---|---|---|---|"]
        lines += [f"| {k['kernel']} | {k['op']} | `{k['spec_key'][:16]}` | {k['source_ops']} |" for k in r["kernel_list"]]
        lines += ["", "</details>", ""]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--date", default="2026-11-29")
    p.add_argument("--layers", type=int, default=12)
    args = p.parse_args()
    results = [bert(64, 384, args.layers), resnet(64)]
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / f"fusion_{args.date}.json").write_text(json.dumps(results, indent=1) + "\n")
    (out / f"fusion_{args.date}.md").write_text(markdown(results, args.date))
    for r in results:
        print(f"{r['model']}: {r['ops_before']} ops -> {r['kernels']} kernels; "
              f"peak {r['peak_activation_bytes'] / MIB:.1f} MiB vs sum {r['sum_unfused_activation_bytes'] / MIB:.1f} MiB "
              f"unfused ({r['sum_planned_activation_bytes'] / MIB:.1f} MiB after fusion)")


if __name__ == "__main__":
    main()
