"""The target registry: typed attributes, so no code grows target if-chains."""
from __future__ import annotations

from dataclasses import dataclass

from kiln.dtypes import DType


@dataclass(frozen=True)
class Target:
    name: str            # what users write: "cuda:sm90"
    family: str          # the backend plug-in: cpu / cuda / rocm
    arch: str            # x86_64, sm90, sm80, gfx90a, gfx940
    dtypes: frozenset[DType]
    description: str
    # Hardware limits that candidate configs are pruned against before anything
    # compiles: a config over any of them fails to launch or only spills.
    smem_per_block: int = 48 * 1024    # bytes of static shared memory (LDS) a block may declare
    opt_in_smem_per_block: int = 48 * 1024  # bytes of dynamic shared memory a block may opt in to
    max_threads_per_block: int = 1024
    max_threads_per_sm: int = 2048     # resident threads an SM (CU) holds: bounds a min-blocks launch bound
    warp_size: int = 32                # AMD CDNA runs 64-wide wavefronts
    max_register_tile: int = 32        # CPU GEMM accumulators (tm * tn): 16 SSE registers of 4 floats, half for loads

    @property
    def codegen_queue(self) -> str:
        return f"codegen.{self.family}"

    @property
    def device_kind(self) -> str:
        return f"{self.family}.{self.arch}"

    @property
    def profile_queue(self) -> str:
        return f"profile.{self.device_kind}"


# Integer tensors exist as embedding indices and cast sources (masks, ids).
_INDEX = frozenset({DType.I32, DType.I64, DType.BOOL})
_FLOATS = frozenset({DType.F32, DType.F16, DType.BF16}) | _INDEX
TARGETS: dict[str, Target] = {t.name: t for t in (
    Target("cpu", "cpu", "x86_64", frozenset({DType.F32, DType.F16}) | _INDEX, "x86-64 host code through g++"),
    Target("cuda:sm90", "cuda", "sm90", _FLOATS, "NVIDIA Hopper (H100/H200)", opt_in_smem_per_block=227 * 1024),
    Target("cuda:sm80", "cuda", "sm80", _FLOATS, "NVIDIA Ampere (A100)", opt_in_smem_per_block=163 * 1024),
    Target("rocm:gfx90a", "rocm", "gfx90a", frozenset({DType.F32, DType.F16}) | _INDEX, "AMD MI200 (compile-only here)",
           smem_per_block=64 * 1024, warp_size=64),
    Target("rocm:gfx940", "rocm", "gfx940", frozenset({DType.F32, DType.F16}) | _INDEX, "AMD MI300A (compile-only here)",
           smem_per_block=64 * 1024, warp_size=64),
)}


def get_target(name: str) -> Target:
    try:
        return TARGETS[name]
    except KeyError:
        raise ValueError(f"unknown target {name!r}; known targets: {', '.join(TARGETS)}") from None
