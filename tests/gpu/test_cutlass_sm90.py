"""CUTLASS 3.x sm90 GEMMs for linear, with the fused epilogues they take, on Hopper."""
from __future__ import annotations

import shutil
import subprocess

import pytest

from codegen_worker.backends import cutlass_sm90
from kiln.dtypes import DType
from kiln.ir import IntVar
from kiln.runtime import Model
from tests.support import local_build as lb

pytestmark = pytest.mark.gpu
TARGET = "cuda:sm90"
KINDS = ("plain", "bias", "gelu", "gelu_tanh", "silu", "sigmoid", "residual", "add_relu")


@pytest.mark.parametrize("dtype", [DType.F16, DType.BF16])
def test_linear_epilogues_on_tensor_cores(tmp_path, dtype):
    batch = IntVar("batch", 1, 4096)
    graph = lb.graph("cutlass", *[(lambda b, k=k: lb.add_linear(b, dtype, k, m=batch, n=256, k=128, p=f"{k}."))
                                  for k in KINDS])
    built = lb.build_local(graph, TARGET, tmp_path / "a")
    impls = {c.kernel: built.configs[c.kernel].get("impl") for c in built.plan.calls}
    assert set(impls.values()) == {"cutlass_sm90"}, impls
    assert "C7510" not in built.log
    model = Model(built.dir)
    lb.check_model(model, graph, 1e-2, [{"batch": 1}, {"batch": 77}, {"batch": 4096}])
    if shutil.which("cuobjdump"):
        sass = subprocess.run(["cuobjdump", "-sass", str(built.dir / "libmodel.so")], capture_output=True,
                              text=True).stdout
        assert "HGMMA" in sass, "no wgmma instructions in the GEMM"


def test_epilogue_shapes_outside_cutlass_stay_on_simt():
    from kiln.ops import EwInstr

    assert cutlass_sm90.match_epilogue((EwInstr("gelu", (0,)),), 1) == ("gelu", None)
    assert cutlass_sm90.match_epilogue((EwInstr("add", (1, 0)), EwInstr("relu", (2,))), 2) == ("relu", 1)
    assert cutlass_sm90.match_epilogue((EwInstr("mul", (0, 1)),), 2) is None
    assert cutlass_sm90.match_epilogue((EwInstr("gelu", (0,)), EwInstr("add", (2, 1))), 2) is None


@pytest.mark.parametrize("dtype", [DType.F16, DType.BF16])
@pytest.mark.parametrize("config", [cutlass_sm90.DEFAULT, cutlass_sm90.STREAMK,
                                    {"impl": "cutlass_sm90", "tile": [64, 128, 64], "cluster": [1, 1],
                                     "schedule": "pingpong"}], ids=["cooperative", "streamk", "pingpong"])
def test_batched_matmuls_on_tensor_cores(tmp_path, dtype, config):
    """matmul through CUTLASS, pinned (its default is still the SIMT kernel): b without batch
    dims folds a's batch into M; a and b with the same batch dims run as L GEMMs."""
    batch = IntVar("batch", 1, 64)
    graph = lb.graph("mm", lambda b: lb.add_matmul(b, dtype, "fold", batch, p="f."),
                     lambda b: lb.add_matmul(b, dtype, "batched", batch, p="b."))
    built = lb.build_local(graph, TARGET, tmp_path / "a", {"matmul": config})
    assert [built.configs[c.kernel].get("impl") for c in built.plan.calls] == ["cutlass_sm90"] * 2
    model = Model(built.dir)
    try:
        lb.check_model(model, graph, 1e-2, [{"batch": 1}, {"batch": 5}, {"batch": 64}])
    finally:
        model.close()
