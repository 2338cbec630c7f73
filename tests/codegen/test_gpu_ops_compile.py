"""The gpu templates of the CNN/transformer op set compile and link for cuda:sm90,
cuda:sm80 and rocm:gfx90a: every op case of tests/support/op_cases.py (attention
aside: its own tests) in every dtype of the target, all in one graph.

Nothing runs here (no GPU): tests/gpu/test_ops_gpu.py runs the same cases on a
device. Each target's kernels go into one translation unit, so the whole file
costs three compiler runs (plus links), not one per kernel.
"""
from __future__ import annotations

import dataclasses
import re
import shutil
import subprocess

import pytest

from kiln.dtypes import DType
from kiln.ir import Constant, Graph, Op, Tensor
from tests.support import local_build as lb
from tests.support import op_cases

TARGETS = {
    "cuda:sm90": ("nvcc", [DType.F16, DType.BF16]),
    "cuda:sm80": ("nvcc", [DType.F16, DType.BF16]),
    "rocm:gfx90a": ("hipcc", [DType.F16]),
}
KINDS = {"conv2d", "pool2d", "reduce_sum", "reduce_mean", "reduce_max", "permute", "slice", "concat", "embedding",
         "cast", "copy", "matmul", "im2col", "patch_linear"}
# The portable kernels are what these files test; sm90's CUTLASS conv has its own tests.
SIMT = {"conv2d": {"block": 256}}
NON_ATTENTION = [(name, fn) for name, fn in op_cases.CASES if not name.startswith("attention")]


def merge_graphs(name: str, parts: list[tuple[str, Graph]]) -> Graph:
    """Several graphs as one, every tensor, constant and op name prefixed by its part's
    name, so that one build (one nvcc run) covers them all. Symbols are shared by name."""
    inputs: list[Tensor] = []
    outputs: list[str] = []
    constants: list[Constant] = []
    ops: list[Op] = []
    for prefix, g in parts:
        def rename(n: str, p: str = prefix) -> str:
            return f"{p}.{n}"
        inputs += [Tensor(rename(t.name), t.type) for t in g.inputs]
        outputs += [rename(o) for o in g.outputs]
        constants += [dataclasses.replace(c, name=rename(c.name)) for c in g.constants]
        ops += [op.replace(name=rename(op.name), inputs=tuple(map(rename, op.inputs)),
                           outputs=tuple(map(rename, op.outputs))) for op in g.ops]
    return Graph(name, tuple(inputs), tuple(outputs), tuple(constants), tuple(ops))


def all_cases_graph(dtypes: list[DType]) -> Graph:
    return merge_graphs("gpu_ops", [(f"{dt.value}.{name}", fn(dt)) for dt in dtypes for name, fn in NON_ATTENTION])


def _need(tool: str) -> None:
    if shutil.which(tool) is None:
        pytest.skip(f"{tool} is not installed")


@pytest.mark.parametrize("target_name", list(TARGETS))
def test_op_kernels_compile_and_link(tmp_path, target_name):
    tool, dtypes = TARGETS[target_name]
    _need(tool)
    graph = all_cases_graph(dtypes)
    built = lb.build_local(graph, target_name, tmp_path / "a", SIMT, single_tu=True)

    covered = {(c.spec.op, c.spec.outputs[0].dtype) for c in built.plan.calls}
    assert {(k, d) for k in KINDS for d in dtypes} <= covered, f"kernel kinds x dtypes compiled: {sorted(covered)}"
    # Every conv went through the direct kernel this file means to compile.
    assert all(built.configs[c.kernel] == SIMT["conv2d"] for c in built.plan.calls if c.spec.op == "conv2d")
    lib = built.dir / "libmodel.so"
    exported = subprocess.run(["nm", "-D", "--defined-only", str(lib)], capture_output=True, text=True,
                              check=True).stdout
    assert " T kiln_model_run\n" in exported
    source = next(iter(built.sources.values())).read_text()
    # The warp-shuffle reduction and the copy engine are what these kinds use.
    assert "KILN_SHFL_DOWN" in source and "KILN_MEMCPY_D2D" in source
    # The elementwise cases with rows of 16 and 24 take the 16-byte path.
    assert re.search(r"kiln_launch\(\w+_vec_kernel,", source)

