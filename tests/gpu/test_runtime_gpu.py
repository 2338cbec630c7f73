"""The runtime on a GPU: CUDA-graph replay, caller-owned outputs, DLPack inputs."""
from __future__ import annotations

import numpy as np
import pytest

from kiln import reference
from kiln.dtypes import DType
from kiln.runtime import Model, RunError
from tests.support import graphs
from tests.support import local_build as lb

pytestmark = pytest.mark.gpu
torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    graph = graphs.mlp(hidden=64, ffn=128, dtype=DType.F16, name="replay")
    built = lb.build_local(graph, "cuda:sm90", tmp_path_factory.mktemp("replay") / "a")
    m = Model(built.dir)
    yield graph, m
    m.close()


def _ref(graph, x: torch.Tensor) -> np.ndarray:
    return next(iter(reference.run(graph, {"x": x.float().cpu().numpy()}).values()))


def test_graph_replay_rereads_inputs_and_rewrites_outputs(model):
    graph, m = model
    gen = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(16, 64, device="cuda", dtype=torch.float16, generator=gen)
    y = torch.full((16, 64), float("nan"), device="cuda", dtype=torch.float16)
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        for step in range(4):
            # Same pointers every call: after the first (eager + capture), calls replay the graph.
            x.copy_(torch.randn(16, 64, device="cuda", dtype=torch.float16, generator=gen))
            y.fill_(float("nan"))
            m.run({"x": x}, out={list(m.manifest.outputs)[0].name: y}, graph=True)
            stream.synchronize()
            err = lb.rel_err(y.float().cpu().numpy(), _ref(graph, x))
            assert err < 1e-2, f"step {step}: rel err {err}"


def test_graph_replay_distinguishes_batch_sizes(model):
    graph, m = model
    stream = torch.cuda.Stream()
    name = m.manifest.outputs[0].name
    with torch.cuda.stream(stream):
        for batch in (3, 9, 3, 9):
            x = torch.randn(batch, 64, device="cuda", dtype=torch.float16)
            y = torch.empty(batch, 64, device="cuda", dtype=torch.float16)
            m.run({"x": x}, out={name: y}, graph=True)
            stream.synchronize()
            assert lb.rel_err(y.float().cpu().numpy(), _ref(graph, x)) < 1e-2


def test_graph_replay_refuses_the_default_stream_and_numpy(model):
    _, m = model
    x = torch.randn(4, 64, device="cuda", dtype=torch.float16)
    with pytest.raises(RunError, match="stream"):
        m.run({"x": x}, stream=0, graph=True)
    with pytest.raises(RunError, match="device tensors"):
        m.run({"x": x.cpu().numpy()}, graph=True)


def test_dlpack_capsule_provider_is_zero_copy(model):
    graph, m = model

    class Foreign:
        """An array type Kiln knows only through the DLPack protocol (as CuPy or JAX arrays)."""

        def __init__(self, t):
            self.t = t

        def __dlpack__(self, **kwargs):
            return self.t.__dlpack__(**kwargs)

        def __dlpack_device__(self):
            return self.t.__dlpack_device__()

    x = torch.randn(5, 64, device="cuda", dtype=torch.float16)
    out = m.run({"x": Foreign(x)})
    y = next(iter(out.values()))
    torch.cuda.synchronize()
    assert lb.rel_err(y.float().cpu().numpy(), _ref(graph, x)) < 1e-2


class _Chain(torch.nn.Module):
    """Convs, a residual, a pool, GEMMs and a layernorm in one dependent chain: CUTLASS
    conv and GEMM kernels beside Kiln's own, each consuming what the one before wrote,
    with the arena reusing buffers as it goes."""

    def __init__(self):
        super().__init__()
        self.c1 = torch.nn.Conv2d(16, 32, 3, padding=1)
        self.c2 = torch.nn.Conv2d(32, 32, 3, padding=1)
        self.c3 = torch.nn.Conv2d(32, 64, 1)
        self.fc1 = torch.nn.Linear(64, 128)
        self.ln = torch.nn.LayerNorm(128)
        self.fc2 = torch.nn.Linear(128, 128)

    def forward(self, x):
        y = torch.relu(self.c1(x))
        y = torch.relu(self.c2(y)) + y
        y = self.c3(y).mean((2, 3))
        y = self.ln(torch.nn.functional.gelu(self.fc1(y)))
        return self.fc2(y) + y


def test_programmatic_dependent_launch_changes_no_bit(tmp_path):
    """Kernels launched while their predecessor still runs (the sm90 default) must give
    the very bytes of ordinary launches, eagerly and through graph replay."""
    import kiln

    torch.manual_seed(0)
    module = _Chain().half()
    batch = torch.export.Dim("batch", min=1, max=16)
    example = (torch.randn(2, 16, 24, 24).half(),)
    graph = kiln.from_torch(module, example, dynamic_shapes=({0: batch},), name="pdl_chain")
    built = lb.build_local(graph, "cuda:sm90", tmp_path / "a")
    impls = {built.configs[c.kernel].get("impl", "simt") for c in built.plan.calls}
    assert "cutlass_sm90" in impls and "simt" in impls, impls
    m = Model(built.dir)
    name = m.manifest.outputs[0].name
    stream = torch.cuda.Stream()
    try:
        for n in (1, 13):
            # Each run reads a different input than the one before: a kernel that read a buffer
            # before its producer had written it would find the previous run's values there.
            xs = [torch.randn(n, 16, 24, 24, device="cuda", dtype=torch.float16) for _ in range(3)]
            refs = [next(iter(reference.run(graph, {m.manifest.inputs[0].name: x.float().cpu().numpy()}).values()))
                    for x in xs]
            x = torch.empty_like(xs[0])
            y = torch.empty(n, 128, device="cuda", dtype=torch.float16)
            stream.wait_stream(torch.cuda.current_stream())  # xs were drawn on the default stream
            # Same pointers throughout: eager, eager + capture, then replays.
            steps = [(False, 0), (True, 1), (True, 2), (True, 0), (False, 2)]
            got: dict[bool, list[torch.Tensor]] = {}
            for pdl in (True, False):
                assert m.set_pdl(pdl)
                for replay, i in steps:
                    with torch.cuda.stream(stream):
                        x.copy_(xs[i])
                        y.fill_(float("nan"))
                        m.run({m.manifest.inputs[0].name: x}, out={name: y}, graph=replay)
                    stream.synchronize()
                    assert lb.rel_err(y.float().cpu().numpy(), refs[i]) < 1e-2, (n, pdl, replay, i)
                    got.setdefault(pdl, []).append(y.clone())
            for k, (on, off) in enumerate(zip(got[True], got[False], strict=True)):
                assert torch.equal(on, off), f"batch {n}, step {steps[k]}: the launch mode changed the result"
    finally:
        m.close()


def test_replays_already_checked_still_refuse_what_the_checks_refuse(model):
    """After replays have been remembered (Model._replay_hit skips the checks for them), a strided
    view at the same address, or an output of another dtype, is still refused, and the remembered
    replay still answers right."""
    graph, m = model
    name = m.manifest.outputs[0].name
    buf = torch.randn(4 * 128, device="cuda", dtype=torch.float16)
    x, strided = buf[:256].view(4, 64), buf.view(4, 128)[:, :64]  # one address, one shape, two layouts
    y = torch.empty(4, 64, device="cuda", dtype=torch.float16)
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        for _ in range(3):
            m.run({"x": x}, out={name: y}, graph=True)
        assert m._replays, "the replay was not remembered"
        with pytest.raises(RunError, match="contiguous"):
            m.run({"x": strided}, out={name: y}, graph=True)
        with pytest.raises(RunError, match="out"):
            m.run({"x": x}, out={name: y.view(torch.int16)}, graph=True)
        x.copy_(torch.randn_like(x))
        m.run({"x": x}, out={name: y}, graph=True)
    stream.synchronize()
    assert lb.rel_err(y.float().cpu().numpy(), _ref(graph, x)) < 1e-2
