"""AMD through Debian's hipcc (HIP 5.2, clang 15). Compile-only here: no AMD GPU."""
from __future__ import annotations

import functools
import os
from pathlib import Path

from codegen_worker.backends.base import GPU_BLOCK_OPS, PATCH_LINEAR_DEFAULT, GpuBackend, first_line
from kiln.dtypes import DType
from kiln.targets import Target


class RocmBackend(GpuBackend):
    family = "rocm"
    template_dir = "gpu"
    source_suffix = ".hip"
    prelude_file = "prelude_hip.h"
    host_prelude = "#include <hip/hip_runtime.h>"
    api = "hip"
    types = {DType.F32: "float", DType.F16: "kiln_f16", DType.I32: "int32_t", DType.I64: "int64_t", DType.BOOL: "bool"}
    default_configs = {"fused_elementwise": {"block": 256}, "linear": {"tile": 16}, "layernorm": {"block": 256},
                       "softmax": {"block": 256},
                       **{op: {"block": 256} for op in GPU_BLOCK_OPS}, "attention": {"block_q": 64, "block_k": 64},
                       "patch_linear": PATCH_LINEAR_DEFAULT}

    def compiler_env(self) -> dict[str, str]:
        # nvcc is on the same machines, and hipcc would pick the NVIDIA platform.
        return {**os.environ, "HIP_PLATFORM": "amd"}

    @functools.cache  # noqa: B019
    def toolchain_version(self) -> str:
        return first_line(["dpkg-query", "-W", "-f", "hipcc ${Version}", "hipcc"])

    def flags(self, target: Target) -> list[str]:
        return ["-std=c++17", "-O3", "-DNDEBUG", "-fPIC", f"--offload-arch={target.arch}"]

    def compile_object_cmd(self, target: Target, src: Path, out: Path) -> list[str]:
        return ["hipcc", *self.flags(target), "-x", "hip", "-c", str(src), "-o", str(out)]

    def link_cmd(self, target: Target, objects: list[Path], out: Path) -> list[str]:
        return ["hipcc", "-shared", "-fPIC", f"--offload-arch={target.arch}", "-o", str(out), *map(str, objects)]
