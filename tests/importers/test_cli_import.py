"""`kiln plan` / `kiln compile` accept .pt2 and .onnx models (plan runs the planner locally: no farm needed)."""
from __future__ import annotations

import warnings

import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")

from kiln.cli import main  # noqa: E402
from tests.support import torch_models  # noqa: E402


def test_plan_a_pt2_program(tmp_path, capsys):
    net = torch_models.bert_encoder(hidden=64, heads=4, layers=2, vocab=1000)
    ids, mask = torch_models.bert_inputs(2, 16, 1000)
    batch = torch.export.Dim("batch", min=1, max=4)
    path = tmp_path / "bert.pt2"
    torch.export.save(torch.export.export(net, (ids, mask), dynamic_shapes=({0: batch}, {0: batch})), str(path))
    assert main(["plan", str(path), "--target", "cpu"]) == 0
    out = capsys.readouterr().out
    assert " kernels; arena " in out and "linear" in out and "layernorm" in out


def test_plan_an_onnx_file_with_a_dim_range(tmp_path, capsys):
    net = torch_models.resnet18(num_classes=10)
    path = tmp_path / "resnet18.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (torch.randn(1, 3, 32, 32),), str(path), dynamo=False, opset_version=17,
                          input_names=["x"], dynamic_axes={"x": {0: "n"}})
    assert main(["plan", str(path), "--target", "cpu"]) == 2
    assert "dims={'name': (min, max)} for x[0] (n)" in capsys.readouterr().err
    assert main(["plan", str(path), "--target", "cpu", "--dim", "n=1:2"]) == 0
    out = capsys.readouterr().out
    assert "conv2d" in out and "pool2d" in out
