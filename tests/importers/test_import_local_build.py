"""Imported models through the planner, the CPU kernels and the linker without a farm (tests/support/local_build),
run by kiln.runtime and matched to PyTorch. tests/farm/test_import_farm.py does the same through the farm."""
from __future__ import annotations

import io
import warnings

import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")

import kiln  # noqa: E402
from kiln.runtime import Model  # noqa: E402
from tests.support import torch_models  # noqa: E402
from tests.support.local_build import build_local, rel_err  # noqa: E402

Dim = torch.export.Dim


def _onnx(module, args, names: list[str], dynamic: dict) -> onnx.ModelProto:
    f = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, args, f, dynamo=False, opset_version=17, input_names=names, output_names=["out"],
                          dynamic_axes=dynamic)
    return onnx.load_from_string(f.getvalue())


@pytest.mark.parametrize("source", ["torch", "onnx"])
def test_resnet18_runs_on_cpu(source, tmp_path):
    net = torch_models.resnet18(num_classes=10)
    example = torch.randn(2, 3, 64, 64)
    if source == "torch":
        graph = kiln.from_torch(net, (example,), dynamic_shapes=({0: Dim("batch", min=1, max=2)},), name="r18")
    else:
        graph = kiln.from_onnx(_onnx(net, (example,), ["x"], {"x": {0: "batch"}}), dims={"batch": (1, 2)}, name="r18")
    model = Model(build_local(graph, "cpu", tmp_path, single_tu=True).dir)
    for batch in (1, 2):
        x = torch.randn(batch, 3, 64, 64, generator=torch.Generator().manual_seed(batch))
        (got,) = model.run({"x": x.numpy()}).values()
        assert rel_err(got, net(x).detach().numpy()) < 1e-4


@pytest.mark.parametrize("source", ["torch", "onnx"])
def test_bert_encoder_runs_on_cpu(source, tmp_path):
    net = torch_models.bert_encoder(hidden=64, heads=4, layers=2, vocab=1000)
    ids, mask = torch_models.bert_inputs(2, 16, 1000)
    if source == "torch":
        batch = Dim("batch", min=1, max=4)
        graph = kiln.from_torch(net, (ids, mask), dynamic_shapes=({0: batch}, {0: batch}), name="bert")
    else:
        dynamic = {"input_ids": {0: "batch"}, "attention_mask": {0: "batch"}}
        graph = kiln.from_onnx(_onnx(net, (ids, mask), ["input_ids", "attention_mask"], dynamic), dims={"batch": (1, 4)},
                               name="bert")
    model = Model(build_local(graph, "cpu", tmp_path, single_tu=True).dir)
    for batch in (1, 3):
        ids, mask = torch_models.bert_inputs(batch, 16, 1000, seed=batch)
        (got,) = model.run({"input_ids": ids.numpy(), "attention_mask": mask.numpy()}).values()
        assert rel_err(got, net(ids, mask).detach().numpy()) < 1e-4


@pytest.mark.parametrize("source", ["torch", "onnx"])
def test_vit_runs_on_cpu(source, tmp_path):
    # The patch conv over 3 channels into 32 runs as one patch_linear (im2col inside its GEMM; ViT-B/16's 768
    # channels stay im2col + GEMM); the class token is a broadcast concat input;
    # 17 tokens (16 patches + the class token) is no multiple of any attention block.
    torch.manual_seed(0)
    net = torch_models.ViT(image=32, patch=8, hidden=32, heads=2, layers=2, mlp=64, num_classes=10).eval()
    example = torch.randn(2, 3, 32, 32)
    if source == "torch":
        graph = kiln.from_torch(net, (example,), dynamic_shapes=({0: Dim("batch", min=1, max=4)},), name="vit")
    else:
        graph = kiln.from_onnx(_onnx(net, (example,), ["x"], {"x": {0: "batch"}}), dims={"batch": (1, 4)}, name="vit")
    built = build_local(graph, "cpu", tmp_path, single_tu=True)
    assert {"patch_linear", "concat", "attention"} <= set(built.ops())
    model = Model(built.dir)
    for batch in (1, 3):
        x = torch.randn(batch, 3, 32, 32, generator=torch.Generator().manual_seed(batch))
        (got,) = model.run({"x": x.numpy()}).values()
        assert rel_err(got, net(x).detach().numpy()) < 1e-4


@pytest.mark.parametrize("source", ["torch", "onnx"])
def test_bert_encoder_with_symbolic_batch_and_sequence(source, tmp_path):
    # position_ids[:, :seq] is a slice with a symbolic end, zeros_like(positions) a filled constant sliced to
    # seq, and mask[:, None, None, :] a reshape that moves seq: one artifact serves every (batch, seq).
    net = torch_models.bert_encoder(hidden=64, heads=4, layers=2, vocab=1000)
    ids, mask = torch_models.bert_inputs(2, 16, 1000)
    if source == "torch":
        batch, seq = Dim("batch", min=1, max=4), Dim("seq", min=2, max=32)
        graph = kiln.from_torch(net, (ids, mask), dynamic_shapes=({0: batch, 1: seq}, {0: batch, 1: seq}),
                                name="bert")
    else:
        dynamic = {"input_ids": {0: "batch", 1: "seq"}, "attention_mask": {0: "batch", 1: "seq"}}
        graph = kiln.from_onnx(_onnx(net, (ids, mask), ["input_ids", "attention_mask"], dynamic),
                               dims={"batch": (1, 4), "seq": (2, 32)}, name="bert")
    assert [str(d) for d in graph.inputs[0].type.shape] == ["batch[1..4]", "seq[2..32]"]
    built = build_local(graph, "cpu", tmp_path, single_tu=True)
    assert "attention" in built.ops()
    model = Model(built.dir)
    for batch, seq in ((1, 16), (3, 9), (2, 32), (4, 2)):
        ids, mask = torch_models.bert_inputs(batch, seq, 1000, seed=batch + seq)
        (got,) = model.run({"input_ids": ids.numpy(), "attention_mask": mask.numpy()}).values()
        assert got.shape == (batch, seq, 64)
        assert rel_err(got, net(ids, mask).detach().numpy()) < 1e-4, (batch, seq)
