"""The profile.run task: run every candidate, record every timing, send the pick back."""
from __future__ import annotations

import os
import socket
import tempfile

from celery import Celery

from kiln import farm
from kiln.config import Settings
from kiln.jobs import JobStore
from kiln.plan import KernelSpec
from kiln.profiledb import ProfileDB, ProfileRecord
from kiln.targets import get_target
from profile_worker.device import identify
from profile_worker.runner import run_all


def register(app: Celery, settings: Settings) -> None:
    store = settings.open_store()
    r = farm.redis_client(settings)
    jobs = JobStore(r)
    pdb = ProfileDB(r)
    me = f"{socket.gethostname()}.{os.getpid()}"

    @app.task(name=farm.TASK_PROFILE)
    def profile(job_id: str, kernel_id: str, spec: dict, target: str, profilers: list[str],
                points: list[list[int]], configs: list[dict], toolchain: str) -> None:
        farm.count(r, "tasks")
        tgt = get_target(target)
        kspec = KernelSpec.from_json(spec)
        device = identify(tgt.device_kind)
        for profiler, at in zip(profilers, points, strict=True):
            with tempfile.TemporaryDirectory(prefix="kiln-run-") as tmp:
                exe = os.path.join(tmp, "profiler")
                store.get_file(profiler, exe)
                os.chmod(exe, 0o755)
                results = run_all(exe, len(configs), timeout_s=settings.profile_run_timeout_s)
            farm.count(r, "profiles_run", len(results))
            for res in results:
                pdb.put(ProfileRecord(tgt.device_kind, device, toolchain, kspec.key(), configs[res.index], res.ok,
                                      res.median_ms if res.ok else -1.0, res.runs, res.error, me, tuple(at)))
            summary = ", ".join(f"{configs[x.index]}: {x.median_ms:.4f} ms" if x.ok
                                else f"{configs[x.index]}: {x.error}" for x in results)
            if jobs.get(job_id) is not None:
                where = f" at {'x'.join(map(str, at))}" if at else ""
                jobs.emit(job_id, log=f"{kernel_id}: profiled on {me}{where}: {summary}")
        # The database's picks, so this job and every later compile of the kernel agree.
        best = pdb.tuned(tgt.device_kind, toolchain, kspec, configs, points)
        config, profiled = (best, True) if best is not None else (configs[0], False)
        app.send_task(farm.TASK_KERNEL, queue=tgt.codegen_queue, kwargs={
            "job_id": job_id, "kernel_id": kernel_id, "spec": spec, "target": target, "profile": True,
            "config": config, "profiled": profiled})
