"""NVIDIA through nvcc; static cudart, so the artifact needs only the driver."""
from __future__ import annotations

import functools
from pathlib import Path

from codegen_worker.backends.base import Backend, first_line
from kiln.dtypes import DType
from kiln.targets import Target

_GENCODE = {"sm90": "arch=compute_90a,code=sm_90a", "sm80": "arch=compute_80,code=sm_80"}


class CudaBackend(Backend):
    family = "cuda"
    template_dir = "gpu"
    source_suffix = ".cu"
    prelude_file = "prelude_cuda.h"
    host_prelude = "#include <cuda_runtime.h>"
    api = "cuda"
    types = {DType.F32: "float", DType.F16: "__half", DType.BF16: "__nv_bfloat16"}
    default_configs = {"fused_elementwise": {"block": 256}, "linear": {"tile": 16}, "layernorm": {"block": 256},
                       "softmax": {"block": 256}}
    candidate_table = {"linear": [{"tile": 32}], "fused_elementwise": [{"block": 128}, {"block": 512}]}

    @functools.cache  # noqa: B019
    def toolchain_version(self) -> str:
        return first_line(["nvcc", "--version"], last=True)

    def flags(self, target: Target) -> list[str]:
        # -DNDEBUG matters: without it CUTLASS wgmma kernels serialise (C7510).
        return ["-std=c++17", "-O3", "-DNDEBUG", "--expt-relaxed-constexpr", "-Xcompiler", "-fPIC",
                "-gencode", _GENCODE[target.arch]]

    def compile_object_cmd(self, target: Target, src: Path, out: Path) -> list[str]:
        return ["nvcc", *self.flags(target), "-c", str(src), "-o", str(out)]

    def link_cmd(self, target: Target, objects: list[Path], out: Path) -> list[str]:
        return ["nvcc", "-shared", "-Xcompiler", "-fPIC", "-gencode", _GENCODE[target.arch],
                "-cudart", "static", "-o", str(out), *map(str, objects)]
