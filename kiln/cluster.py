"""A local cluster without Docker: the compose file's services as processes.

It reads docker-compose.yml, so the local cluster and the containers run the
same commands with the same environment; only the addresses differ (Redis
on a free loopback port, the artifact store as a local directory).
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import yaml

from kiln.version import ROOT

COMPOSE = ROOT / "docker-compose.yml"
DEFAULT_DIR = ROOT / ".state" / "cluster"


@dataclass
class Proc:
    name: str
    pid: int
    log: str
    command: list[str]


@dataclass
class ClusterState:
    dir: str
    redis_port: int
    redis_url: str
    grpc_address: str
    store_url: str
    procs: list[Proc]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _runnable(service: str, command: list[str]) -> tuple[bool, str]:
    """Which compose services make sense on this machine."""
    queues = command[command.index("--queues") + 1] if "--queues" in command else ""
    if queues == "codegen.cuda" and not shutil.which("nvcc"):
        return False, "no nvcc"
    if queues == "codegen.rocm" and not shutil.which("hipcc"):
        return False, "no hipcc"
    if queues.startswith("profile.cuda") and not shutil.which("nvidia-smi"):
        return False, "no NVIDIA GPU"
    if queues.startswith("profile.rocm") and not os.path.exists("/dev/kfd"):
        return False, "no AMD GPU"
    return True, ""


def compose_services(path: Path = COMPOSE) -> dict[str, tuple[list[str], dict[str, str]]]:
    """Kiln services of the compose file: name -> (command, environment)."""
    spec = yaml.safe_load(path.read_text())
    out = {}
    for name, svc in spec["services"].items():
        cmd = svc.get("command")
        if isinstance(cmd, list) and cmd[:2] == ["python", "-m"]:
            out[name] = ([str(c) for c in cmd], {k: str(v) for k, v in (svc.get("environment") or {}).items()})
    return out


def local_env(env: dict[str, str], redis_url: str, store_url: str, grpc_listen: str, work_dir: str) -> dict[str, str]:
    overrides = {"KILN_REDIS_URL": redis_url, "KILN_STORE_URL": store_url, "KILN_GRPC_LISTEN": grpc_listen,
                 "KILN_WORK_DIR": work_dir, "KILN_S3_ENDPOINT_URL": ""}
    return {**env, **overrides}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie is not alive
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except OSError:
        return False


def load_state(state_dir: Path = DEFAULT_DIR) -> ClusterState | None:
    path = state_dir / "cluster.json"
    if not path.exists():
        return None
    d = json.loads(path.read_text())
    d["procs"] = [Proc(**p) for p in d["procs"]]
    return ClusterState(**d)


def up(state_dir: Path = DEFAULT_DIR, grpc_port: int | None = None, log=print,
       extra_env: dict[str, str] | None = None) -> ClusterState:
    state = load_state(state_dir)
    if state and all(_alive(p.pid) for p in state.procs):
        log(f"cluster already up: frontend {state.grpc_address}")
        return state
    if state:
        down(state_dir, log=lambda *_: None)
    if not shutil.which("redis-server"):
        raise RuntimeError("redis-server is not installed (apt-get install redis-server)")
    state_dir.mkdir(parents=True, exist_ok=True)
    for sub in ("logs", "store", "work", "redis"):
        (state_dir / sub).mkdir(exist_ok=True)
    redis_port = free_port()
    subprocess.run(["redis-server", "--bind", "127.0.0.1", "--port", str(redis_port), "--appendonly", "yes",
                    "--maxmemory-policy", "noeviction", "--save", "", "--daemonize", "yes",
                    "--dir", str(state_dir / "redis"), "--pidfile", str(state_dir / "redis" / "redis.pid"),
                    "--logfile", str(state_dir / "logs" / "redis.log")], check=True)
    redis_pid = _wait_pidfile(state_dir / "redis" / "redis.pid")
    procs = [Proc("redis", redis_pid, str(state_dir / "logs" / "redis.log"), ["redis-server"])]
    redis_url = f"redis://127.0.0.1:{redis_port}/0"
    port = grpc_port or free_port()
    store_url = str(state_dir / "store")
    for name, (cmd, env) in compose_services().items():
        ok, why = _runnable(name, cmd)
        if not ok:
            log(f"  skip {name}: {why}")
            continue
        full_env = {**os.environ, **local_env(env, redis_url, store_url, f"127.0.0.1:{port}", str(state_dir / "work")),
                    **(extra_env or {})}
        argv = [sys.executable, *cmd[1:]]
        logfile = state_dir / "logs" / f"{name}.log"
        with open(logfile, "ab") as out:
            p = subprocess.Popen(argv, env=full_env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                 start_new_session=True, cwd=str(ROOT))
        procs.append(Proc(name, p.pid, str(logfile), argv))
        log(f"  started {name} (pid {p.pid})")
    state = ClusterState(str(state_dir), redis_port, redis_url, f"127.0.0.1:{port}", store_url, procs)
    (state_dir / "cluster.json").write_text(json.dumps(asdict(state), indent=1))
    wait_ready(state)
    log(f"cluster up: frontend {state.grpc_address}, redis {redis_url}, store {store_url}")
    return state


def _wait_pidfile(path: Path, timeout: float = 10) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and path.read_text().strip():
            return int(path.read_text())
        time.sleep(0.05)
    raise RuntimeError(f"redis-server did not start (no {path})")


def wait_ready(state: ClusterState, timeout: float = 60) -> None:
    """Until the frontend answers health checks and every codegen worker registered."""
    import grpc
    import redis
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    deadline = time.monotonic() + timeout
    codegen = [p for p in state.procs if "codegen_worker" in " ".join(p.command)]
    r = redis.Redis.from_url(state.redis_url, decode_responses=True)
    with grpc.insecure_channel(state.grpc_address) as ch:
        stub = health_pb2_grpc.HealthStub(ch)
        while time.monotonic() < deadline:
            dead = [p.name for p in state.procs if not _alive(p.pid)]
            if dead:
                raise RuntimeError(f"cluster services died at start: {dead}; see logs in {state.dir}/logs")
            try:
                ok = stub.Check(health_pb2.HealthCheckRequest(), timeout=1).status == health_pb2.HealthCheckResponse.SERVING
            except grpc.RpcError:
                ok = False
            online = sum(1 for _ in r.scan_iter(match="kiln:online:codegen.*"))
            if ok and online >= len(codegen):
                return
            time.sleep(0.2)
    raise RuntimeError(f"cluster not ready after {timeout:.0f}s; see logs in {state.dir}/logs")


def status(state_dir: Path = DEFAULT_DIR) -> list[tuple[str, int, bool]]:
    state = load_state(state_dir)
    if state is None:
        return []
    return [(p.name, p.pid, _alive(p.pid)) for p in state.procs]


def down(state_dir: Path = DEFAULT_DIR, log=print, timeout: float = 15) -> None:
    state = load_state(state_dir)
    if state is None:
        log("no cluster state; nothing to stop")
        return
    # Workers first, Redis last, so that nothing loses its broker mid-shutdown.
    for p in reversed(state.procs):
        if not _alive(p.pid):
            continue
        try:
            if p.name == "redis":
                os.kill(p.pid, signal.SIGTERM)
            else:
                os.killpg(p.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(_alive(p.pid) for p in state.procs):
        time.sleep(0.1)
    for p in state.procs:
        if _alive(p.pid):
            try:
                os.killpg(p.pid, signal.SIGKILL) if p.name != "redis" else os.kill(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    (state_dir / "cluster.json").unlink(missing_ok=True)
    log("cluster down")
