"""Whole models on a GPU: ResNet-50, BERT-base (sequence 384) and ViT-B/16 imported from
torch.export with a symbolic batch, built for cuda:sm90 with the backend's default
configs, and run at batch 2 on fresh random inputs into outputs poisoned with NaN.

Each is checked against a float64 NumPy run of the same graph (relative error under
1e-2, the bound for fp16 operands) and against PyTorch fp16 on the same inputs. The
symbolic range matches bench/models.py, so the objects that bench/tune.py --prepare
compiled into KILN_OBJECT_CACHE are reused.
"""
from __future__ import annotations

import pytest

from kiln import reference
from kiln.runtime import Model
from tests.support import local_build as lb

pytestmark = pytest.mark.gpu
torch = pytest.importorskip("torch")


@pytest.mark.parametrize("name", ["resnet50", "bert_base", "vit_b16"])
def test_model_matches_float64_and_pytorch(tmp_path, name):
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    import kiln
    from bench.models import make

    model, inputs, dyn = make(name)
    model = model.half()
    example = tuple(t.half() if t.is_floating_point() else t for t in inputs(2))
    graph = kiln.from_torch(model, example, dynamic_shapes=dyn, name=name)
    built = lb.build_local(graph, "cuda:sm90", tmp_path / name)
    feeds = tuple(t.half() if t.is_floating_point() else t for t in inputs(2, seed=7))
    names = [t.name for t in graph.inputs]
    ref = next(iter(reference.run(graph, {n: t.float().numpy() if t.is_floating_point() else t.numpy()
                                          for n, t in zip(names, feeds, strict=True)}).values()))
    m = Model(built.dir)
    try:
        out_name = m.manifest.outputs[0].name
        y = torch.full(ref.shape, float("nan"), dtype=torch.float16, device="cuda")
        m.run({n: t.cuda() for n, t in zip(names, feeds, strict=True)}, out={out_name: y})
        torch.cuda.synchronize()
        got = y.float().cpu().numpy()
    finally:
        m.close()
    with torch.no_grad():
        theirs = model.cuda()(*(t.cuda() for t in feeds)).float().cpu().numpy()
    err, torch_err = lb.rel_err(got, ref), lb.rel_err(theirs, ref)
    print(f"{name}: kiln vs float64 {err:.2e}, torch fp16 vs float64 {torch_err:.2e}, "
          f"kiln vs torch {lb.rel_err(got, theirs):.2e}, {len(built.plan.calls)} kernels")
    assert err < 1e-2, f"{name}: rel err {err} against float64"
    assert lb.rel_err(got, theirs) < 1e-2


def bert_with_symbolic_sequence():
    """A small BERT encoder (fp16) imported with batch 1..4 and sequence 2..64 both symbolic."""
    import kiln
    from tests.support import torch_models as tm

    model = tm.bert_encoder(hidden=64, heads=4, layers=2, vocab=1000).half()
    batch, seq = torch.export.Dim("batch", min=1, max=4), torch.export.Dim("seq", min=2, max=64)
    ids, mask = tm.bert_inputs(2, 16, 1000)
    graph = kiln.from_torch(model, (ids, mask), dynamic_shapes=({0: batch, 1: seq}, {0: batch, 1: seq}), name="bert_seq")
    return model, graph


def test_one_artifact_serves_every_batch_and_sequence_length(tmp_path):
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    from tests.support import torch_models as tm

    model, graph = bert_with_symbolic_sequence()
    built = lb.build_local(graph, "cuda:sm90", tmp_path / "bert_seq")
    assert "attention" in built.ops()
    m = Model(built.dir)
    try:
        out_name = m.manifest.outputs[0].name
        for batch, seq in ((1, 16), (3, 9), (2, 64), (4, 2)):
            ids, mask = tm.bert_inputs(batch, seq, 1000, seed=batch + seq)
            ref = next(iter(reference.run(graph, {"input_ids": ids.numpy(), "attention_mask": mask.numpy()}).values()))
            y = torch.full((batch, seq, 64), float("nan"), dtype=torch.float16, device="cuda")
            m.run({"input_ids": ids.cuda(), "attention_mask": mask.cuda()}, out={out_name: y})
            torch.cuda.synchronize()
            got = y.float().cpu().numpy()
            with torch.no_grad():
                theirs = model.cuda()(ids.cuda(), mask.cuda()).float().cpu().numpy()
            err = lb.rel_err(got, ref)
            print(f"bert_seq batch {batch} seq {seq}: kiln vs float64 {err:.2e}, torch fp16 vs float64 "
                  f"{lb.rel_err(theirs, ref):.2e}")
            assert err < 1e-2, (batch, seq, err)
    finally:
        m.close()
