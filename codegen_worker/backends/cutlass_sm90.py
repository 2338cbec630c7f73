"""Which linear and conv2d kernels CUTLASS's sm90 kernels serve, and with which configs.

Both (the GEMM and the implicit-GEMM conv) share one epilogue that computes
act(acc + bias + residual) in registers; epilogue programs of that shape map
onto it, anything else stays on the SIMT kernels.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from kiln.dtypes import DType
from kiln.ops import EwInstr
from kiln.plan import KernelSpec

_THREAD = "cutlass::epilogue::thread::"
# Both GELUs are Kiln's own functors. CUTLASS's erf GELU calls erff, which made BERT's FFN-up
# GEMM epilogue-bound (templates/gpu/gelu_erf.h); its tanh GELU takes tanh.approx, 11 bits,
# where PyTorch is accurate (templates/gpu/gelu_tanh.h).
ACTIVATIONS = {None: _THREAD + "Identity", "relu": _THREAD + "ReLu", "gelu": "KilnGeluErf",
               "gelu_tanh": "KilnGeluTanh", "silu": _THREAD + "SiLu", "sigmoid": _THREAD + "Sigmoid"}
TYPES = {DType.F16: "cutlass::half_t", DType.BF16: "cutlass::bfloat16_t"}
SCHEDULES = {
    "cooperative": ("cutlass::gemm::KernelTmaWarpSpecializedCooperative",
                    "cutlass::epilogue::TmaWarpSpecializedCooperative"),
    "pingpong": ("cutlass::gemm::KernelTmaWarpSpecializedPingpong", "cutlass::epilogue::TmaWarpSpecialized"),
}
DEFAULT = {"impl": "cutlass_sm90", "tile": [128, 128, 64], "cluster": [1, 1], "schedule": "cooperative"}
# Stream-K (CUTLASS's StreamKScheduler): the K loop is split across CTAs when the output
# tiles fill the SMs unevenly (BERT at batch 8: 432 tiles of 128x128 over 132 SMs is 3.3
# waves), and partial sums are fixed up in the workspace. The profiler decides where it pays;
# on the H200 it won no BERT-base or ViT-B/16 GEMM.
STREAMK = {"impl": "cutlass_sm90", "tile": [128, 128, 64], "cluster": [1, 1], "schedule": "cooperative",
           "scheduler": "streamk"}
CANDIDATES = [
    DEFAULT,
    {"impl": "cutlass_sm90", "tile": [128, 256, 64], "cluster": [1, 1], "schedule": "cooperative"},
    {"impl": "cutlass_sm90", "tile": [128, 128, 64], "cluster": [2, 1], "schedule": "cooperative"},
    {"impl": "cutlass_sm90", "tile": [64, 128, 64], "cluster": [1, 1], "schedule": "pingpong"},
    # Pingpong overlaps one warpgroup's epilogue with the other's mainloop: it pays where the
    # epilogue is long against a short K (BERT's FFN-up, K = 768, with an erf GELU per element).
    {"impl": "cutlass_sm90", "tile": [128, 128, 64], "cluster": [1, 1], "schedule": "pingpong"},
    # The same with each weight tile multicast to two CTAs of a cluster: half the L2 reads of B.
    {"impl": "cutlass_sm90", "tile": [128, 128, 64], "cluster": [2, 1], "schedule": "pingpong"},
    # Narrow outputs (ResNet's 64-channel pointwise convs run as GEMMs): half the waste of 128.
    {"impl": "cutlass_sm90", "tile": [128, 64, 64], "cluster": [1, 1], "schedule": "cooperative"},
    STREAMK,
]
# Implicit-GEMM conv: N is the output channels (64..2048 in ResNets), so narrower
# tiles matter. CUTLASS 4.2 has only the non-persistent warp-specialized
# schedule for sm90 conv ("persistent schedules not supported for conv yet").
CONV_SCHEDULES = {
    "ws": ("cutlass::conv::KernelImplicitTmaWarpSpecializedSm90", "cutlass::epilogue::TmaWarpSpecialized"),
}
MAX_FILTER = 7  # the largest filter side run on a GPU through the TMA im2col conv
CONV_DEFAULT = {"impl": "cutlass_sm90", "tile": [128, 128, 64], "cluster": [1, 1], "schedule": "ws"}
CONV_CANDIDATES = [
    CONV_DEFAULT,
    {"impl": "cutlass_sm90", "tile": [128, 64, 64], "cluster": [1, 1], "schedule": "ws"},
    {"impl": "cutlass_sm90", "tile": [64, 128, 64], "cluster": [1, 1], "schedule": "ws"},
    {"impl": "cutlass_sm90", "tile": [128, 256, 64], "cluster": [1, 1], "schedule": "ws"},
    {"impl": "cutlass_sm90", "tile": [128, 128, 64], "cluster": [2, 1], "schedule": "ws"},
]


def worth_trying(spec: KernelSpec, config: dict[str, Any]) -> bool:
    return not_wider_than_output(spec, config, defaults(spec)[0])


def not_wider_than_output(spec: KernelSpec, config: dict[str, Any], default: dict[str, Any]) -> bool:
    """Prune before compiling: a tile wider than the output's N (rounded up to 64)
    only computes padding. The default tile always stays: it is the fallback."""
    n = spec.outputs[0].shape[-1]
    if not isinstance(n, int) or config == default:
        return True
    return config["tile"][1] <= max(128, -(-n // 64) * 64)


def defaults(spec: KernelSpec) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    return (CONV_DEFAULT, CONV_CANDIDATES) if spec.op == "conv2d" else (DEFAULT, CANDIDATES)


@dataclass(frozen=True)
class EpiloguePlan:
    activation: str            # a cutlass::epilogue::thread functor
    residual_arg: int | None   # the kernel argument added with beta = 1


def match_epilogue(program: tuple[EwInstr, ...], n_values: int) -> tuple[str | None, int | None] | None:
    """(activation, residual value index) if the program is act?(v0 [+ r]), else None."""
    steps = list(program)
    residual, current = None, 0
    if steps and steps[0].op == "add" and 0 in steps[0].args and steps[0].args[0] != steps[0].args[1]:
        residual = steps[0].args[1] if steps[0].args[0] == 0 else steps[0].args[0]
        if residual >= n_values:
            return None  # adding an earlier result, not an input
        steps, current = steps[1:], n_values
    if not steps:
        return None, residual
    if len(steps) == 1 and steps[0].op in ACTIVATIONS and steps[0].args == (current,):
        return steps[0].op, residual
    return None


def matmul_batching(spec: KernelSpec) -> str | None:
    """How a matmul maps onto one CUTLASS GEMM: "fold" (b has no batch dims: a's batch
    folds into M), "batched" (a and b have the same batch dims: L = their product),
    or None (a broadcast between them, which the packed batch strides cannot express)."""
    a, b, out = spec.inputs[0], spec.inputs[1], spec.outputs[0]
    if b.rank == 2:
        return "fold"
    return "batched" if a.shape[:-2] == b.shape[:-2] == out.shape[:-2] else None


def aligned_rows(k: object, n: object) -> bool:
    """Static K and N, each a positive multiple of 8 halves (16 bytes). With K = 0 the
    mainloop would wait forever on a stage no producer fills."""
    return isinstance(k, int) and isinstance(n, int) and k > 0 and n > 0 and k % 8 == 0 and n % 8 == 0


def plan_for(spec: KernelSpec) -> EpiloguePlan | None:
    """How CUTLASS computes this linear, conv2d or matmul, or None when it cannot."""
    out = spec.outputs[0]
    if (spec.op not in ("linear", "conv2d", "matmul") or out.dtype not in TYPES
            or any(t.dtype != out.dtype for t in spec.inputs)):
        return None
    if spec.op == "matmul":
        k, n = spec.inputs[0].shape[-1], spec.inputs[1].shape[-1]
        if not aligned_rows(k, n) or matmul_batching(spec) is None:
            return None  # TMA needs 16-byte aligned rows of a (K) and of b and out (N)
        return EpiloguePlan(ACTIVATIONS[None], None)
    if spec.op == "linear":
        k, n = spec.inputs[0].shape[-1], spec.inputs[1].shape[0]
    else:
        if spec.attrs.groups != 1:
            return None  # CUTLASS's sm90 implicit GEMM has no grouped conv
        if max(spec.inputs[1].shape[1:3]) > MAX_FILTER:
            return None  # a 16x16 filter (ViT's patches, 8 channels) failed to launch on an H200
        k, n = spec.inputs[0].shape[-1], spec.inputs[1].shape[0]  # input and output channels
    if not aligned_rows(k, n):
        return None  # TMA needs 16-byte aligned rows
    extra_start = 3 if spec.attrs.has_bias else 2
    matched = match_epilogue(spec.attrs.epilogue, 1 + len(spec.inputs) - extra_start)
    if matched is None:
        return None
    act, residual = matched
    residual_arg = None
    if residual is not None:
        residual_arg = extra_start + residual - 1
        if spec.inputs[residual_arg].shape != out.shape:
            return None  # a broadcast residual is not a plain C matrix
    return EpiloguePlan(ACTIVATIONS[act], residual_arg)


def context(spec: KernelSpec, config: dict[str, Any]) -> dict[str, Any]:
    plan = plan_for(spec)
    assert plan is not None, "config chosen for a spec CUTLASS cannot serve"
    table = CONV_SCHEDULES if spec.op == "conv2d" else SCHEDULES
    kernel_schedule, epilogue_schedule = table[config["schedule"]]
    ctx = {"cutlass_type": TYPES[spec.outputs[0].dtype], "activation": plan.activation,
           "residual_arg": plan.residual_arg, "kernel_schedule": kernel_schedule,
           "epilogue_schedule": epilogue_schedule,
           "tile_scheduler": {"streamk": "cutlass::gemm::StreamKScheduler"}.get(config.get("scheduler", ""), "")}
    if spec.op == "conv2d":
        ctx["PB"], ctx["PR"] = spec.attrs.pads[2], spec.attrs.pads[3]
    if spec.op == "matmul":
        ctx["batching"] = matmul_batching(spec)
    return ctx


def template(spec: KernelSpec) -> str:
    return f"gpu/{spec.op}_cutlass_sm90.j2"
