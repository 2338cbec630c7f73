"""Model._replay_key: what a graph replay's checks depended on. Two calls with equal keys pass
the same checks, so the second may skip them (Model._replay_hit); anything that could change a
check's answer must change the key. Built for the cpu target (the key needs no GPU)."""
from __future__ import annotations

import ctypes
from dataclasses import dataclass

import pytest

from kiln.dtypes import DType
from kiln.runtime import Model
from tests.support import graphs
from tests.support import local_build as lb

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    built = lb.build_local(graphs.mlp(hidden=16, ffn=32, dtype=DType.F32, name="key"), "cpu",
                           tmp_path_factory.mktemp("key") / "a")
    m = Model(built.dir)
    yield m
    m.close()


def test_same_tensors_and_stream_give_the_same_key(model):
    x, y = torch.randn(4, 16), torch.empty(4, 16)
    out = {model.manifest.outputs[0].name: y}
    assert model._replay_key({"x": x}, out, 7) == model._replay_key({"x": x}, dict(out), 7)


def test_whatever_a_check_reads_changes_the_key(model):
    name = model.manifest.outputs[0].name
    buf = torch.randn(4 * 32)
    x, strided = buf[:64].view(4, 16), buf.view(4, 32)[:, :16]  # one address, one shape, two layouts
    assert x.data_ptr() == strided.data_ptr() and x.shape == strided.shape
    y = torch.empty(4, 16)
    key = model._replay_key({"x": x}, {name: y}, 7)
    variants = {
        "another stream": model._replay_key({"x": x}, {name: y}, 8),
        "strides (same pointer, same shape)": model._replay_key({"x": strided}, {name: y}, 7),
        "another buffer": model._replay_key({"x": x}, {name: torch.empty(4, 16)}, 7),
        "another shape": model._replay_key({"x": x[:2]}, {name: y[:2]}, 7),
        "another dtype": model._replay_key({"x": x}, {name: y.view(torch.int32)}, 7),
    }
    for what, other in variants.items():
        assert other is not None and other != key, what


def test_what_the_full_path_must_judge_has_no_key(model):
    name = model.manifest.outputs[0].name
    x, y = torch.randn(4, 16), torch.empty(4, 16)
    assert model._replay_key({"x": x, "extra": x}, {name: y}, 7) is None
    assert model._replay_key({"z": x}, {name: y}, 7) is None
    assert model._replay_key({"x": x}, {"other": y}, 7) is None
    assert model._replay_key({"x": x.numpy()}, {name: y}, 7) is None
    assert model._replay_hit({"x": x}, {name: y}, 7) is None  # nothing replayed yet


@dataclass(frozen=True)
class _Tensor:
    """Stands in for a tensor on another device: torch here has no second device to put one on."""
    ptr: int
    shape: tuple
    strides: tuple
    dtype: str
    device: str

    def data_ptr(self) -> int:
        return self.ptr

    def stride(self) -> tuple:
        return self.strides


def test_the_device_changes_the_key(model):
    name = model.manifest.outputs[0].name
    x0, x1 = _Tensor(64, (4, 16), (16, 1), "f32", "cuda:0"), _Tensor(64, (4, 16), (16, 1), "f32", "cuda:1")
    y = _Tensor(128, (4, 16), (16, 1), "f32", "cuda:0")
    assert model._replay_key({"x": x0}, {name: y}, 7) != model._replay_key({"x": x1}, {name: y}, 7)


def test_streams_the_key_cannot_hold_go_the_full_way(model):
    name = model.manifest.outputs[0].name
    x, y = torch.randn(4, 16), torch.empty(4, 16)
    assert model._replay_key({"x": x}, {name: y}, ctypes.c_void_p(7)) is None  # ctypes pointers do not hash
    assert model._replay_key({"x": x}, {name: y}, None) is None  # cpu tensors: no current CUDA stream to read
    assert model._replay_key({"x": x.numpy()}, {name: y.numpy()}, None) is None
