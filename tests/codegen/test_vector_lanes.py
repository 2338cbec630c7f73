"""Which fused elementwise kernels take the GPU's 16-byte path, and how each input is read there."""
from __future__ import annotations

from codegen_worker.backends import contexts, get_backend
from kiln.dtypes import DType
from planner_svc.lower import lower
from planner_svc.pipeline import run_passes
from tests.support import local_build as lb
from tests.support import op_cases


def _fused_spec(graph):
    (call,) = [c for c in lower(run_passes(graph)[0], "cuda:sm90").calls if c.spec.op == "fused_elementwise"]
    return call.spec


def _lanes(graph) -> tuple[int, list[tuple[tuple, str]]]:
    """(elements a thread, [(input shape, how it is read)] in kernel argument order)."""
    spec = _fused_spec(graph)
    ctx = contexts.op_context(get_backend("cuda"), spec)
    if ctx["vec"] == 1:
        return 1, []
    return ctx["vec"], [(tuple(d if isinstance(d, int) else "sym" for d in t.shape), lane)
                        for t, lane in zip(spec.inputs, ctx["lanes"], strict=True)]


def test_rows_of_24_move_16_bytes_with_each_input_along_or_across_the_row():
    vec, lanes = _lanes(op_cases.elementwise_vector_rows(DType.F16))
    assert vec == 8
    assert sorted(map(repr, lanes)) == sorted(map(repr, [(("sym", 5, 24), "row"), ((24,), "row"),
                                                          (("sym", 5, 24), "row"), (("sym", 5, 1), "one"),
                                                          ((), "one")]))
    vec32, _ = _lanes(op_cases.elementwise_vector_rows(DType.F32))
    assert vec32 == 4


def test_position_table_broadcast_over_the_batch_runs_along_the_row():
    vec, lanes = _lanes(op_cases.elementwise_vector_position_add(DType.BF16))
    assert vec == 8 and {lane for _, lane in lanes} == {"row"}


def test_rows_that_are_not_a_multiple_of_16_bytes_stay_scalar():
    chain = lb.graph("odd", lambda b: lb.add_pointwise_chain(b, DType.F16))  # rows of 37
    assert _lanes(chain)[0] == 1
    # Rows of 12 floats are 48 bytes (vec 4) but rows of 12 halves are 24 bytes: not a multiple of 8.
    twelve = lb.graph("twelve", lambda b: lb.add_pointwise_chain(b, DType.F16, shape=(5, 12)))
    assert _lanes(twelve)[0] == 1
    twelve32 = lb.graph("twelve32", lambda b: lb.add_pointwise_chain(b, DType.F32, shape=(5, 12)))
    assert _lanes(twelve32)[0] == 4
