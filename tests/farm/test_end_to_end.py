"""The farm end to end, through the real gRPC API with real workers."""
from __future__ import annotations

import shutil
import time

import grpc
import numpy as np
import pytest

from kiln import reference
from kiln.builder import GraphBuilder, symbol
from kiln.client import Client
from kiln.dtypes import DType
from kiln.runtime import Model
from kiln.v1 import farm_pb2, graph_pb2
from kiln.wire import graph_to_pb
from tests.support.farm import Farm
from tests.support.graphs import mlp, two_linears

pytestmark = pytest.mark.slow
needs_nvcc = pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc is not installed")


def rel_err(got: np.ndarray, ref: np.ndarray) -> float:
    got, ref = np.asarray(got, np.float64), np.asarray(ref, np.float64)
    return float(np.linalg.norm(got - ref) / np.linalg.norm(ref))


def test_mlp_cpu_compiles_fetches_and_matches_reference(client: Client, tmp_path):
    for dtype, tol in ((DType.F32, 1e-5), (DType.F16, 1e-2)):
        graph = mlp(dtype=dtype, name=f"mlp_{dtype.value}")
        job = client.compile(graph, "cpu")
        assert job.state == farm_pb2.SUCCEEDED, job.error
        assert not job.cached
        out = tmp_path / dtype.value
        manifest = client.fetch(job.artifact, out)
        assert manifest.target == "cpu" and [t.name for t in manifest.inputs] == ["x"]
        # What bench/check_artifact.py relies on (Manifest.built_from) to tell that a model file rebuilt elsewhere is this graph.
        assert manifest.built_from(graph)
        assert not manifest.built_from(mlp(dtype=dtype, name=f"mlp_{dtype.value}", seed=1))
        model = Model(out)
        for batch in (1, 5, 32):
            feeds = reference.random_inputs(graph, seed=batch, sizes={"batch": batch})
            got = model.run(feeds)
            want = reference.run(graph, feeds)
            for name in graph.outputs:
                assert got[name].shape == want[name].shape
                assert rel_err(got[name], want[name]) < tol


@needs_nvcc
def test_mlp_cuda_sm90_compiles_and_fetches(client: Client, tmp_path):
    job = client.compile(mlp(dtype=DType.F16, name="mlp_sm90"), "cuda:sm90")
    assert job.state == farm_pb2.SUCCEEDED, job.error
    manifest = client.fetch(job.artifact, tmp_path)
    assert manifest.target == "cuda:sm90"
    lib = (tmp_path / "libmodel.so").read_bytes()
    assert lib[:4] == b"\x7fELF"
    if shutil.which("cuobjdump"):
        import subprocess

        listing = subprocess.run(["cuobjdump", "--list-elf", str(tmp_path / "libmodel.so")], capture_output=True,
                                 text=True).stdout
        assert "sm_90a" in listing


def test_resubmit_runs_no_task_and_returns_same_hash(farm: Farm, client: Client):
    graph = mlp(hidden=48, ffn=96, name="resubmit")
    first = client.compile(graph, "cpu")
    assert first.state == farm_pb2.SUCCEEDED, first.error
    before = farm.stats()
    again = client.submit(graph, "cpu")
    assert again.state == farm_pb2.SUCCEEDED and again.cached
    assert again.artifact == first.artifact
    time.sleep(0.5)
    assert farm.stats().get("tasks", 0) == before.get("tasks", 0)
    assert farm.stats().get("cache_hits", 0) == before.get("cache_hits", 0) + 1


def test_two_graphs_sharing_a_kernel_compile_it_once(farm: Farm, client: Client):
    a = client.compile(two_linears(40, 24, 8, "share_a"), "cpu")
    assert a.state == farm_pb2.SUCCEEDED, a.error
    compiles = farm.stats()["compiles"]
    events = []
    b = client.compile(two_linears(40, 24, 12, "share_b", seed=1), "cpu", on_event=events.append)
    assert b.state == farm_pb2.SUCCEEDED, b.error
    assert b.artifact != a.artifact
    # b has two kernels; the first (linear 40->24 + relu) is a's: one new compile.
    assert farm.stats()["compiles"] == compiles + 1
    assert sum("cached object" in e.log for e in events) == 1


def _invalid(client: Client, msg: graph_pb2.Graph, target: str = "cpu") -> str:
    with pytest.raises(grpc.RpcError) as info:
        client.stub.SubmitCompile(farm_pb2.SubmitCompileRequest(graph=msg, target=target))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    return info.value.details()


def _small() -> graph_pb2.Graph:
    b = GraphBuilder("small")
    x = b.input("x", (symbol("batch", 1, 4), 8))
    return graph_to_pb(b.build(x + x))


def test_bad_graphs_are_invalid_argument_naming_the_culprit(farm: Farm, client: Client):
    msg = _small()
    msg.inputs[0].type.dtype = graph_pb2.DTYPE_UNSPECIFIED
    assert "'x'" in _invalid(client, msg) and "dtype" in _invalid(client, msg)

    msg = _small()
    msg.ops[0].type = "frobnicate"
    assert "frobnicate" in _invalid(client, msg)

    msg = _small()
    op = msg.ops.add(name="loop1", type="relu", inputs=["loop2.out"], outputs=["loop1.out"])
    msg.ops.add(name="loop2", type="relu", inputs=[op.outputs[0]], outputs=["loop2.out"])
    details = _invalid(client, msg)
    assert "cycle" in details and "loop1" in details

    msg = _small()
    msg.inputs[0].type.shape[1].static = 1 << 30
    msg.inputs[0].type.shape[0].symbolic.max = 1 << 20
    details = _invalid(client, msg)
    assert "'x'" in details and "limit" in details

    msg = _small()
    msg.ops[0].inputs[1] = "ghost"
    assert "ghost" in _invalid(client, msg)

    assert "target" in _invalid(client, _small(), target="tpu:v9")
    # The services stay up and still compile.
    job = client.compile(mlp(hidden=16, ffn=16, name="after_errors"), "cpu")
    assert job.state == farm_pb2.SUCCEEDED, job.error
    assert all(p.poll() is None for p in farm.procs.values())


def test_constant_by_reference_is_uploaded_and_a_missing_one_is_refused(client: Client, tmp_path):
    rng = np.random.default_rng(3)
    b = GraphBuilder("bigweights")
    x = b.input("x", (symbol("batch", 1, 4), 512))
    w = b.constant("w", rng.standard_normal((640, 512)).astype(np.float32))  # 1.3 MB: sent by digest
    from kiln.builder import linear

    graph = b.build(linear(x, w))
    job = client.compile(graph, "cpu")
    assert job.state == farm_pb2.SUCCEEDED, job.error
    client.fetch(job.artifact, tmp_path)
    feeds = reference.random_inputs(graph, sizes={"batch": 3})
    assert rel_err(Model(tmp_path).run(feeds)["linear_0.out"], reference.run(graph, feeds)["linear_0.out"]) < 1e-5

    msg = graph_to_pb(graph, inline_limit=0)
    msg.constants[0].sha256 = "ab" * 32
    with pytest.raises(grpc.RpcError) as info:
        client.stub.SubmitCompile(farm_pb2.SubmitCompileRequest(graph=msg, target="cpu"))
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "'w'" in info.value.details()


def test_put_blob_rejects_a_wrong_digest(client: Client):
    with pytest.raises(grpc.RpcError) as info:
        client.stub.PutBlob(iter([farm_pb2.BlobChunk(sha256="00" * 32, data=b"hello")]))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_unknown_job_and_artifact_are_not_found(client: Client):
    for call in (lambda: client.get("nope"), lambda: list(client.stub.GetArtifact(
            farm_pb2.GetArtifactRequest(sha256="cd" * 32)))):
        with pytest.raises(grpc.RpcError) as info:
            call()
        assert info.value.code() == grpc.StatusCode.NOT_FOUND


def test_watch_streams_progress_and_frontend_restart_keeps_jobs(farm: Farm, client: Client):
    events = []
    job = client.compile(mlp(hidden=24, ffn=40, name="watched"), "cpu", on_event=events.append)
    assert job.state == farm_pb2.SUCCEEDED
    stages = [e.stage for e in events]
    assert "planning" in stages and "linking" in stages and events[-1].artifact == job.artifact
    assert max(e.total for e in events) == 3
    farm.kill("frontend", 15)
    farm.start("frontend", "frontend_svc")
    farm.wait_frontend()
    with Client(farm.grpc_address) as fresh:
        again = fresh.get(job.id)
        assert again.state == farm_pb2.SUCCEEDED and again.artifact == job.artifact
        replay = list(fresh.watch(job.id))
        assert [e.id for e in replay] == [e.id for e in events]


def test_cancel_stops_a_job(farm: Farm, client: Client):
    job = client.submit(mlp(hidden=72, ffn=88, name="to_cancel"), "cpu")
    cancelled = client.cancel(job.id)
    assert cancelled.state == farm_pb2.CANCELLED
    time.sleep(2)
    assert client.get(job.id).state == farm_pb2.CANCELLED


@needs_nvcc
def test_codegen_worker_killed_mid_task_does_not_lose_the_job(farm: Farm, client: Client):
    job = client.submit(mlp(hidden=80, ffn=112, dtype=DType.F16, name="killed"), "cuda:sm90")
    deadline = time.monotonic() + 60
    while client.get(job.id).stage != "compiling":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    time.sleep(0.5)  # nvcc is running now (each kernel takes seconds)
    assert client.get(job.id).state == farm_pb2.RUNNING
    farm.kill("codegen-cuda")
    farm.start("codegen-cuda", "codegen_worker", "--queues", "codegen.cuda")
    done = client.wait(job.id, timeout_s=240)
    assert done.state == farm_pb2.SUCCEEDED, done.error


def test_profiling_is_split_over_two_workers_and_remembered(farm: Farm, client: Client):
    b = GraphBuilder("profiled")
    rng = np.random.default_rng(9)
    x = b.input("x", (symbol("batch", 1, 64), 96))
    from kiln import nn

    h = x
    for i, n in enumerate((100, 104, 108, 112)):
        h = nn.Linear(f"l{i}", h.type.shape[-1], n, rng=rng)(h)
    graph = b.build(h)
    before = farm.stats().get("profiles_run", 0)
    job = client.compile(graph, "cpu", profile=True)
    assert job.state == farm_pb2.SUCCEEDED, job.error
    ran = farm.stats()["profiles_run"] - before
    assert ran == 4 * 5 * 3  # four GEMMs, five CPU candidates each, at batch 1, 8 and 64
    logs = [farm.log("profile-cpu-1"), farm.log("profile-cpu-2")]
    assert all("profile.run" in log and "succeeded" in log for log in logs), "both profile workers must take work"
    # Every candidate's timing is in the fleet database, and a second compile runs no profiler.
    r = farm.redis()
    assert sum(1 for k in r.scan_iter(match="kiln:profile:*") if ":index:" not in k) >= 60
    graph2 = graph.replace(name="profiled_again")
    job2 = client.compile(graph2, "cpu", profile=True)
    assert job2.state == farm_pb2.SUCCEEDED, job2.error
    assert farm.stats()["profiles_run"] - before == ran


def test_profile_only_warms_the_database_without_an_artifact(farm: Farm, client: Client):
    """`kiln profile run`: every kernel profiled, no artifact; a later compile profiles nothing."""
    b = GraphBuilder("warm_only")
    rng = np.random.default_rng(11)
    x = b.input("x", (symbol("batch", 1, 64), 88))
    from kiln import nn

    h = x
    for i, n in enumerate((92, 84)):
        h = nn.Linear(f"w{i}", h.type.shape[-1], n, rng=rng)(h)
    graph = b.build(h)
    before = farm.stats().get("profiles_run", 0)
    links_before = farm.stats().get("links", 0)
    job = client.compile(graph, "cpu", profile_only=True)
    assert job.state == farm_pb2.SUCCEEDED, job.error
    assert job.artifact == "", "a profile-only job builds no artifact"
    assert farm.stats()["profiles_run"] - before == 2 * 5 * 3
    assert farm.stats().get("links", 0) == links_before, "a profile-only job links nothing"
    events = [e.log for e in client.watch(job.id)]
    assert any("profiled: 2 of 2 kernels" in e for e in events), events
    compiled = client.compile(graph.replace(name="warm_then_compile"), "cpu", profile=True)
    assert compiled.state == farm_pb2.SUCCEEDED and compiled.artifact
    assert farm.stats()["profiles_run"] - before == 2 * 5 * 3, "the warmed database must answer every kernel"


def test_picks_that_differ_by_batch_link_a_dispatch_kernel(farm: Farm, client: Client, tmp_path):
    """Seeded timings: candidate 1 wins at the smallest profile point, candidate 2 at the others.
    The compile profiles nothing, each kernel becomes a dispatcher over two objects, and the
    artifact is right on both sides of the range boundary."""
    from codegen_worker.backends import get_backend
    from kiln.profiledb import ProfileDB, ProfileRecord
    from kiln.targets import get_target
    from kiln.tuning import profile_points
    from planner_svc.lower import lower
    from planner_svc.pipeline import run_passes

    graph = two_linears(30, 40, 12, "dispatched")
    backend, target = get_backend("cpu"), get_target("cpu")
    db = ProfileDB(farm.redis())
    for call in lower(run_passes(graph)[0], "cpu").calls:
        configs = backend.candidate_configs(call.spec, target)
        for i, at in enumerate(profile_points(call.spec)):
            winner = 1 if i == 0 else 2
            for j, config in enumerate(configs):
                db.put(ProfileRecord("cpu.x86_64", {"kind": "cpu.x86_64"}, backend.toolchain_version(),
                                     call.spec.key(), config, True, 0.1 if j == winner else 1.0, 20, "", "seeded",
                                     tuple(at)))
    before = farm.stats().get("profiles_run", 0)
    job = client.compile(graph, "cpu", profile=True)
    assert job.state == farm_pb2.SUCCEEDED, job.error
    assert farm.stats().get("profiles_run", 0) == before, "every pick was known"
    manifest = client.fetch(job.artifact, tmp_path)
    assert manifest.profiled and len(manifest.kernels) == 2
    for k in manifest.kernels:
        assert k.config["impl"] == "dispatch" and [c["upto"] for c in k.config["cases"]] == [2, None]
    model = Model(tmp_path)
    for batch in (1, 2, 3, 16):
        feeds = reference.random_inputs(graph, seed=batch, sizes={"batch": batch})
        got, want = model.run(feeds), reference.run(graph, feeds)
        assert all(rel_err(got[n], want[n]) < 1e-5 for n in graph.outputs)
