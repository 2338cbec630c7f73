"""Job state in Redis: one module that the frontend and the planner both use.

A job is a hash, its events a Redis stream (so a watcher can resume and a
restarted frontend still knows every job), its kernels a pending set plus a
results hash advanced atomically, so a redelivered report counts once.
"""
from __future__ import annotations

import json
import time
import uuid
from dataclasses import asdict, dataclass, field
from typing import Any

import redis

QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED = "QUEUED", "RUNNING", "SUCCEEDED", "FAILED", "CANCELLED"
TERMINAL = frozenset({SUCCEEDED, FAILED, CANCELLED})
JOB_TTL_S = 30 * 24 * 3600


@dataclass
class Job:
    id: str
    key: str
    target: str
    state: str = QUEUED
    stage: str = "queued"
    done: int = 0
    total: int = 0
    artifact: str = ""
    error: str = ""
    cached: bool = False
    created: float = field(default_factory=time.time)
    finished: float = 0.0
    graph: str = ""      # digest of the submitted graph in the artifact store
    plan: str = ""       # digest of the ExecutionPlan
    options: str = "{}"  # JSON
    # Digest of a Graph message with the planned graph's inputs and constants
    # (passes make constants; the link reads them from here). Its ops are not
    # stored: fused ops carry internal attributes that have no wire form.
    constants: str = ""
    # The compiler version and toolchain the key covers, as the frontend saw them: the manifest records these, not
    # the linking worker's own (code changed under a running worker would otherwise name an artifact's key wrongly).
    compiler: str = ""
    toolchain: str = ""

    @staticmethod
    def from_hash(h: dict[str, str]) -> Job:
        return Job(
            id=h["id"], key=h["key"], target=h["target"], state=h["state"], stage=h["stage"], done=int(h["done"]),
            total=int(h["total"]), artifact=h["artifact"], error=h["error"], cached=h["cached"] == "1",
            created=float(h["created"]), finished=float(h["finished"]), graph=h["graph"], plan=h["plan"],
            options=h["options"], constants=h.get("constants", ""), compiler=h.get("compiler", ""),
            toolchain=h.get("toolchain", ""))

    def to_hash(self) -> dict[str, str]:
        return {k: _encode(v) for k, v in asdict(self).items()}


def _encode(value: Any) -> str:
    """Redis hash fields are strings; bools read back through `== "1"`."""
    return "1" if value is True else "0" if value is False else str(value)


@dataclass(frozen=True)
class Event:
    id: str
    stage: str
    done: int
    total: int
    log: str
    error: str
    state: str
    artifact: str


_UPDATE = """
-- ARGV: n, n terminal states, then field/value pairs. Ended and unknown jobs are left alone.
local state = redis.call('HGET', KEYS[1], 'state')
if not state then return 0 end
local n = tonumber(ARGV[1])
for i = 2, n + 1 do
  if state == ARGV[i] then return 0 end
end
for i = n + 2, #ARGV, 2 do
  redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
end
return 1
"""
_REPORT = """
if redis.call('SREM', KEYS[1], ARGV[1]) == 1 then
  redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
  redis.call('HINCRBY', KEYS[3], 'done', 1)
  return redis.call('SCARD', KEYS[1])
end
return -1
"""


class JobStore:
    def __init__(self, r: redis.Redis):
        self.r = r
        self._report = r.register_script(_REPORT)
        self._update = r.register_script(_UPDATE)

    @staticmethod
    def new_id() -> str:
        return uuid.uuid4().hex

    def _k(self, job_id: str, part: str = "") -> str:
        return f"kiln:job:{job_id}{':' + part if part else ''}"

    def create(self, job: Job) -> None:
        self.r.hset(self._k(job.id), mapping=job.to_hash())
        self.r.expire(self._k(job.id), JOB_TTL_S)
        self.emit(job.id, log=f"job {job.id} {job.state.lower()} for {job.target}")

    def get(self, job_id: str) -> Job | None:
        h = self.r.hgetall(self._k(job_id))
        return Job.from_hash(h) if h else None

    def update(self, job_id: str, **fields: Any) -> None:
        unknown = set(fields) - set(Job.__dataclass_fields__)
        if unknown:
            raise KeyError(f"jobs have no field(s) {sorted(unknown)}")
        # Atomic with finish(): a worker's late "running" must not undo a cancel or a failure.
        flat = [x for k, v in fields.items() for x in (k, _encode(v))]
        self._update(keys=[self._k(job_id)], args=[len(TERMINAL), *sorted(TERMINAL), *flat])

    def emit(self, job_id: str, *, log: str = "", error: str = "", stage: str | None = None) -> None:
        job = self.get(job_id)
        if job is None:
            return
        fields = {"stage": stage or job.stage, "done": job.done, "total": job.total, "log": log, "error": error,
                  "state": job.state, "artifact": job.artifact}
        self.r.xadd(self._k(job_id, "events"), fields, maxlen=10_000, approximate=True)
        self.r.expire(self._k(job_id, "events"), JOB_TTL_S)

    def events(self, job_id: str, after: str = "0", block_ms: int = 1000) -> list[Event]:
        got = self.r.xread({self._k(job_id, "events"): after or "0"}, block=block_ms, count=500)
        out = []
        for _, entries in got:
            for eid, f in entries:
                out.append(Event(eid, f["stage"], int(f["done"]), int(f["total"]), f["log"], f["error"], f["state"],
                                 f["artifact"]))
        return out

    # --- dedup of concurrent identical jobs -----------------------------------
    def claim_key(self, key: str, job_id: str) -> str:
        """Returns the id of the job that owns this key (ours if we got it)."""
        if self.r.set(f"kiln:jobkey:{key}", job_id, nx=True, ex=JOB_TTL_S):
            return job_id
        return self.r.get(f"kiln:jobkey:{key}") or job_id

    def release_key(self, key: str, job_id: str) -> None:
        if self.r.get(f"kiln:jobkey:{key}") == job_id:
            self.r.delete(f"kiln:jobkey:{key}")

    # --- kernels ------------------------------------------------------------
    def set_pending(self, job_id: str, kernels: list[str]) -> None:
        pipe = self.r.pipeline()
        pipe.delete(self._k(job_id, "pending"), self._k(job_id, "kernels"))
        if kernels:
            pipe.sadd(self._k(job_id, "pending"), *kernels)
        pipe.hset(self._k(job_id), mapping={"done": 0, "total": len(kernels)})
        pipe.expire(self._k(job_id, "pending"), JOB_TTL_S)
        pipe.execute()

    def report_kernel(self, job_id: str, kernel: str, result: dict[str, Any]) -> int:
        """Record one kernel's result; returns kernels still pending, or -1 if already recorded."""
        return int(self._report(keys=[self._k(job_id, "pending"), self._k(job_id, "kernels"), self._k(job_id)],
                                args=[kernel, json.dumps(result, sort_keys=True)]))

    def kernel_results(self, job_id: str) -> dict[str, dict[str, Any]]:
        return {k: json.loads(v) for k, v in self.r.hgetall(self._k(job_id, "kernels")).items()}

    def finish(self, job_id: str, state: str, *, artifact: str = "", error: str = "", log: str = "") -> bool:
        """Move to a terminal state once; returns False if the job had already ended."""
        with self.r.pipeline() as pipe:
            while True:
                try:
                    pipe.watch(self._k(job_id))
                    current = pipe.hget(self._k(job_id), "state")
                    if current is None or current in TERMINAL:
                        pipe.unwatch()
                        return False
                    pipe.multi()
                    pipe.hset(self._k(job_id), mapping={"state": state, "artifact": artifact, "error": error,
                                                        "finished": str(time.time()), "stage": state.lower()})
                    pipe.execute()
                    break
                except redis.WatchError:
                    continue
        job = self.get(job_id)
        if job:
            self.release_key(job.key, job_id)
        self.emit(job_id, log=log or f"job {state.lower()}", error=error)
        return True

    def idle_seconds(self, job_id: str) -> float:
        """Seconds since the job's last event (stream ids are millisecond timestamps)."""
        last = self.r.xrevrange(self._k(job_id, "events"), count=1)
        if not last:
            return 0.0
        now_s, now_us = self.r.time()
        return max(0.0, now_s + now_us / 1e6 - int(last[0][0].split("-")[0]) / 1000)

    def fail_if_stale(self, job_id: str, idle_timeout_s: float) -> bool:
        """End a live job that has made no progress for idle_timeout_s; True if it did."""
        if not self.is_live(job_id) or self.idle_seconds(job_id) < idle_timeout_s:
            return False
        return self.finish(job_id, FAILED, error=f"no progress for {idle_timeout_s:.0f}s: a task was lost "
                                                 "(see the workers' logs); submit again to retry")

    def is_live(self, job_id: str) -> bool:
        state = self.r.hget(self._k(job_id), "state")
        return state is not None and state not in TERMINAL
