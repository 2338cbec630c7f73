"""Celery tasks of the codegen worker: choose a config, compile a kernel, link.

Every output is stored by content key before it is reported, so a task run
twice (redelivery after a crash) finds its own result and reports it again;
the planner counts each kernel once.
"""
from __future__ import annotations

import json
import os
import tempfile
import traceback
from pathlib import Path
from typing import Any

from celery import Celery
from celery.exceptions import SoftTimeLimitExceeded

from artifacts import BlobStore
from codegen_worker import build
from codegen_worker.backends import Backend, get_backend
from kiln import farm
from kiln.config import Settings
from kiln.jobs import JobStore
from kiln.manifest import FORMAT, FileEntry, KernelEntry, Manifest, TensorSig
from kiln.plan import ExecutionPlan, KernelSpec
from kiln.profiledb import ProfileDB
from kiln.targets import Target, get_target
from kiln.tuning import profile_points
from kiln.v1 import graph_pb2
from kiln.version import compiler_version
from kiln.wire import type_from_pb


def compiled_object(store: BlobStore, r, backend: Backend, target: Target, rk: build.RenderedKernel,
                    lock_timeout: float) -> tuple[str, bool]:
    """The stored object for a rendered kernel: (blob digest, was it cached)."""
    ref = f"objects/{rk.object_key}"
    found = store.get_ref(ref)
    if found:
        return found, True
    # One compile per object in the whole fleet: others wait for the holder.
    with farm.fleet_lock(r, f"kiln:lock:{ref}", wait_s=lock_timeout):
        found = store.get_ref(ref)
        if found:
            return found, True
        data, _log = build.compile_kernel(backend, target, rk)
        digest = store.put_bytes(data)
        store.put_ref(ref, digest)
        farm.count(r, "compiles")
        farm.count(r, f"compiles.{target.family}")
        return digest, False


def register(app: Celery, settings: Settings) -> None:
    store = settings.open_store()
    r = farm.redis_client(settings)
    jobs = JobStore(r)
    pdb = ProfileDB(r)

    def report(job_id: str, kernel: str, result: dict[str, Any]) -> None:
        app.send_task(farm.TASK_REPORT, args=[job_id, kernel, result], queue=farm.PLANNER_QUEUE)

    def fail(job_id: str, kernel: str, err: BaseException) -> None:
        text = str(err) if not isinstance(err, SoftTimeLimitExceeded) else "task time limit exceeded"
        if not isinstance(err, (build.CompileError, ValueError, SoftTimeLimitExceeded)):
            text = "".join(traceback.format_exception_only(err)).strip()
        report(job_id, kernel, {"error": f"{kernel}: {text}"})

    def choose_config(job_id: str, kernel_id: str, spec: KernelSpec, target: Target, backend: Backend,
                      spec_json: dict) -> tuple[dict | None, bool]:
        """(config, profiled); config None means profiling was dispatched."""
        candidates = backend.candidate_configs(spec, target)
        if len(candidates) == 1:
            return candidates[0], False
        toolchain = backend.toolchain_version()
        config = pdb.tuned(target.device_kind, toolchain, spec, candidates)
        if config is not None:
            jobs.emit(job_id, log=f"{kernel_id}: config {config} from the fleet profile database")
            return config, True
        points = profile_points(spec)
        if not farm.workers_online(r, target.profile_queue):
            jobs.emit(job_id, log=f"{kernel_id}: no worker online for {target.profile_queue}; heuristic config")
            return candidates[0], False
        rks = [build.render(backend, target, spec, c) for c in candidates]
        objects = [store.get_bytes(compiled_object(store, r, backend, target, rk, settings.task_hard_limit_s)[0])
                   for rk in rks]
        profilers = []
        with tempfile.TemporaryDirectory(prefix="kiln-prof-", dir=_workdir(settings)) as tmp:
            for i, at in enumerate(points):  # one executable per point: the shapes are compiled in
                exe = build.build_profiler(backend, target, spec, rks, objects, Path(tmp) / str(i), at)
                profilers.append(store.put_file(exe))
        farm.count(r, "profilers_built", len(profilers))
        jobs.emit(job_id, log=f"{kernel_id}: profiling {len(candidates)} candidates at {len(points)} point(s) "
                              f"on {target.device_kind}")
        app.send_task(farm.TASK_PROFILE, queue=target.profile_queue, kwargs={
            "job_id": job_id, "kernel_id": kernel_id, "spec": spec_json, "target": target.name,
            "profilers": profilers, "points": points, "configs": candidates, "toolchain": toolchain})
        return None, False

    @app.task(name=farm.TASK_KERNEL)
    def kernel(job_id: str, kernel_id: str, spec: dict, target: str, profile: bool = False,
               config: dict | None = None, profiled: bool = False) -> None:
        farm.count(r, "tasks")
        if not jobs.is_live(job_id):
            return
        try:
            tgt = get_target(target)
            backend = get_backend(tgt.family)
            kspec = KernelSpec.from_json(spec)
            backend.check(kspec, tgt)
            if config is None:
                if profile:
                    config, profiled = choose_config(job_id, kernel_id, kspec, tgt, backend, spec)
                    if config is None:
                        return  # the profile worker sends this kernel back with its pick
                else:
                    config = backend.default_config(kspec, tgt)
            if _profile_only(jobs, job_id):
                # Warming the profile database: the config is known and recorded; no object is needed.
                report(job_id, kernel_id, {"fn": "", "object": "", "object_key": "", "config": config,
                                           "profiled": profiled, "cached": False, "spec_key": kspec.key()})
                return
            rk = build.render(backend, tgt, kspec, config)
            digest, cached = compiled_object(store, r, backend, tgt, rk, settings.task_hard_limit_s)
            # A dispatch kernel calls one object per range: the link needs them all.
            parts = {part.fn: compiled_object(store, r, backend, tgt, part, settings.task_hard_limit_s)[0]
                     for part in rk.parts}
            report(job_id, kernel_id, {"fn": rk.fn, "object": digest, "object_key": rk.object_key, "config": config,
                                       "profiled": profiled, "cached": cached, "spec_key": kspec.key(),
                                       "parts": parts})
        except Exception as err:  # noqa: BLE001  (every failure must reach the job)
            fail(job_id, kernel_id, err)

    @app.task(name=farm.TASK_LINK)
    def link(job_id: str) -> None:
        farm.count(r, "tasks")
        job = jobs.get(job_id)
        if job is None or not jobs.is_live(job_id):
            return
        try:
            report(job_id, "__link__", {"artifact": link_artifact(store, job, jobs.kernel_results(job_id))})
        except Exception as err:  # noqa: BLE001
            fail(job_id, "link", err)

    def link_artifact(store: BlobStore, job, results: dict[str, dict]) -> str:
        plan = ExecutionPlan.loads(store.get_bytes(job.plan))
        tgt = get_target(job.target)
        backend = get_backend(tgt.family)
        graph = graph_pb2.Graph.FromString(store.get_bytes(job.constants or job.graph))
        by_name = {c.name: c for c in graph.constants}  # passes make constants: read the planned ones
        constants = []
        for buf in plan.of_kind("constant"):
            c = by_name[buf.name]
            constants.append(bytes(c.inline) if c.WhichOneof("data") == "inline" else store.get_bytes(c.sha256))
        fns = {k: results[k]["fn"] for k in results}
        # One object per function: two equal sources compiled apart (nvcc output is not
        # byte-identical run to run) must not both reach the linker.
        chosen = {}
        for v in sorted(results.values(), key=lambda v: (v["fn"], v["object"])):
            chosen.setdefault(v["fn"], v["object"])
        for v in sorted(results.values(), key=lambda v: (v["fn"], v["object"])):
            for fn, obj in sorted(v.get("parts", {}).items()):
                chosen.setdefault(fn, obj)
        objects = [store.get_bytes(obj) for obj in chosen.values()]
        with tempfile.TemporaryDirectory(prefix="kiln-link-", dir=_workdir(settings)) as tmp:
            linked = build.link(backend, tgt, plan, fns, objects, constants, Path(tmp))
            files = [FileEntry("libmodel.so", store.put_file(linked.lib), linked.lib.stat().st_size)]
            if linked.weights:
                files.append(FileEntry("weights.bin", store.put_file(linked.weights), linked.weights.stat().st_size))
        farm.count(r, "links")
        symbols_types = {t.name: type_from_pb(t.type) for t in graph.inputs}
        manifest = Manifest(
            format=FORMAT, graph=plan.graph_name, target=job.target, job_key=job.key,
            compiler_version=job.compiler or compiler_version(), toolchain=job.toolchain or backend.toolchain_version(),
            inputs=tuple(TensorSig(b.name, b.type.dtype, symbols_types[b.name].shape) for b in plan.of_kind("input")),
            outputs=tuple(TensorSig(b.name, b.type.dtype, b.type.shape) for b in plan.of_kind("output")),
            symbols=plan.symbols, files=tuple(files),
            kernels=tuple(KernelEntry(c.kernel, c.source_ops, results[c.kernel]["spec_key"], results[c.kernel]["fn"],
                                      chosen[results[c.kernel]["fn"]], results[c.kernel]["config"],
                                      results[c.kernel]["profiled"]) for c in plan.calls),
            arena_bytes=plan.arena_bytes,
            profiled=all(results[c.kernel]["profiled"] for c in plan.calls))
        return store.put_bytes(manifest.dumps())


def _profile_only(jobs: JobStore, job_id: str) -> bool:
    job = jobs.get(job_id)
    return bool(job and json.loads(job.options or "{}").get("profile_only"))


def _workdir(settings: Settings) -> str:
    os.makedirs(settings.work_dir, exist_ok=True)
    return settings.work_dir

