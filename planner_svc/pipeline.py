"""The lowering, as one list of named steps, each with its reason."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from kiln.ir import Graph
from kiln.plan import ExecutionPlan
from kiln.shapes import infer_types
from planner_svc.passes import (
    absorb_bias_adds,
    eliminate_common_subexpressions,
    eliminate_dead_code,
    fold_batchnorm,
    fold_constants,
    fuse_attention,
    fuse_elementwise_chains,
    fuse_gemm_epilogues,
    fuse_patch_linear,
    fuse_qkv_projections,
    fuse_residual_layernorm,
    gather_im2col_from_nchw,
    matmul_to_linear,
    pointwise_convs_to_linear,
    remove_noops,
    thin_convs_to_gemm,
)

Pass = Callable[[Graph], Graph]

PASSES: tuple[tuple[str, Pass, str], ...] = (
    ("dce", eliminate_dead_code, "no kernel for work nobody reads"),
    ("fold_constants", fold_constants, "transposed, reshaped or cast weights become plain constants"),
    ("remove_noops", remove_noops, "identity permutes/reshapes/casts and x*1, x+0 cost a kernel or a view each"),
    ("cse", eliminate_common_subexpressions, "compute a repeated op (or store a repeated constant) once"),
    ("matmul_to_linear", matmul_to_linear, "matmul by a weight is a linear: one GEMM form for later passes"),
    ("fold_batchnorm", fold_batchnorm, "batch norm has no kernel: into the conv's weights, else a multiply-add"),
    ("absorb_bias", absorb_bias_adds, "a per-channel constant add is the GEMM's bias"),
    ("fuse_attention", fuse_attention, "matmul-scale-mask-softmax-matmul is one fused attention kernel"),
    ("remove_noops_after_attention", remove_noops, "the head permutes attention's layout needs compose away"),
    ("cse_after_attention", eliminate_common_subexpressions, "a permute emitted twice is computed once"),
    ("dce_after_attention", eliminate_dead_code, "the replaced permutes and scores are dead"),
    ("fuse_qkv", fuse_qkv_projections, "Q, K and V projections of one input are one GEMM"),
    ("fuse_elementwise", fuse_elementwise_chains, "one pass over memory for a chain of pointwise ops"),
    ("fuse_gemm_epilogue", fuse_gemm_epilogues, "apply pointwise work to the GEMM accumulator in registers"),
    ("pointwise_conv", pointwise_convs_to_linear,
     "a 1x1 stride-1 conv over NHWC is a GEMM, which gets the persistent sm90 schedules conv lacks"),
    ("thin_conv_im2col", thin_convs_to_gemm,
     "a conv over few channels wastes most of an implicit GEMM's K tile: gather the taps, run a dense GEMM"),
    ("im2col_from_nchw", gather_im2col_from_nchw,
     "the taps can be gathered from the NCHW input itself: the edge permute's pass over memory goes"),
    ("patch_linear", fuse_patch_linear,
     "gather a thin conv's patches where they are multiplied: the im2col matrix is never stored"),
    ("fuse_residual_layernorm", fuse_residual_layernorm,
     "a residual add no GEMM took is read by its layernorm: one kernel, the sum never stored"),
    ("dce_after_fusion", eliminate_dead_code, "fusion can orphan constants"),
)


@dataclass(frozen=True)
class PassRecord:
    name: str
    why: str
    ops_before: int
    ops_after: int
    removed: tuple[str, ...]
    added: tuple[str, ...]
    # "kind name" of each added op: a fused op is named by the ops it replaces, joined by '+'.
    fired: tuple[str, ...] = ()
    constants_before: int = 0
    constants_after: int = 0


@dataclass
class PassContext:
    """Options for one pipeline run. Passes never read the environment."""

    disabled: frozenset[str] = frozenset()
    instruments: list[Callable[[str, Graph], None]] = field(default_factory=list)
    verify: bool = True


def run_passes(graph: Graph, ctx: PassContext | None = None) -> tuple[Graph, list[PassRecord]]:
    ctx = ctx or PassContext()
    records = []
    for name, fn, why in PASSES:
        if name in ctx.disabled:
            continue
        before = {op.name for op in graph.ops}
        new = fn(graph)
        if ctx.verify:
            infer_types(new)  # every pass must leave a well-typed graph
        after = {op.name for op in new.ops}
        added = [op for op in new.ops if op.name not in before]
        records.append(PassRecord(name, why, len(graph.ops), len(new.ops),
                                  tuple(sorted(before - after)), tuple(sorted(op.name for op in added)),
                                  tuple(f"{op.kind} {op.name}" for op in added),
                                  len(graph.constants), len(new.constants)))
        for instrument in ctx.instruments:
            instrument(name, new)
        graph = new
    return graph, records


def explain_lines(graph: Graph, records: list[PassRecord], plan: ExecutionPlan,
                  unfused: ExecutionPlan | None = None) -> list[str]:
    """What `kiln plan --explain` prints: each pass's fusions, the kernels with their
    KernelSpec keys, and the activation memory plan."""
    lines = []
    for rec in records:
        consts = (f", constants {rec.constants_before} -> {rec.constants_after}"
                  if rec.constants_before != rec.constants_after else "")
        lines.append(f"pass {rec.name:28s} {rec.ops_before:4d} -> {rec.ops_after:4d} ops{consts}   ({rec.why})")
        made = {n for fired in rec.fired for n in fired.split(" ", 1)[1].split("+")}
        lines += [f"    + {fired}" for fired in rec.fired]
        lines += [f"    - {n}" for n in rec.removed if n not in made]
    views = [b.name for b in plan.buffers if b.alias_of]  # reshapes, contiguous slices, in-place concat inputs
    lines.append(f"{len(graph.ops)} ops -> {len(plan.calls)} kernels, {len(views)} views (no kernel moves their bytes)")
    for call in plan.calls:
        lines.append(f"  {call.kernel:5s} {call.spec.op:18s} {call.spec.key()}  {'+'.join(call.source_ops)}")
    lines.append(f"activation memory: peak (arena) {plan.arena_bytes} bytes, "
                 f"sum of planned activations {plan.activation_bytes_total} bytes")
    if unfused is not None:
        lines.append(f"  sum of all activations of the unfused graph (one buffer per op output): "
                     f"{unfused.activation_bytes_total} bytes")
    return lines
