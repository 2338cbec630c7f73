"""CUTLASS 3.x sm90 implicit-GEMM convs (NHWC) with fused epilogues, on Hopper."""
from __future__ import annotations

import shutil
import subprocess

import pytest

from kiln.dtypes import DType
from kiln.runtime import Model
from tests.support import local_build as lb
from tests.support.conv_cases import CASES, conv_graph

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("dtype", [DType.F16, DType.BF16])
def test_convs_on_tensor_cores_match_reference(tmp_path, dtype):
    graph = conv_graph(dtype)
    built = lb.build_local(graph, "cuda:sm90", tmp_path / "a")
    impls = [built.configs[c.kernel].get("impl") for c in built.plan.calls]
    assert impls == ["cutlass_sm90"] * len(CASES), impls
    assert "C7510" not in built.log
    model = Model(built.dir)
    try:
        lb.check_model(model, graph, 1e-2, [{"batch": 1}, {"batch": 5}])
    finally:
        model.close()
    if shutil.which("cuobjdump"):
        sass = subprocess.run(["cuobjdump", "-sass", str(built.dir / "libmodel.so")], capture_output=True,
                              text=True).stdout
        assert "HGMMA" in sass, "no wgmma instructions in the convs"
