"""The CompileService servicer: translation between the wire and domain functions only."""
from __future__ import annotations

import hashlib
import os
import re
import tempfile

from frontend_svc.errors import NotFound, translate
from frontend_svc.submit import Frontend
from kiln.jobs import TERMINAL, Event, Job
from kiln.v1 import farm_pb2, farm_pb2_grpc

CHUNK = 1 << 20
MAX_BLOB = 16 << 30
_HEX = re.compile(r"^[0-9a-f]{64}$")


def job_to_pb(job: Job) -> farm_pb2.Job:
    return farm_pb2.Job(id=job.id, key=job.key, target=job.target, state=farm_pb2.JobState.Value(job.state), stage=job.stage,
                        done=job.done, total=job.total, artifact=job.artifact, error=job.error, cached=job.cached,
                        created_unix=job.created, finished_unix=job.finished)


def event_to_pb(e: Event) -> farm_pb2.JobEvent:
    return farm_pb2.JobEvent(id=e.id, stage=e.stage, done=e.done, total=e.total, log=e.log, error=e.error,
                             state=farm_pb2.JobState.Value(e.state), artifact=e.artifact)


def _digest(value: str, field: str) -> str:
    if not _HEX.match(value):
        raise ValueError(f"{field}: {value[:70]!r} is not a lowercase sha256 hex digest")
    return value


class CompileServicer(farm_pb2_grpc.CompileServiceServicer):
    def __init__(self, frontend: Frontend):
        self.f = frontend

    def _job(self, job_id: str) -> Job:
        job = self.f.job(job_id)
        if job is None:
            raise NotFound(f"job {job_id[:64]!r} not found")
        return job

    @translate
    def SubmitCompile(self, request, context):
        return farm_pb2.SubmitCompileResponse(job=job_to_pb(self.f.submit(request)))

    @translate
    def GetJob(self, request, context):
        return job_to_pb(self._job(request.job_id))

    @translate
    def CancelJob(self, request, context):
        job = self._job(request.job_id)
        if job.state not in TERMINAL:
            self.f.jobs.finish(job.id, "CANCELLED", log="cancelled by request")
        return job_to_pb(self._job(request.job_id))

    @translate
    def WatchJob(self, request, context):
        self._job(request.job_id)
        after = request.after or "0"
        while context.is_active():
            for event in self.f.jobs.events(request.job_id, after, block_ms=500):
                after = event.id
                yield event_to_pb(event)
                if event.state in TERMINAL:
                    return
            job = self._job(request.job_id)
            if job.state in TERMINAL and not self.f.jobs.events(request.job_id, after, block_ms=1):
                return

    @translate
    def StatArtifact(self, request, context):
        size = self.f.store.size(_digest(request.sha256, "sha256"))
        return farm_pb2.StatArtifactResponse(exists=size is not None, size=size or 0)

    @translate
    def GetArtifact(self, request, context):
        digest = _digest(request.sha256, "sha256")
        total = self.f.store.size(digest)
        if total is None:
            raise NotFound(f"blob {digest} not found")
        offset = 0
        for chunk in self.f.store.iter_chunks(digest, CHUNK):
            yield farm_pb2.ArtifactChunk(data=chunk, offset=offset, total_size=total)
            offset += len(chunk)

    @translate
    def PutBlob(self, request_iterator, context):
        claimed = None
        h = hashlib.sha256()
        size = 0
        fd, path = tempfile.mkstemp(prefix="kiln-upload-")
        try:
            with os.fdopen(fd, "wb") as f:
                for chunk in request_iterator:
                    if claimed is None:
                        claimed = _digest(chunk.sha256, "sha256")
                    size += len(chunk.data)
                    if size > MAX_BLOB:
                        raise ValueError(f"blob exceeds {MAX_BLOB} bytes")
                    h.update(chunk.data)
                    f.write(chunk.data)
            if claimed is None:
                raise ValueError("PutBlob: empty stream; the first chunk must name the sha256")
            if h.hexdigest() != claimed:
                raise ValueError(f"sha256: uploaded bytes hash to {h.hexdigest()}, not the claimed {claimed}")
            self.f.store.put_file(path)
        finally:
            os.unlink(path)
        return farm_pb2.PutBlobResponse(sha256=claimed, size=size)


