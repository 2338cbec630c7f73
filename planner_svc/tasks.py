"""The planner's Celery tasks: plan a job, then advance it as workers report.

The job is an explicit state machine in Redis (kiln.jobs), not a Celery
canvas: each report moves it one step, so a restart loses nothing.
"""
from __future__ import annotations

import json
import traceback

from celery import Celery

from artifacts import BlobStore
from kiln import farm
from kiln.config import Settings
from kiln.ir import Constant, Graph
from kiln.jobs import FAILED, RUNNING, SUCCEEDED, JobStore
from kiln.targets import get_target
from kiln.v1 import graph_pb2
from kiln.validate import graph_from_pb
from kiln.wire import graph_to_pb
from planner_svc.lower import lower
from planner_svc.pipeline import run_passes


def register(app: Celery, settings: Settings) -> None:
    store = settings.open_store()
    r = farm.redis_client(settings)
    jobs = JobStore(r)

    @app.task(name=farm.TASK_PLAN)
    def plan(job_id: str) -> None:
        farm.count(r, "tasks")
        job = jobs.get(job_id)
        if job is None or not jobs.is_live(job_id):
            return
        try:
            jobs.update(job_id, state=RUNNING, stage="planning")
            jobs.emit(job_id, log="planning")
            graph = _with_constant_data(graph_from_pb(graph_pb2.Graph.FromString(store.get_bytes(job.graph))), store)
            optimized, records = run_passes(graph)
            constants_digest = _store_constants(optimized, store)
            for rec in records:
                if rec.ops_before != rec.ops_after or rec.added:
                    jobs.emit(job_id, log=f"pass {rec.name}: {rec.ops_before} -> {rec.ops_after} ops {list(rec.added)}")
            execution = lower(optimized, job.target)
            digest = store.put_bytes(execution.dumps())
            jobs.update(job_id, plan=digest, constants=constants_digest, stage="compiling")
            jobs.set_pending(job_id, [c.kernel for c in execution.calls])
            jobs.emit(job_id, log=f"planned {len(execution.calls)} kernels from {len(graph.ops)} ops; "
                                  f"activation arena {execution.arena_bytes} bytes "
                                  f"(sum of activations {execution.activation_bytes_total})")
            options = json.loads(job.options)
            queue = get_target(job.target).codegen_queue
            for call in execution.calls:
                app.send_task(farm.TASK_KERNEL, queue=queue, kwargs={
                    "job_id": job_id, "kernel_id": call.kernel, "spec": call.spec.to_json(), "target": job.target,
                    "profile": bool(options.get("profile", False))})
        except Exception as err:  # noqa: BLE001  (a planning failure must end the job, never hang it)
            jobs.finish(job_id, FAILED, error=f"planning failed: {''.join(traceback.format_exception_only(err)).strip()}")

    @app.task(name=farm.TASK_REPORT)
    def report(job_id: str, kernel: str, result: dict) -> None:
        farm.count(r, "tasks")
        job = jobs.get(job_id)
        if job is None or not jobs.is_live(job_id):
            return
        if "error" in result:
            jobs.finish(job_id, FAILED, error=result["error"])
            return
        if kernel == "__link__":
            store.put_ref(f"actions/{job.key}", result["artifact"])
            jobs.finish(job_id, SUCCEEDED, artifact=result["artifact"], log=f"artifact {result['artifact']}")
            return
        left = jobs.report_kernel(job_id, kernel, result)
        if left < 0:
            return  # a redelivered report: already counted
        how = "cached object" if result.get("cached") else "compiled"
        jobs.emit(job_id, log=f"{kernel}: {how} {result['fn']} config={result['config']}")
        if left == 0 and json.loads(job.options or "{}").get("profile_only"):
            results = jobs.kernel_results(job_id)
            profiled = sum(1 for res in results.values() if res.get("profiled"))
            jobs.finish(job_id, SUCCEEDED, log=f"profiled: {profiled} of {len(results)} kernels have fleet timings "
                                                 "(the rest have a single candidate or no profile worker online)")
            return
        if left == 0:
            jobs.update(job_id, stage="linking")
            jobs.emit(job_id, log="linking libmodel.so")
            app.send_task(farm.TASK_LINK, args=[job_id], queue=get_target(job.target).codegen_queue)


def _with_constant_data(graph: Graph, store: BlobStore) -> Graph:
    """Constants uploaded by digest get their bytes: passes fold weights (batch norm, QKV)."""
    return graph.replace(constants=tuple(
        c if c.data is not None else Constant(c.name, c.type, c.sha256, store.get_bytes(c.sha256))
        for c in graph.constants))


def _store_constants(graph: Graph, store: BlobStore) -> str:
    """The planned graph's inputs and constants, each constant by digest (stored once): what the link reads."""
    for c in graph.constants:
        if not store.has(c.sha256):
            store.put_bytes(c.data)
    message = graph_to_pb(graph.replace(ops=(), outputs=()), inline_limit=0)
    return store.put_bytes(message.SerializeToString(deterministic=True))
