"""What the services agree on: task names, queues, Celery settings, presence.

Services send each other tasks by these names; none imports another.
"""
from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading

import redis
from celery import Celery

from kiln.config import Settings

PLANNER_QUEUE = "planner"
TASK_PLAN = "planner.plan"
TASK_REPORT = "planner.report"
TASK_KERNEL = "codegen.kernel"
TASK_LINK = "codegen.link"
TASK_PROFILE = "profile.run"

TOOLCHAINS_KEY = "kiln:toolchains"
STATS_KEY = "kiln:stats"

log = logging.getLogger(__name__)


def make_celery(settings: Settings, name: str) -> Celery:
    app = Celery(name, broker=settings.redis_url)
    transport = {"visibility_timeout": settings.visibility_timeout_s}
    app.conf.update(
        task_acks_late=True,                 # a task is acknowledged only once done...
        task_reject_on_worker_lost=True,     # ...and requeued if its worker dies (tasks are idempotent)
        worker_prefetch_multiplier=1,        # long tasks: never hoard messages
        task_soft_time_limit=settings.task_soft_limit_s,
        task_time_limit=settings.task_hard_limit_s,
        task_ignore_result=True,             # tasks report by message, not through a result backend
        broker_transport_options=transport,
        result_backend_transport_options=transport,
        broker_connection_retry_on_startup=True,
        task_serializer="json",
        accept_content=["json"],
        worker_hijack_root_logger=False,
        task_default_queue=PLANNER_QUEUE,
    )
    return app


def redis_client(settings: Settings) -> redis.Redis:
    return redis.Redis.from_url(settings.redis_url, decode_responses=True)


def count(r: redis.Redis, stat: str, n: int = 1) -> None:
    r.hincrby(STATS_KEY, stat, n)


def online_key(queue: str, host: str) -> str:
    return f"kiln:online:{queue}:{host}"


def workers_online(r: redis.Redis, queue: str) -> list[str]:
    return [k.rsplit(":", 1)[-1] for k in r.scan_iter(match=f"kiln:online:{queue}:*", count=1000)]


def start_heartbeat(settings: Settings, queues: list[str], info: str = "") -> threading.Event:
    """Announce this worker on its queues until the returned event is set."""
    stop = threading.Event()
    host = f"{socket.gethostname()}.{os.getpid()}"
    r = redis_client(settings)
    ttl = max(3, int(settings.heartbeat_s * 3))

    def announce() -> None:
        try:
            for q in queues:
                r.set(online_key(q, host), info or "1", ex=ttl)
        except redis.RedisError:
            pass  # the broker is down: Celery itself will say so

    def beat() -> None:
        while not stop.wait(settings.heartbeat_s):
            announce()
        for q in queues:
            try:
                r.delete(online_key(q, host))
            except redis.RedisError:
                pass

    announce()  # before the worker takes tasks, so the fleet sees it at once
    threading.Thread(target=beat, name="kiln-heartbeat", daemon=True).start()
    return stop


def run_worker(app: Celery, queues: list[str], name: str, concurrency: int, pool: str = "prefork") -> None:
    """Start a Celery worker in this process (blocks until shutdown)."""
    app.worker_main(["worker", "-Q", ",".join(queues), "-n", f"{name}-{os.getpid()}@%h", "--concurrency", str(concurrency),
                     "--loglevel", "INFO", "-P", pool, "--without-gossip", "--without-mingle"])


def worker_args(argv: list[str] | None, default_concurrency: int):
    import argparse

    parser = argparse.ArgumentParser()
    parser.add_argument("--queues", required=True, help="comma-separated queue names")
    parser.add_argument("--concurrency", type=int, default=int(os.environ.get("KILN_CONCURRENCY", default_concurrency)))
    args = parser.parse_args(argv)
    args.queues = [q for q in args.queues.split(",") if q]
    return args


@contextlib.contextmanager
def fleet_lock(r: redis.Redis, name: str, wait_s: float, ttl_s: float = 20.0):
    """A Redis lock kept alive while its holder lives.

    The TTL is short and renewed by a thread, so a worker killed mid-compile
    frees the lock within ttl_s and the redelivered task is not stuck behind it.
    """
    # thread_local=False: the keeper thread below extends the lock, and a
    # thread-local token would be invisible to it (the lock then silently
    # expired mid-compile and a second worker compiled the same object).
    lock = r.lock(name, timeout=ttl_s, blocking_timeout=wait_s, thread_local=False)
    if not lock.acquire():
        raise TimeoutError(f"waited {wait_s:.0f}s for {name}")
    stop = threading.Event()

    def renew() -> None:
        while not stop.wait(ttl_s / 3):
            try:
                lock.extend(ttl_s, replace_ttl=True)
            except Exception as err:  # noqa: BLE001  (lost lock: the holder finishes anyway)
                log.warning("lost fleet lock %s: %s", name, err)
                return

    keeper = threading.Thread(target=renew, name="kiln-lock-keeper", daemon=True)
    keeper.start()
    try:
        yield
    finally:
        stop.set()
        keeper.join()
        try:
            lock.release()
        except redis.exceptions.LockError:
            pass
