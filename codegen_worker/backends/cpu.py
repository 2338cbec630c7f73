"""x86-64 through g++: runs everywhere, so CI exercises the whole path."""
from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

from codegen_worker.backends.base import Backend, first_line
from kiln.dtypes import DType
from kiln.plan import KernelSpec
from kiln.targets import Target


class CpuBackend(Backend):
    family = "cpu"
    template_dir = "cpu"
    source_suffix = ".cc"
    prelude_file = "prelude.h"
    types = {DType.F32: "float", DType.F16: "kiln_f16", DType.I32: "int32_t", DType.I64: "int64_t", DType.BOOL: "bool"}
    default_configs = {"fused_elementwise": {}, "linear": {"tm": 4, "tn": 4}, "layernorm": {}, "softmax": {},
                       **{op: {} for op in ("conv2d", "pool2d", "reduce_sum", "reduce_mean", "reduce_max", "permute",
                                            "slice", "concat", "embedding", "cast", "copy", "matmul", "attention", "pad",
                                            "im2col", "patch_linear")}}
    candidate_table = {"linear": [{"tm": 1, "tn": 1}, {"tm": 2, "tn": 8}, {"tm": 4, "tn": 8}, {"tm": 8, "tn": 4}]}

    def fits(self, spec: KernelSpec, target: Target, config: dict[str, Any]) -> bool:
        # Accumulators past the register file spill to the stack on every k: such a tile only loses.
        return int(config.get("tm", 1)) * int(config.get("tn", 1)) <= target.max_register_tile

    @functools.cache  # noqa: B019  (one backend object per process)
    def toolchain_version(self) -> str:
        return first_line(["g++", "--version"])

    def flags(self, target: Target) -> list[str]:
        return ["-std=c++17", "-O3", "-fPIC", "-march=x86-64-v2", "-fno-math-errno"]

    def compile_object_cmd(self, target: Target, src: Path, out: Path) -> list[str]:
        return ["g++", *self.flags(target), "-c", str(src), "-o", str(out)]

    def link_cmd(self, target: Target, objects: list[Path], out: Path) -> list[str]:
        return ["g++", "-shared", "-fPIC", "-o", str(out), *map(str, objects)]
