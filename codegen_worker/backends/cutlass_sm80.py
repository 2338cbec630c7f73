"""Which linear kernels CUTLASS 2.x TensorOp GEMMs serve on Ampere (sm80), and with which configs.

The epilogue is CUTLASS's LinearCombinationGeneric, act(acc + beta * C), where C
is the bias (one row read with stride 0, so every output row adds it) or the
residual. A GEMM that adds both, or any other epilogue, stays on the SIMT
kernel. The activations and the epilogue matching are sm90's: the same programs
map onto the same functors.

Conv2d (NHWC, groups 1, symmetric padding, channels in 16-byte vectors) runs as
CUTLASS 2.x's implicit GEMM (optimized iterators, cp.async, mma.sync). sm80 has
no other tensor-core conv. On sm90 a conv may be pinned to it (it won ResNet-50's
64-channel 3x3 conv at batch 256, where the TMA warp-specialized kernel's
non-persistent schedule runs at 30% of the matrix rate), but the profiler does
not try it there. It is launched through Kiln's own entry, so it takes part in
programmatic dependent launch, but it waits before its prologue where CUTLASS
3.x's kernels set up first: in ResNet-50's graph at batch 1 the profiler's 2.x
picks (faster alone) still lost 3% (s13).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from codegen_worker.backends import cutlass_sm90 as sm90
from kiln.plan import KernelSpec

# tile: the CTA's M x N x K; warp: one warp's share of it (tile / warp = the CTA's 4 or 8 warps).
DEFAULT = {"impl": "cutlass_sm80", "tile": [128, 128, 32], "warp": [64, 64, 32], "stages": 3}
CANDIDATES = [
    DEFAULT,
    {"impl": "cutlass_sm80", "tile": [128, 256, 32], "warp": [64, 64, 32], "stages": 3},
    {"impl": "cutlass_sm80", "tile": [128, 128, 64], "warp": [64, 64, 64], "stages": 3},
    # Small M or narrow N (batch-1 transformers, 64-channel pointwise convs as GEMMs).
    {"impl": "cutlass_sm80", "tile": [64, 128, 32], "warp": [32, 64, 32], "stages": 4},
    {"impl": "cutlass_sm80", "tile": [128, 64, 32], "warp": [64, 32, 32], "stages": 4},
]


# Implicit-GEMM conv: M = pixels, N = output channels (64 in ResNet's first stage: narrow tiles), K = taps x C.
CONV_DEFAULT = {"impl": "cutlass_sm80", "tile": [128, 128, 32], "warp": [64, 64, 32], "stages": 3}
CONV_CANDIDATES = [
    CONV_DEFAULT,
    {"impl": "cutlass_sm80", "tile": [128, 64, 32], "warp": [64, 32, 32], "stages": 4},
    {"impl": "cutlass_sm80", "tile": [128, 64, 64], "warp": [64, 32, 64], "stages": 3},
    {"impl": "cutlass_sm80", "tile": [256, 64, 32], "warp": [64, 64, 32], "stages": 3},
    {"impl": "cutlass_sm80", "tile": [64, 64, 32], "warp": [32, 32, 32], "stages": 5},
]


@dataclass(frozen=True)
class EpiloguePlan:
    activation: str       # a functor template: cutlass::epilogue::thread::* or KilnGeluErf
    source: str | None    # what C holds: "bias", "residual" or nothing (beta = 0)
    source_arg: int | None


def plan_for(spec: KernelSpec) -> EpiloguePlan | None:
    """How CUTLASS 2.x computes this linear on sm80, or None when it cannot."""
    out = spec.outputs[0]
    if spec.op not in ("linear", "conv2d") or out.dtype not in sm90.TYPES \
            or any(t.dtype != out.dtype for t in spec.inputs):
        return None
    if spec.op == "conv2d":
        a = spec.attrs
        if a.groups != 1 or a.pads[0] != a.pads[2] or a.pads[1] != a.pads[3]:
            return None  # CUTLASS's problem size has one pad a side pair and no groups here
    k, n = spec.inputs[0].shape[-1], spec.inputs[1].shape[0]
    if not sm90.aligned_rows(k, n):
        return None  # 16-byte vector loads of A, B and C
    has_bias = spec.attrs.has_bias
    extra_start = 3 if has_bias else 2
    matched = sm90.match_epilogue(spec.attrs.epilogue, 1 + len(spec.inputs) - extra_start)
    if matched is None:
        return None
    act, residual = matched
    if residual is not None:
        if has_bias:
            return None  # C is one matrix: bias and residual together need a broadcast epilogue
        arg = extra_start + residual - 1
        if spec.inputs[arg].shape != out.shape:
            return None
        return EpiloguePlan(sm90.ACTIVATIONS[act], "residual", arg)
    return EpiloguePlan(sm90.ACTIVATIONS[act], "bias" if has_bias else None, 2 if has_bias else None)


def defaults(spec: KernelSpec) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    return (CONV_DEFAULT, CONV_CANDIDATES) if spec.op == "conv2d" else (DEFAULT, CANDIDATES)


def worth_trying(spec: KernelSpec, config: dict[str, Any]) -> bool:
    return sm90.not_wider_than_output(spec, config, defaults(spec)[0])


def context(spec: KernelSpec, config: dict[str, Any]) -> dict[str, Any]:
    plan = plan_for(spec)
    assert plan is not None, "config chosen for a spec CUTLASS cannot serve"
    return {"cutlass_type": sm90.TYPES[spec.outputs[0].dtype], "activation": plan.activation,
            "source": plan.source, "source_arg": plan.source_arg}


def template(spec: KernelSpec) -> str:
    return "gpu/conv2d_cutlass_sm80.j2" if spec.op == "conv2d" else "gpu/linear_cutlass_sm80.j2"
