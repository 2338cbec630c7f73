"""SubmitCompile as a domain function: validate, key, answer from cache or queue."""
from __future__ import annotations

import json
from dataclasses import dataclass

from celery import Celery

from artifacts import BlobStore
from frontend_svc.errors import FailedPrecondition, Unavailable
from kiln import farm, keys
from kiln.canon import canonical_graph
from kiln.jobs import QUEUED, SUCCEEDED, Job, JobStore
from kiln.shapes import GraphError, infer_types
from kiln.targets import Target, get_target
from kiln.v1 import farm_pb2, graph_pb2
from kiln.validate import graph_from_pb
from kiln.version import compiler_version
from kiln.wire import type_from_pb


@dataclass(frozen=True)
class Frontend:
    store: BlobStore
    jobs: JobStore
    celery: Celery
    job_idle_timeout_s: float = 5400.0

    def job(self, job_id: str) -> Job | None:
        """A job, failed first if it stopped making progress (lazily: no extra process)."""
        if job_id:
            self.jobs.fail_if_stale(job_id, self.job_idle_timeout_s)
        return self.jobs.get(job_id) if job_id else None

    def submit(self, req: farm_pb2.SubmitCompileRequest) -> Job:
        try:
            target = get_target(req.target)
        except ValueError as err:
            raise ValueError(f"target: {err}") from None
        if not req.HasField("graph"):
            raise ValueError("graph: no graph given")
        graph = graph_from_pb(req.graph)
        self._check_dtypes(graph, target)
        self._check_constants(req.graph)
        toolchain = self.jobs.r.hget(farm.TOOLCHAINS_KEY, target.family)
        if not toolchain:
            raise Unavailable(f"no codegen worker for {target.codegen_queue} has registered; start one for target {target.name}")
        options = keys.job_options(req.options.profile, req.options.cuda_graph, req.options.profile_only)
        compiler = compiler_version()
        key = keys.job_key(canonical_graph(graph), target.name, options, compiler, toolchain)
        artifact = self.store.get_ref(f"actions/{key}")
        if artifact and self.store.has(artifact):
            job = Job(JobStore.new_id(), key, target.name, state=SUCCEEDED, stage="succeeded", artifact=artifact,
                      cached=True, options=json.dumps(options), compiler=compiler, toolchain=toolchain)
            self.jobs.create(job)
            self.jobs.emit(job.id, log=f"cache hit: artifact {artifact}")
            farm.count(self.jobs.r, "cache_hits")
            return job
        job_id = JobStore.new_id()
        owner = self.jobs.claim_key(key, job_id)
        if owner != job_id:
            running = self.job(owner)
            if running is not None and self.jobs.is_live(owner):
                return running
            self.jobs.release_key(key, owner)
            self.jobs.claim_key(key, job_id)
        digest = self.store.put_bytes(req.graph.SerializeToString(deterministic=True))
        job = Job(job_id, key, target.name, state=QUEUED, graph=digest, options=json.dumps(options), compiler=compiler,
                  toolchain=toolchain)
        self.jobs.create(job)
        self.celery.send_task(farm.TASK_PLAN, args=[job_id], queue=farm.PLANNER_QUEUE)
        return job

    @staticmethod
    def _check_dtypes(graph, target: Target) -> None:
        for name, t in infer_types(graph).items():
            if t.dtype not in target.dtypes:
                raise GraphError(f"tensor {name!r}", f"dtype {t.dtype.value} is not supported on target {target.name} "
                                                     f"(supported: {sorted(d.value for d in target.dtypes)})")

    def _check_constants(self, graph: graph_pb2.Graph) -> None:
        for i, c in enumerate(graph.constants):
            if c.WhichOneof("data") != "sha256":
                continue
            size = self.store.size(c.sha256)
            if size is None:
                raise FailedPrecondition(f"constants[{i}] (tensor {c.name!r}): blob {c.sha256} is not uploaded; "
                                         "send it with PutBlob first")
            want = type_from_pb(c.type).max_bytes()
            if size != want:
                raise GraphError(f"constants[{i}] (tensor {c.name!r}).sha256", f"blob holds {size} bytes, the type needs {want}")
