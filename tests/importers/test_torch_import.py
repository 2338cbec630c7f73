"""kiln.from_torch: torch.export programs imported, run by the reference interpreter, matched to PyTorch."""
from __future__ import annotations

import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import kiln  # noqa: E402
from kiln import reference  # noqa: E402
from kiln.importers import UnsupportedOps  # noqa: E402
from kiln.ir import IntVar  # noqa: E402
from kiln.shapes import infer_types  # noqa: E402
from tests.importers.conftest import rel_err  # noqa: E402
from tests.support import torch_models  # noqa: E402

Dim = torch.export.Dim


@pytest.fixture(scope="module")
def resnet18():
    return torch_models.resnet18(num_classes=10)


@pytest.fixture(scope="module")
def bert():
    return torch_models.bert_encoder(hidden=64, heads=4, layers=2, vocab=1000)


def test_import_kiln_does_not_import_torch():
    code = "import sys, kiln, kiln.importers; assert 'torch' not in sys.modules and 'onnx' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parents[2])


def test_resnet18_matches_pytorch_with_symbolic_batch(resnet18):
    x = torch.randn(2, 3, 64, 64)
    graph = kiln.from_torch(resnet18, (x,), dynamic_shapes=({0: Dim("batch", min=1, max=4)},))
    assert graph.inputs[0].type.shape == (IntVar("batch", 1, 4), 3, 64, 64)
    kinds = Counter(op.kind for op in graph.ops)
    assert kinds["conv2d"] == 20 and kinds["batchnorm"] == 20 and kinds["pool2d"] == 1
    # NCHW -> NHWC once at the input; the global pool and the head need no other permute.
    assert kinds["permute"] == 1
    for batch in (3, 1):
        x = torch.randn(batch, 3, 64, 64, generator=torch.Generator().manual_seed(batch))
        want = resnet18(x).detach().numpy()
        (got,) = reference.run(graph, {"x": x.numpy()}).values()
        assert rel_err(got, want) < 1e-4


def small_vit():
    torch.manual_seed(0)
    return torch_models.ViT(image=32, patch=8, hidden=32, heads=2, layers=2, mlp=64, num_classes=10).eval()


def test_vit_matches_pytorch_with_symbolic_batch():
    # The class token is expand(batch)-ed into a concat: Kiln's concat repeats it, no copy op.
    vit = small_vit()
    graph = kiln.from_torch(vit, (torch.randn(2, 3, 32, 32),), dynamic_shapes=({0: Dim("batch", min=1, max=8)},))
    assert graph.inputs[0].type.shape == (IntVar("batch", 1, 8), 3, 32, 32)
    cat = next(op for op in graph.ops if op.kind == "concat")
    assert infer_types(graph)[cat.inputs[0]].shape == (1, 1, 32)
    for batch in (3, 1):
        x = torch.randn(batch, 3, 32, 32, generator=torch.Generator().manual_seed(batch))
        (got,) = reference.run(graph, {"x": x.numpy()}).values()
        assert rel_err(got, vit(x).detach().numpy()) < 1e-4


def test_bert_encoder_matches_pytorch_with_symbolic_batch(bert):
    ids, mask = torch_models.bert_inputs(2, 16, 1000)
    batch = Dim("batch", min=1, max=8)
    graph = kiln.from_torch(bert, (ids, mask), dynamic_shapes=({0: batch}, {0: batch}))
    assert [t.name for t in graph.inputs] == ["input_ids", "attention_mask"]
    assert all(t.type.shape == (IntVar("batch", 1, 8), 16) for t in graph.inputs)
    ids, mask = torch_models.bert_inputs(5, 16, 1000, seed=7)
    assert (mask == 0).any() and (mask == 1).any()
    want = bert(ids, mask).detach().numpy()
    (got,) = reference.run(graph, {"input_ids": ids.numpy(), "attention_mask": mask.numpy()}).values()
    assert rel_err(got, want) < 1e-4
    # The mask is imported, not dropped: an all-ones mask gives another answer.
    (unmasked,) = reference.run(graph, {"input_ids": ids.numpy(), "attention_mask": np.ones_like(mask)}).values()
    assert rel_err(unmasked, want) > 1e-3


def test_exported_program_is_accepted(bert):
    ids, mask = torch_models.bert_inputs(2, 16, 1000)
    ep = torch.export.export(bert, (ids, mask))
    graph = kiln.from_torch(ep)
    assert graph.inputs[0].type.shape == (2, 16)
    want = bert(ids, mask).detach().numpy()
    (got,) = reference.run(graph, {"input_ids": ids.numpy(), "attention_mask": mask.numpy()}).values()
    assert rel_err(got, want) < 1e-4


def test_unbounded_symbolic_dim_asks_for_a_max(bert):
    ids, mask = torch_models.bert_inputs(2, 16, 1000)
    batch = Dim("batch")
    with pytest.raises(ValueError, match=r"'batch' has no upper bound.*Dim\('batch', max=N\)"):
        kiln.from_torch(bert, (ids, mask), dynamic_shapes=({0: batch}, {0: batch}))


class Unsupported(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Linear(8, 8)

    def forward(self, x):
        a = torch.cumsum(self.proj(x), dim=1)  # CUMSUM_LINE
        b = torch.cumsum(x, dim=0)
        c = torch.flip(x, dims=[1])  # FLIP_LINE
        return torch.relu(a + b + c)


def test_unsupported_ops_are_listed_with_counts_and_source_lines():
    with pytest.raises(UnsupportedOps) as info:
        kiln.from_torch(Unsupported().eval(), (torch.randn(4, 8),))
    err = info.value
    assert set(err.ops) == {"aten.cumsum.default", "aten.flip.default"}
    assert err.ops["aten.cumsum.default"][0] == 2 and err.ops["aten.flip.default"][0] == 1
    source = Path(__file__).read_text().splitlines()
    cumsum_line = next(i for i, s in enumerate(source, 1) if "CUMSUM_LINE" in s)
    flip_line = next(i for i, s in enumerate(source, 1) if "FLIP_LINE" in s)
    text = str(err)
    assert f"aten.cumsum.default: 2, first at {__file__}:{cumsum_line}" in text
    assert f"aten.flip.default: 1, first at {__file__}:{flip_line}" in text


def test_resnet50_vit_and_bert_base_import():
    resnet50 = kiln.from_torch(torch_models.resnet50(), (torch.randn(1, 3, 224, 224),))
    assert Counter(op.kind for op in resnet50.ops)["conv2d"] == 53
    assert infer_types(resnet50)[resnet50.outputs[0]].shape == (1, 1000)
    vit = kiln.from_torch(torch_models.vit_b16(), (torch.randn(2, 3, 224, 224),),
                          dynamic_shapes=({0: Dim("batch", min=1, max=128)},))
    assert Counter(op.kind for op in vit.ops)["layernorm"] == 25
    assert infer_types(vit)[vit.outputs[0]].shape == (IntVar("batch", 1, 128), 1000)
    ids, mask = torch_models.bert_inputs(2, 384, 30522)
    batch = Dim("batch", min=1, max=16)
    bert = kiln.from_torch(torch_models.bert_base(), (ids, mask), dynamic_shapes=({0: batch}, {0: batch}))
    assert Counter(op.kind for op in bert.ops)["linear"] == 72
    assert infer_types(bert)[bert.outputs[0]].shape == (IntVar("batch", 1, 16), 384, 768)
