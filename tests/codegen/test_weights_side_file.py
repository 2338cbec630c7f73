"""Weights above build.SIDE_FILE_BYTES live in weights.bin beside libmodel.so."""
from __future__ import annotations

import pytest

from codegen_worker import build
from kiln.dtypes import DType
from kiln.runtime import Model, RunError
from tests.support import graphs
from tests.support import local_build as lb


def test_large_weights_go_to_a_side_file_and_load_from_it(tmp_path, monkeypatch):
    monkeypatch.setattr(build, "SIDE_FILE_BYTES", 4096)  # the mlp's ~66 KB of weights are "large" here
    graph = graphs.mlp(hidden=64, ffn=128, dtype=DType.F32, name="side")
    built = lb.build_local(graph, "cpu", tmp_path / "a")
    assert sorted(f.path for f in built.manifest().files) == ["libmodel.so", "weights.bin"]
    weights = (built.dir / "weights.bin").stat().st_size
    assert weights > 4096
    assert (built.dir / "libmodel.so").stat().st_size < weights  # the library does not carry them too
    model = Model(built.dir)
    try:
        lb.check_model(model, graph, lb.TOLERANCE["cpu"][DType.F32], [{"batch": 3}])
    finally:
        model.close()


def test_small_weights_stay_embedded(tmp_path):
    built = lb.build_local(graphs.mlp(hidden=32, ffn=64, name="embedded"), "cpu", tmp_path / "a")
    assert [f.path for f in built.manifest().files] == ["libmodel.so"]


def test_a_tampered_side_file_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(build, "SIDE_FILE_BYTES", 4096)
    built = lb.build_local(graphs.mlp(hidden=64, ffn=128, name="tampered"), "cpu", tmp_path / "a")
    path = built.dir / "weights.bin"
    path.write_bytes(path.read_bytes()[:-8])
    with pytest.raises(RunError, match="weights.bin"):
        Model(built.dir)
