"""CUTLASS 2.x TensorOp GEMMs of a cuda:sm80 artifact, run on Hopper.

No Ampere card is at hand: the sm80 artifact embeds its compute_80 PTX next to
the sm_80 code, so the H100/H200 JIT-compiles it and runs the same kernels
(cp.async, ldmatrix, mma.sync) an A100 would run from the SASS.
"""
from __future__ import annotations

import pytest

from kiln.ir import IntVar
from kiln.runtime import Model
from tests.codegen.test_cutlass_compile import SM80_KINDS
from tests.support import local_build as lb

pytestmark = pytest.mark.gpu


def test_sm80_artifact_gemms_match_reference_on_hopper(tmp_path):
    batch = IntVar("batch", 1, 4096)
    graph = lb.graph("sm80", *[(lambda b, k=k, dt=dt: lb.add_linear(b, dt, k, m=batch, n=256, k=128, p=f"{k}{dt.value}."))
                               for k, dt in SM80_KINDS])
    built = lb.build_local(graph, "cuda:sm80", tmp_path / "a")
    assert {built.configs[c.kernel].get("impl") for c in built.plan.calls} == {"cutlass_sm80"}
    model = Model(built.dir)
    try:
        errors = lb.check_model(model, graph, 1e-2, [{"batch": 1}, {"batch": 77}, {"batch": 4096}])
        print(f"\nsm80 artifact, rel errors vs float64: {[f'{e:.2e}' for e in errors]}")
    finally:
        model.close()

