"""Imported PyTorch and ONNX models compiled for the cpu target by the real farm, run, and matched to PyTorch."""
from __future__ import annotations

import io
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")

import kiln  # noqa: E402
from kiln.client import Client  # noqa: E402
from kiln.ir import Graph  # noqa: E402
from kiln.runtime import Model  # noqa: E402
from kiln.v1 import farm_pb2  # noqa: E402
from tests.support import torch_models  # noqa: E402

pytestmark = pytest.mark.slow
Dim = torch.export.Dim


def rel_err(got: np.ndarray, want: np.ndarray) -> float:
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    assert got.shape == want.shape
    return float(np.linalg.norm(got - want) / np.linalg.norm(want))


def onnx_export(module, args, names: list[str], dynamic: dict) -> onnx.ModelProto:
    f = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, args, f, dynamo=False, opset_version=17, input_names=names, output_names=["out"],
                          dynamic_axes=dynamic)
    return onnx.load_from_string(f.getvalue())


def compile_and_run(client: Client, graph: Graph, tmp_path, feeds: list[dict[str, np.ndarray]]) -> list[np.ndarray]:
    job = client.compile(graph, "cpu")
    assert job.state == farm_pb2.SUCCEEDED, job.error
    out = tmp_path / graph.name
    client.fetch(job.artifact, out)
    model = Model(out)
    return [model.run(f)[graph.outputs[0]] for f in feeds]


def test_resnet18_from_torch_and_onnx_on_cpu(client: Client, tmp_path):
    net = torch_models.resnet18(num_classes=10)
    example = torch.randn(2, 3, 64, 64)
    graphs = [
        kiln.from_torch(net, (example,), dynamic_shapes=({0: Dim("batch", min=1, max=2)},), name="resnet18_torch"),
        kiln.from_onnx(onnx_export(net, (example,), ["x"], {"x": {0: "batch"}}), dims={"batch": (1, 2)},
                       name="resnet18_onnx"),
    ]
    inputs = [torch.randn(b, 3, 64, 64, generator=torch.Generator().manual_seed(b)) for b in (1, 2)]
    want = [net(x).detach().numpy() for x in inputs]
    for graph in graphs:
        got = compile_and_run(client, graph, tmp_path, [{graph.inputs[0].name: x.numpy()} for x in inputs])
        for g, w in zip(got, want, strict=True):
            assert rel_err(g, w) < 1e-4, graph.name


def test_bert_encoder_from_torch_and_onnx_on_cpu(client: Client, tmp_path):
    # Batch and sequence both symbolic: the position slice's symbolic end crosses the wire as a DimList.
    net = torch_models.bert_encoder(hidden=64, heads=4, layers=2, vocab=1000)
    ids, mask = torch_models.bert_inputs(2, 16, 1000)
    batch, seq = Dim("batch", min=1, max=4), Dim("seq", min=2, max=32)
    dynamic = {"input_ids": {0: "batch", 1: "seq"}, "attention_mask": {0: "batch", 1: "seq"}}
    graphs = [
        kiln.from_torch(net, (ids, mask), dynamic_shapes=({0: batch, 1: seq}, {0: batch, 1: seq}), name="bert_torch"),
        kiln.from_onnx(onnx_export(net, (ids, mask), ["input_ids", "attention_mask"], dynamic),
                       dims={"batch": (1, 4), "seq": (2, 32)}, name="bert_onnx"),
    ]
    cases = [torch_models.bert_inputs(b, s, 1000, seed=b) for b, s in ((1, 16), (3, 9))]
    want = [net(i, m).detach().numpy() for i, m in cases]
    for graph in graphs:
        feeds = [{"input_ids": i.numpy(), "attention_mask": m.numpy()} for i, m in cases]
        got = compile_and_run(client, graph, tmp_path, feeds)
        for g, w in zip(got, want, strict=True):
            assert rel_err(g, w) < 1e-4, graph.name
