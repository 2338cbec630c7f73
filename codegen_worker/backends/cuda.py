"""NVIDIA through nvcc; static cudart, so the artifact needs only the driver."""
from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any

from codegen_worker.backends import cutlass_sm80, cutlass_sm90
from codegen_worker.backends.base import (
    CONV_HALO,
    GPU_BLOCK_OPS,
    PATCH_LINEAR_DEFAULT,
    TEMPLATES,
    GpuBackend,
    first_line,
    template_env,
)
from kiln.dtypes import DType
from kiln.plan import KernelSpec
from kiln.targets import Target

# sm80 also embeds its PTX: an Ampere artifact then runs on later GPUs (Hopper JIT-compiles it),
# which is how its CUTLASS 2.x kernels are checked on the H100/H200 the project has.
_GENCODE = {"sm90": "arch=compute_90a,code=sm_90a", "sm80": "arch=compute_80,code=[sm_80,compute_80]"}
# CUTLASS serves linear and conv2d on both. On sm90 a conv may be pinned to 2.x's implicit GEMM, but the profiler
# does not try it: CUTLASS launches its 2.x kernels itself, outside programmatic dependent launch, and inside a
# replayed graph that cost ResNet-50 more at batch 1 than the kernels saved (bench/results/models_h200_2026-11-30_s10.md).
_CUTLASS = {"sm90": cutlass_sm90, "sm80": cutlass_sm80}
# Hopper builds launch every kernel for programmatic dependent launch (grid_dependency.h);
# CUTLASS's sm90 GEMMs then wait on their predecessor through its own GDC hooks.
_DEFINES = {"sm90": ["-DKILN_GRID_DEPENDENCY", "-DCUTLASS_ENABLE_GDC_FOR_SM90"], "sm80": []}


class CudaBackend(GpuBackend):
    family = "cuda"
    template_dir = "gpu"
    source_suffix = ".cu"
    prelude_file = "prelude_cuda.h"
    host_prelude = "#include <cuda_runtime.h>"
    api = "cuda"
    types = {DType.F32: "float", DType.F16: "__half", DType.BF16: "__nv_bfloat16",
             DType.I32: "int32_t", DType.I64: "int64_t", DType.BOOL: "bool"}
    default_configs = {"fused_elementwise": {"block": 256}, "linear": {"tile": 16}, "layernorm": {"block": 256},
                       "softmax": {"block": 256},
                       **{op: {"block": 256} for op in GPU_BLOCK_OPS}, "attention": {"block_q": 64, "block_k": 64},
                       "patch_linear": PATCH_LINEAR_DEFAULT}
    candidate_table = {"linear": [{"tile": 32}], "patch_linear": [{"block_m": 128, "row_tiles": True},
                                                                        {"block_m": 64, "row_tiles": True},
                                                                        {"block_m": 128}, {"block_m": 32}],
                       "fused_elementwise": [{"block": 128}, {"block": 512}],
                       # Hopper's warpgroup MMA first: fits() drops these on every other target.
                       "attention": [{"block_q": 128, "block_k": 64, "wgmma": True, "overlap": True},
                                     # At most 128 registers: two 256-thread CTAs an SM.
                                     {"block_q": 128, "block_k": 64, "wgmma": True, "min_blocks": 2},
                                     {"block_q": 128, "block_k": 64, "wgmma": True, "overlap": True,
                                      "min_blocks": 2},
                                     {"block_q": 128, "block_k": 64}, {"block_q": 64, "block_k": 32},
                                     {"block_q": 128, "block_k": 32}, {"block_q": 64, "block_k": 128},
                                     # 32 rows a warp: each K/V fragment feeds two mma row tiles.
                                     {"block_q": 128, "block_k": 64, "warp_rows": 32},
                                     {"block_q": 64, "block_k": 64, "warp_rows": 32},
                                     # At most 96 registers, 5 CTAs an SM (ptxas spills ~50 bytes at D = 64).
                                     {"block_q": 64, "block_k": 32, "min_blocks": 5},
                                     # Lean: Q and the mask read from shared memory where used, two K/V stages
                                     # in dynamic shared memory (s12, H200: within 2% of the best mma.sync
                                     # config at BERT's shapes; its 32 x 128 and 16-row variants were slower).
                                     {"block_q": 128, "block_k": 64, "warp_rows": 32, "lean": True, "stages": 2},
                                     # Warp-specialized and persistent: a producer warpgroup fills the K/V ring,
                                     # three consumer warpgroups (s12, H200: BERT's masked attention at batch 32
                                     # and 64 fastest, 6% under the best mma.sync config; with overlap, batch 8
                                     # unmasked by 1%; two consumer warpgroups lost). 192x128 with overlap won
                                     # two small rows by 1-2% but spills up to 440 bytes on other masks: left out.
                                     {"block_q": 192, "block_k": 64, "wgmma": True, "producer": True, "stages": 3},
                                     {"block_q": 192, "block_k": 128, "wgmma": True, "producer": True, "stages": 2},
                                     {"block_q": 192, "block_k": 64, "wgmma": True, "producer": True, "stages": 4,
                                      "overlap": True}]}
    # Attention keeps its eight mma.sync configs and six wgmma ones beside the default.
    op_max_candidates = {"attention": 15}

    @functools.cache  # noqa: B019
    def toolchain_version(self) -> str:
        # CUTLASS headers shape the bytes of every sm90 GEMM: part of the toolchain.
        return f"{first_line(['nvcc', '--version'], last=True)}; cutlass {_cutlass_version()}"

    def flags(self, target: Target) -> list[str]:
        # -DNDEBUG matters: without it CUTLASS wgmma kernels serialise (C7510).
        return ["-std=c++17", "-O3", "-DNDEBUG", "--expt-relaxed-constexpr", "-Xcompiler", "-fPIC",
                *_DEFINES[target.arch], "-gencode", _GENCODE[target.arch]]

    def compile_object_cmd(self, target: Target, src: Path, out: Path) -> list[str]:
        # Include paths are kept out of flags(): object keys never hash a path.
        return ["nvcc", *self.flags(target), *_cutlass_includes(), "-c", str(src), "-o", str(out)]

    def link_cmd(self, target: Target, objects: list[Path], out: Path) -> list[str]:
        return ["nvcc", "-shared", "-Xcompiler", "-fPIC", "-gencode", _GENCODE[target.arch],
                "-cudart", "static", "-o", str(out), *map(str, objects)]

    @property
    def prelude(self) -> str:
        return super().prelude + (TEMPLATES / self.template_dir / "grid_dependency.h").read_text()

    # --- CUTLASS GEMMs (linear; sm90 also implicit-GEMM conv2d) ------------------
    def _cutlass(self, spec: KernelSpec, target: Target) -> bool:
        lib = _CUTLASS.get(target.arch)
        return lib is not None and lib.plan_for(spec) is not None

    def default_config(self, spec: KernelSpec, target: Target) -> dict[str, Any]:
        if self._cutlass(spec, target):
            return dict(cutlass_sm90.defaults(spec)[0] if target.arch == "sm90" else cutlass_sm80.defaults(spec)[0])
        return super().default_config(spec, target)

    def candidate_configs(self, spec: KernelSpec, target: Target) -> list[dict[str, Any]]:
        if self._cutlass(spec, target):
            table = cutlass_sm90.defaults(spec)[1] if target.arch == "sm90" else cutlass_sm80.defaults(spec)[1]
            # Kiln's own 3x3 conv beside CUTLASS's, where it applies (fits says where).
            halo = [dict(CONV_HALO)] if spec.op == "conv2d" else []
            return self.prune(spec, target, [dict(c) for c in table] + halo)
        return super().candidate_configs(spec, target)

    def fits(self, spec: KernelSpec, target: Target, config: dict[str, Any]) -> bool:
        if "impl" in config:
            if target.arch == "sm90" and spec.op == "conv2d" and config["impl"] == "cutlass_sm80":
                # mma.sync runs on Hopper too: Ampere's implicit GEMM may be pinned there (bench/conv_ab.py).
                return cutlass_sm80.plan_for(spec) is not None and cutlass_sm80.worth_trying(spec, config)
            lib = _CUTLASS.get(target.arch)
            return (config["impl"] == f"cutlass_{target.arch}" and self._cutlass(spec, target)
                    and lib.worth_trying(spec, config))
        return super().fits(spec, target, config)

    def render_kernel(self, spec: KernelSpec, config: dict[str, Any], fn: str) -> str:
        if "impl" in config:  # "cutlass_sm90" or "cutlass_sm80"
            lib = _CUTLASS[config["impl"].removeprefix("cutlass_")]
            ctx = self._context(spec, config, fn) | lib.context(spec, config)
            return template_env().get_template(lib.template(spec)).render(**ctx)
        return super().render_kernel(spec, config, fn)


@functools.cache
def _cutlass_root() -> Path:
    """The nvidia-cutlass wheel's headers, or KILN_CUTLASS_DIR on machines without the wheel."""
    override = os.environ.get("KILN_CUTLASS_DIR")
    if override:
        return Path(override)
    import cutlass_library

    return Path(cutlass_library.__file__).resolve().parent / "source"


@functools.cache
def _cutlass_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    # A header copy (KILN_CUTLASS_DIR, e.g. on a GPU box without the wheel) names its
    # version in VERSION, so objects built there get the same keys as here.
    override = os.environ.get("KILN_CUTLASS_DIR")
    if override and (Path(override) / "VERSION").is_file():
        return (Path(override) / "VERSION").read_text().strip()
    try:
        return version("nvidia-cutlass")
    except PackageNotFoundError:
        return "absent"


def _cutlass_includes() -> list[str]:
    try:
        root = _cutlass_root()
    except ImportError:
        return []
    return [f"-I{root / 'include'}", f"-I{root / 'tools' / 'util' / 'include'}"]
