"""The gRPC client: submit, watch, fetch by hash."""
from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc

from kiln.ir import Graph
from kiln.manifest import Manifest
from kiln.v1 import farm_pb2, farm_pb2_grpc
from kiln.wire import INLINE_LIMIT, graph_to_pb

MAX_MESSAGE = 512 << 20
TERMINAL = {farm_pb2.SUCCEEDED, farm_pb2.FAILED, farm_pb2.CANCELLED}


class FetchError(RuntimeError):
    pass


class Client:
    def __init__(self, address: str = "127.0.0.1:50051"):
        self.address = address
        self.channel = grpc.insecure_channel(address, options=[("grpc.max_receive_message_length", MAX_MESSAGE),
                                                               ("grpc.max_send_message_length", MAX_MESSAGE)])
        self.stub = farm_pb2_grpc.CompileServiceStub(self.channel)

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- blobs --------------------------------------------------------------
    def put_blob(self, data: bytes) -> str:
        digest = hashlib.sha256(data).hexdigest()
        if self.stub.StatArtifact(farm_pb2.StatArtifactRequest(sha256=digest)).exists:
            return digest

        def chunks() -> Iterator[farm_pb2.BlobChunk]:
            for i in range(0, max(1, len(data)), 1 << 20):
                yield farm_pb2.BlobChunk(sha256=digest, data=data[i:i + (1 << 20)])

        return self.stub.PutBlob(chunks()).sha256

    # --- jobs ---------------------------------------------------------------
    def submit(self, graph: Graph, target: str, *, profile: bool = False, profile_only: bool = False) -> farm_pb2.Job:
        for c in graph.constants:
            if c.data is not None and len(c.data) > INLINE_LIMIT:
                self.put_blob(c.data)
        req = farm_pb2.SubmitCompileRequest(graph=graph_to_pb(graph), target=target,
                                            options=farm_pb2.CompileOptions(profile=profile, profile_only=profile_only))
        return self.stub.SubmitCompile(req).job

    def get(self, job_id: str) -> farm_pb2.Job:
        return self.stub.GetJob(farm_pb2.GetJobRequest(job_id=job_id))

    def cancel(self, job_id: str) -> farm_pb2.Job:
        return self.stub.CancelJob(farm_pb2.CancelJobRequest(job_id=job_id))

    def watch(self, job_id: str, after: str = "") -> Iterator[farm_pb2.JobEvent]:
        yield from self.stub.WatchJob(farm_pb2.WatchJobRequest(job_id=job_id, after=after))

    def wait(self, job_id: str, on_event: Callable[[farm_pb2.JobEvent], None] | None = None,
             timeout_s: float = 3600) -> farm_pb2.Job:
        """Follow the event stream to the end, resuming it if the connection drops."""
        import time

        deadline = time.monotonic() + timeout_s
        after = ""
        while time.monotonic() < deadline:
            try:
                for event in self.watch(job_id, after):
                    after = event.id
                    if on_event:
                        on_event(event)
            except grpc.RpcError as err:
                if err.code() not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                    raise
                time.sleep(0.5)
            job = self.get(job_id)
            if job.state in TERMINAL:
                return job
        raise TimeoutError(f"job {job_id} did not finish in {timeout_s:.0f}s")

    def compile(self, graph: Graph, target: str, *, profile: bool = False, profile_only: bool = False,
                on_event: Callable[[farm_pb2.JobEvent], None] | None = None) -> farm_pb2.Job:
        """Submit and follow to the end. profile_only: profile every kernel, build no artifact."""
        job = self.submit(graph, target, profile=profile, profile_only=profile_only)
        if job.state in TERMINAL:
            return job
        return self.wait(job.id, on_event)

    # --- artifacts ------------------------------------------------------------
    def fetch_blob(self, digest: str, dest: Path) -> None:
        h = hashlib.sha256()
        fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=".fetch-")
        try:
            with os.fdopen(fd, "wb") as f:
                for chunk in self.stub.GetArtifact(farm_pb2.GetArtifactRequest(sha256=digest)):
                    h.update(chunk.data)
                    f.write(chunk.data)
            if h.hexdigest() != digest:
                raise FetchError(f"blob {digest} arrived with sha256 {h.hexdigest()}")
            os.replace(tmp, dest)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)

    def fetch(self, artifact: str, out_dir: str | Path) -> Manifest:
        """Download an artifact (manifest + files), verifying every sha256."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        self.fetch_blob(artifact, out / "manifest.json")
        manifest = Manifest.loads((out / "manifest.json").read_bytes())
        for f in manifest.files:
            if "/" in f.path or f.path.startswith("."):
                raise FetchError(f"manifest names an unsafe path {f.path!r}")
            self.fetch_blob(f.sha256, out / f.path)
        return manifest
