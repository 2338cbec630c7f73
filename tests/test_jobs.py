"""Job state in a real Redis: atomic kernel counting, one terminal state, stale jobs failed."""
from __future__ import annotations

import time

import pytest
import redis

from kiln.jobs import CANCELLED, FAILED, RUNNING, SUCCEEDED, Job, JobStore
from tests.support.redis import redis_server


@pytest.fixture(scope="module")
def jobs():
    with redis_server() as url:
        r = redis.Redis.from_url(url, decode_responses=True)
        yield JobStore(r)
        r.close()


def new_job(jobs: JobStore, key: str = "k") -> Job:
    job = Job(JobStore.new_id(), key, "cpu", state=RUNNING)
    assert jobs.claim_key(key, job.id) == job.id
    jobs.create(job)
    return job


def test_each_kernel_counts_once_even_when_reported_twice(jobs):
    job = new_job(jobs, "count")
    jobs.set_pending(job.id, ["k0", "k1"])
    assert jobs.report_kernel(job.id, "k0", {"fn": "a"}) == 1
    assert jobs.report_kernel(job.id, "k0", {"fn": "a"}) == -1  # a redelivered report
    assert jobs.report_kernel(job.id, "k1", {"fn": "b"}) == 0
    assert jobs.get(job.id).done == 2 and set(jobs.kernel_results(job.id)) == {"k0", "k1"}


def test_a_job_ends_once_and_frees_its_key(jobs):
    job = new_job(jobs, "once")
    assert jobs.finish(job.id, SUCCEEDED, artifact="ab" * 32)
    assert not jobs.finish(job.id, FAILED, error="late failure")
    assert jobs.get(job.id).state == SUCCEEDED
    other = JobStore.new_id()
    assert jobs.claim_key("once", other) == other


def test_a_late_update_cannot_reopen_an_ended_job(jobs):
    """The planner marks a job running after a cancel landed: the cancel must stand."""
    job = new_job(jobs, "late")
    jobs.update(job.id, stage="planning")
    assert jobs.get(job.id).stage == "planning"
    assert jobs.finish(job.id, CANCELLED)
    jobs.update(job.id, state=RUNNING, stage="planning")
    assert jobs.get(job.id).state == CANCELLED and jobs.get(job.id).stage == "cancelled"
    jobs.update("no-such-job", state=RUNNING)
    assert jobs.get("no-such-job") is None


def test_a_job_without_progress_is_failed_and_watchers_hear_it(jobs):
    job = new_job(jobs, "stale")
    assert not jobs.fail_if_stale(job.id, 30)
    time.sleep(1.2)
    assert jobs.fail_if_stale(job.id, 1.0)
    got = jobs.get(job.id)
    assert got.state == FAILED and "no progress" in got.error
    assert jobs.events(job.id, "0", block_ms=1)[-1].state == FAILED
    assert not jobs.fail_if_stale(job.id, 0.0)  # already ended


def test_a_job_keeps_the_compiler_and_toolchain_its_key_covers(jobs):
    # The link writes these into the manifest: a worker whose code changed since the submit must not name its own.
    job = Job(JobStore.new_id(), "versions", "cuda:sm90", compiler="c" * 64, toolchain="nvcc 13.0; cutlass 4.2.0.0")
    jobs.create(job)
    back = jobs.get(job.id)
    assert (back.compiler, back.toolchain) == ("c" * 64, "nvcc 13.0; cutlass 4.2.0.0")
    assert back == job
