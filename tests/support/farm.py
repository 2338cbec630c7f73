"""The whole farm as real processes for end-to-end tests.

Redis is a real redis-server, S3 a real moto HTTP server, the frontend a real
gRPC server in its own process, and every worker a real Celery worker process.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import redis
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.support.redis import free_port

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Farm:
    env: dict[str, str]
    logdir: Path
    grpc_address: str
    redis_url: str
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)

    def start(self, name: str, module: str, *args: str, extra_env: dict[str, str] | None = None) -> None:
        log = open(self.logdir / f"{name}.log", "ab")  # noqa: SIM115  (closed with the process)
        self.procs[name] = subprocess.Popen([sys.executable, "-m", module, *args], cwd=ROOT,
                                            env={**self.env, **(extra_env or {})}, stdout=log, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL, start_new_session=True)

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        proc = self.procs.pop(name)
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass
        proc.wait(timeout=30)

    def stop_all(self) -> None:
        for name in list(self.procs):
            try:
                os.killpg(self.procs[name].pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 15
        for name, proc in list(self.procs.items()):
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            self.procs.pop(name)

    def log(self, name: str) -> str:
        return (self.logdir / f"{name}.log").read_text(errors="replace")

    def redis(self) -> redis.Redis:
        return redis.Redis.from_url(self.redis_url, decode_responses=True)

    def wait_online(self, queue: str, count: int = 1, timeout: float = 60) -> None:
        r = self.redis()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            dead = {n: p.returncode for n, p in self.procs.items() if p.poll() is not None}
            if dead:
                raise RuntimeError(f"farm processes died: {dead}; logs in {self.logdir}")
            if sum(1 for _ in r.scan_iter(match=f"kiln:online:{queue}:*")) >= count:
                return
            time.sleep(0.1)
        raise TimeoutError(f"no worker on {queue} after {timeout}s; logs in {self.logdir}")

    def wait_frontend(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        with grpc.insecure_channel(self.grpc_address) as ch:
            stub = health_pb2_grpc.HealthStub(ch)
            while time.monotonic() < deadline:
                try:
                    if stub.Check(health_pb2.HealthCheckRequest(), timeout=1).status == 1:
                        return
                except grpc.RpcError:
                    time.sleep(0.1)
        raise TimeoutError(f"frontend not healthy; log:\n{self.log('frontend')[-2000:]}")

    def stats(self) -> dict[str, int]:
        return {k: int(v) for k, v in self.redis().hgetall("kiln:stats").items()}


def farm_env(redis_url: str, store_url: str, s3_endpoint: str | None, grpc_port: int, work_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KILN_", "AWS_"))}
    env.update({
        "KILN_REDIS_URL": redis_url, "KILN_STORE_URL": store_url, "KILN_GRPC_LISTEN": f"127.0.0.1:{grpc_port}",
        "KILN_WORK_DIR": str(work_dir), "KILN_VISIBILITY_TIMEOUT": "10", "KILN_HEARTBEAT": "1",
        # A planted hanging candidate costs this, and it must end well inside the visibility timeout.
        "KILN_PROFILE_RUN_TIMEOUT": "5",
        "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
        "PYTHONUNBUFFERED": "1",
    })
    if s3_endpoint:
        env["KILN_S3_ENDPOINT_URL"] = s3_endpoint
    return env


def new_farm(redis_url: str, store_url: str, s3_endpoint: str | None, tmp: Path) -> Farm:
    port = free_port()
    (tmp / "logs").mkdir(parents=True, exist_ok=True)
    env = farm_env(redis_url, store_url, s3_endpoint, port, tmp / "work")
    return Farm(env, tmp / "logs", f"127.0.0.1:{port}", redis_url)
