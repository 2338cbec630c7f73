"""kiln.from_onnx: ONNX exports of the same torch.nn models, and hand-built graphs, matched to their reference."""
from __future__ import annotations

import io
import warnings
from collections import Counter

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402
from onnx.reference import ReferenceEvaluator  # noqa: E402

import kiln  # noqa: E402
from kiln import reference  # noqa: E402
from kiln.importers import UnsupportedOps  # noqa: E402
from kiln.ir import IntVar  # noqa: E402
from tests.importers.conftest import rel_err  # noqa: E402
from tests.support import torch_models  # noqa: E402


def export(module, args, opset: int, names: list[str], dynamic: dict | None = None, **kwargs) -> onnx.ModelProto:
    f = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        torch.onnx.export(module, args, f, dynamo=False, opset_version=opset, input_names=names,
                          output_names=["out"], dynamic_axes=dynamic, **kwargs)
    return onnx.load_from_string(f.getvalue())


@pytest.fixture(scope="module")
def resnet18():
    return torch_models.resnet18(num_classes=10)


@pytest.fixture(scope="module")
def bert():
    return torch_models.bert_encoder(hidden=64, heads=4, layers=2, vocab=1000)


def test_resnet18_matches_pytorch_with_symbolic_batch(resnet18):
    model = export(resnet18, (torch.randn(2, 3, 64, 64),), 17, ["x"], {"x": {0: "batch"}, "out": {0: "batch"}})
    graph = kiln.from_onnx(model, dims={"batch": (1, 4)})
    assert graph.inputs[0].type.shape == (IntVar("batch", 1, 4), 3, 64, 64)
    assert Counter(op.kind for op in graph.ops)["permute"] == 1
    x = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    (got,) = reference.run(graph, {"x": x.numpy()}).values()
    assert rel_err(got, resnet18(x).detach().numpy()) < 1e-4


def test_resnet18_with_batch_norm_nodes_kept(resnet18, tmp_path):
    # PRESERVE keeps BatchNormalization nodes (the default export folds them into the convs).
    x = torch.randn(2, 3, 64, 64)
    model = export(resnet18, (x,), 13, ["x"], training=torch.onnx.TrainingMode.PRESERVE, do_constant_folding=False)
    assert Counter(n.op_type for n in model.graph.node)["BatchNormalization"] == 20
    path = tmp_path / "resnet18.onnx"
    onnx.save(model, str(path))
    graph = kiln.from_onnx(path)
    assert graph.name == "resnet18" and Counter(op.kind for op in graph.ops)["batchnorm"] == 20
    (got,) = reference.run(graph, {"x": x.numpy()}).values()
    assert rel_err(got, resnet18(x).detach().numpy()) < 1e-4


def test_vit_matches_pytorch_with_symbolic_batch():
    # Expand(Shape-derived batch) of the class token into a Concat: the concat repeats it.
    torch.manual_seed(0)
    vit = torch_models.ViT(image=32, patch=8, hidden=32, heads=2, layers=2, mlp=64, num_classes=10).eval()
    model = export(vit, (torch.randn(2, 3, 32, 32),), 17, ["x"], {"x": {0: "batch"}, "out": {0: "batch"}})
    assert "Expand" in {n.op_type for n in model.graph.node}
    graph = kiln.from_onnx(model, dims={"batch": (1, 8)})
    assert graph.inputs[0].type.shape == (IntVar("batch", 1, 8), 3, 32, 32)
    for batch in (3, 1):
        x = torch.randn(batch, 3, 32, 32, generator=torch.Generator().manual_seed(batch))
        (got,) = reference.run(graph, {"x": x.numpy()}).values()
        assert rel_err(got, vit(x).detach().numpy()) < 1e-4


@pytest.mark.parametrize("opset", [13, 17])
def test_bert_encoder_matches_pytorch(bert, opset):
    # Opset 13 spells layer norm as ReduceMean/Sub/Pow/Sqrt/Div; 17 has LayerNormalization.
    ids, mask = torch_models.bert_inputs(2, 16, 1000)
    dynamic = {"input_ids": {0: "batch"}, "attention_mask": {0: "batch"}, "out": {0: "batch"}}
    model = export(bert, (ids, mask), opset, ["input_ids", "attention_mask"], dynamic)
    graph = kiln.from_onnx(model, dims={"batch": (1, 8)})
    kinds = Counter(op.kind for op in graph.ops)
    assert kinds["layernorm"] == (5 if opset == 17 else 0) and kinds["linear"] == 12
    assert graph.inputs[0].type.shape == (IntVar("batch", 1, 8), 16)
    ids, mask = torch_models.bert_inputs(4, 16, 1000, seed=11)
    (got,) = reference.run(graph, {"input_ids": ids.numpy(), "attention_mask": mask.numpy()}).values()
    assert rel_err(got, bert(ids, mask).detach().numpy()) < 1e-4


def test_dynamic_dims_need_a_range(bert):
    ids, mask = torch_models.bert_inputs(2, 16, 1000)
    model = export(bert, (ids, mask), 17, ["input_ids", "attention_mask"], {"input_ids": {0: "batch"}})
    with pytest.raises(ValueError, match=r"dims=\{'name': \(min, max\)\} for input_ids\[0\] \(batch\)"):
        kiln.from_onnx(model)


def _model(nodes, inputs, outputs, initializers=(), opset: int = 17) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", inputs, outputs, list(initializers))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def test_opsets_outside_the_range_are_refused():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])
    with pytest.raises(ValueError, match="opset 12 is not supported: Kiln imports opsets 13 to"):
        kiln.from_onnx(_model([helper.make_node("Relu", ["x"], ["y"])], [x], [y], opset=12))


def test_unsupported_ops_are_listed_with_counts():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    nodes = [
        helper.make_node("Einsum", ["x", "x"], ["e1"], equation="ij,jk->ik"),
        helper.make_node("Relu", ["e1"], ["r"]),
        helper.make_node("Einsum", ["r", "x"], ["e2"], equation="ij,jk->ik"),
        helper.make_node("NonZero", ["x"], ["nz"]),
        helper.make_node("Add", ["e2", "x"], ["y"]),
    ]
    with pytest.raises(UnsupportedOps) as info:
        kiln.from_onnx(_model(nodes, [x], [y]))
    assert info.value.ops == {"Einsum": (2, "node 'e1'"), "NonZero": (1, "node 'nz'")}
    assert "Einsum: 2, first at node 'e1'" in str(info.value)


def test_standard_ops_match_onnx_reference():
    """Gemm(transB), Split, Slice, Gather, Transpose, Concat, ReduceMean, Pow/Sqrt/Div, Cast, Constant, Softmax,
    Gelu, and a Shape-driven Reshape, against onnx's own reference implementation."""
    rng = np.random.default_rng(0)
    w = rng.standard_normal((12, 6)).astype(np.float32)
    bias = rng.standard_normal(12).astype(np.float32)
    inits = [numpy_helper.from_array(w, "w"), numpy_helper.from_array(bias, "b"),
             numpy_helper.from_array(np.array([2, 2], np.int64), "split"),
             numpy_helper.from_array(np.array([1], np.int64), "one"),
             numpy_helper.from_array(np.array([0], np.int64), "zero"),
             numpy_helper.from_array(np.array([-1], np.int64), "minus1"),
             numpy_helper.from_array(np.array(1, np.int64), "idx"),
             numpy_helper.from_array(np.array([2], np.int64), "last")]
    nodes = [
        helper.make_node("Gemm", ["x", "w", "b"], ["g"], transB=1),                     # [5, 12]
        helper.make_node("Shape", ["g"], ["gs"]),
        helper.make_node("Gather", ["gs", "zero"], ["n"], axis=0),
        helper.make_node("Constant", [], ["dims"], value=numpy_helper.from_array(np.array([3, 4], np.int64))),
        helper.make_node("Concat", ["n", "dims"], ["shape3"], axis=0),
        helper.make_node("Reshape", ["g", "shape3"], ["g3"]),                           # [5, 3, 4]
        helper.make_node("Transpose", ["g3"], ["t"], perm=[0, 2, 1]),                   # [5, 4, 3]
        helper.make_node("Split", ["t", "split"], ["s1", "s2"], axis=1),                # [5, 2, 3] x2
        helper.make_node("Gelu", ["s1"], ["s1g"], approximate="tanh"),
        helper.make_node("Concat", ["s2", "s1g"], ["c"], axis=2),                       # [5, 2, 6]
        helper.make_node("Slice", ["c", "one", "minus1", "minus1"], ["sl"]),            # [5, 2, 4]
        helper.make_node("ReduceMean", ["sl", "last"], ["mu"], keepdims=1),            # opset 18+: axes input
        helper.make_node("Sub", ["sl", "mu"], ["d"]),
        helper.make_node("Constant", [], ["two"], value_float=2.0),
        helper.make_node("Pow", ["d", "two"], ["d2"]),
        helper.make_node("ReduceMean", ["d2", "last"], ["var"], keepdims=1),
        helper.make_node("Constant", [], ["eps"], value_float=1e-5),
        helper.make_node("Add", ["var", "eps"], ["ve"]),
        helper.make_node("Sqrt", ["ve"], ["sd"]),
        helper.make_node("Div", ["d", "sd"], ["norm"]),
        helper.make_node("Softmax", ["norm"], ["sm"], axis=1),
        helper.make_node("Gather", ["sm", "idx"], ["row"], axis=2),                     # [5, 2]
        helper.make_node("Cast", ["row"], ["y"], to=TensorProto.FLOAT),
    ]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [5, 6])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [5, 2])
    model = _model(nodes, [x], [y], inits, opset=20)
    onnx.checker.check_model(model)
    feeds = {"x": rng.standard_normal((5, 6)).astype(np.float32)}
    (want,) = ReferenceEvaluator(model).run(None, feeds)
    graph = kiln.from_onnx(model)
    kinds = Counter(op.kind for op in graph.ops)
    assert kinds["linear"] == 1 and kinds["gelu_tanh"] == 1 and kinds["softmax"] == 1
    got = reference.run(graph, feeds)["y"]
    assert rel_err(got, want) < 1e-5


def _float64_model(cast: bool) -> onnx.ModelProto:
    w = numpy_helper.from_array(np.linspace(-1, 1, 12).reshape(3, 4), "w64")
    nodes = [helper.make_node("Cast", ["w64"], ["w"], to=TensorProto.FLOAT)] if cast else []
    nodes.append(helper.make_node("MatMul", ["x", "w" if cast else "w64"], ["out"]))
    graph = helper.make_graph(nodes, "f64", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, [2, 4])], [w])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_float64_initializer_is_refused_not_narrowed():
    with pytest.raises(UnsupportedOps) as info:
        kiln.from_onnx(_float64_model(cast=False))
    assert "MatMul (input 'w64' is a float64 initializer" in str(info.value)


def test_float64_initializer_with_an_explicit_cast_imports():
    graph = kiln.from_onnx(_float64_model(cast=True))
    x = np.random.default_rng(0).standard_normal((2, 3)).astype(np.float32)
    (got,) = reference.run(graph, {"x": x}).values()
    assert np.allclose(got, x @ np.linspace(-1, 1, 12).reshape(3, 4).astype(np.float32), rtol=1e-6)
