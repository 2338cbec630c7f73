"""A planted profiler on the real farm: bad candidates fail alone, the worker lives on, the good config is built.

A hanging kernel cannot be planted through the real pipeline, so the test
takes the job's own codegen.kernel off the queue and sends profile.run itself
with a planted profiler in the store; everything after that is the real farm.
"""
from __future__ import annotations

import json
import time

import numpy as np
import pytest

from artifacts import open_store
from codegen_worker.backends import get_backend
from kiln import farm as kfarm
from kiln.builder import GraphBuilder, linear, relu, symbol
from kiln.client import Client
from kiln.config import Settings
from kiln.dtypes import DType
from kiln.ir import Graph
from kiln.jobs import JobStore
from kiln.plan import ExecutionPlan
from kiln.profiledb import ProfileDB
from kiln.targets import get_target
from kiln.tuning import profile_points
from kiln.v1 import farm_pb2
from tests.support.farm import Farm
from tests.support.graphs import two_linears
from tests.test_profile_runner import FAST, build_planted, wait_gone

pytestmark = pytest.mark.slow


def one_gemm() -> Graph:
    b = GraphBuilder("planted")
    x = b.input("x", (symbol("batch", 1, 16), 20), DType.F32)
    w = b.constant("w", np.random.default_rng(4).uniform(-1, 1, (14, 20)), DType.F32)
    return b.build(relu(linear(x, w)))


def test_planted_bad_candidates_fail_alone_and_the_good_config_is_built(farm: Farm, client: Client, tmp_path,
                                                                        monkeypatch):
    for k, v in farm.env.items():
        if k.startswith("AWS_"):
            monkeypatch.setenv(k, v)
    store = open_store(farm.env["KILN_STORE_URL"], s3_endpoint_url=farm.env["KILN_S3_ENDPOINT_URL"])
    app = kfarm.make_celery(Settings.from_env(farm.env), "kiln-test")
    r = farm.redis()

    # With no codegen worker the job's own codegen.kernel waits in the queue, to be taken off it there.
    farm.kill("codegen-cpu")
    time.sleep(1)  # let Redis drop the dead worker's blocking pop, or it could swallow the message
    job = client.submit(one_gemm(), "cpu", profile=True)
    deadline = time.monotonic() + 30
    while r.llen("codegen.cpu") < 1:
        assert time.monotonic() < deadline, "the planner sent no codegen.kernel"
        time.sleep(0.05)
    with app.connection_for_write() as conn:
        assert conn.default_channel.queue_purge("codegen.cpu") == 1

    plan = ExecutionPlan.loads(store.get_bytes(JobStore(r).get(job.id).plan))
    (call,) = plan.calls
    backend = get_backend("cpu")
    configs = backend.candidate_configs(call.spec, get_target("cpu"))
    assert len(configs) == 5  # planted: 0 ok 2.5 ms, 1 hangs, 2 segfaults, 3 prints garbage, 4 ok 0.5 ms
    toolchain = backend.toolchain_version()
    exe, pid_file = build_planted(tmp_path)
    workers = {name: farm.procs[name].pid for name in ("profile-cpu-1", "profile-cpu-2")}
    runs_before = farm.stats().get("profiles_run", 0)

    # One planted profiler at the largest profile point: the pick is made from it alone.
    at = profile_points(call.spec)[-1]
    planted = app.send_task(kfarm.TASK_PROFILE, queue="profile.cpu.x86_64", kwargs={
        "job_id": job.id, "kernel_id": call.kernel, "spec": call.spec.to_json(), "target": "cpu",
        "profilers": [store.put_file(exe)], "points": [at], "configs": configs, "toolchain": toolchain})
    farm.start("codegen-cpu", "codegen_worker", "--queues", "codegen.cpu")
    events: list[farm_pb2.JobEvent] = []
    done = client.wait(job.id, on_event=events.append, timeout_s=120)

    # Only the profile worker's follow-up could finish k0, and it asked for the faster good config.
    assert done.state == farm_pb2.SUCCEEDED, done.error
    manifest = client.fetch(done.artifact, tmp_path / "artifact")
    assert manifest.kernels[0].config == configs[FAST] and manifest.kernels[0].profiled
    assert farm.stats()["profiles_run"] - runs_before == 5
    profiled = next(e.log for e in events if "profiled on" in e.log)
    assert "timed out" in profiled and "SIGSEGV" in profiled

    db = ProfileDB(r)
    recs = {json.dumps(x.config, sort_keys=True): x for x in db.records("cpu.x86_64", toolchain, call.spec.key())}
    got = [recs[json.dumps(c, sort_keys=True)] for c in configs]
    assert [x.ok for x in got] == [True, False, False, False, True]
    assert got[0].median_ms == 2.5 and got[FAST].median_ms == 0.5 and got[FAST].runs == 20
    assert "timed out after 5s" in got[1].error
    assert "SIGSEGV" in got[2].error
    assert "no JSON" in got[3].error
    assert db.best("cpu.x86_64", toolchain, call.spec.key(), configs, at) == configs[FAST]

    # The hung candidate's whole process group is gone, and both profile workers live on.
    assert wait_gone(int(pid_file.read_text()))
    assert {name: farm.procs[name].pid for name in workers} == workers
    assert all(farm.procs[name].poll() is None for name in workers)
    # The worker that ran the planted profiler still takes work: with the other one
    # stopped, a real profiled compile's candidates can only run there.
    done_line = f"profile.run[{planted.id}] succeeded"
    (survivor,) = (name for name in workers if done_line in farm.log(name))
    farm.kill(next(name for name in workers if name != survivor))
    later = client.compile(two_linears(28, 36, 10, "after_planted"), "cpu", profile=True)
    assert later.state == farm_pb2.SUCCEEDED, later.error
    points = len(profile_points(call.spec))  # batch 1..16: profiled at 1, 4 and 16
    assert points == 3 and farm.stats()["profiles_run"] - runs_before == 5 + 2 * 5 * points
    assert farm.log(survivor).split(done_line, 1)[1].count("profile.run[") >= 4  # 2 x (received, succeeded)
    assert farm.procs[survivor].poll() is None
