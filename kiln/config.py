"""All knobs in one typed place, read from the environment once, in `main`."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Settings:
    redis_url: str = "redis://127.0.0.1:6379/0"
    store_url: str = str(Path.home() / ".cache" / "kiln" / "store")
    s3_endpoint_url: str | None = None
    grpc_listen: str = "127.0.0.1:50051"
    work_dir: str = "/tmp/kiln-work"
    cache_dir: str | None = None
    # Celery: redelivery after a lost worker waits this long, so it must
    # outlast the longest task (a CUTLASS sm90 build is about a minute).
    visibility_timeout_s: int = 3600
    task_soft_limit_s: int = 1800
    task_hard_limit_s: int = 1900
    profile_run_timeout_s: float = 120.0
    heartbeat_s: float = 5.0
    # A running job with no event for this long lost a task for good (e.g. one
    # killed by the hard time limit, which acknowledges it): it is failed.
    job_idle_timeout_s: float = 5400.0

    @staticmethod
    def from_env(env: dict[str, str] | None = None) -> Settings:
        env = dict(os.environ if env is None else env)
        d = Settings()

        def get(name: str, default):
            value = env.get(name)
            if value is None or value == "":
                return default
            return type(default)(value) if default is not None else value

        return Settings(
            redis_url=get("KILN_REDIS_URL", d.redis_url),
            store_url=get("KILN_STORE_URL", d.store_url),
            s3_endpoint_url=get("KILN_S3_ENDPOINT_URL", d.s3_endpoint_url),
            grpc_listen=get("KILN_GRPC_LISTEN", d.grpc_listen),
            work_dir=get("KILN_WORK_DIR", d.work_dir),
            cache_dir=get("KILN_CACHE_DIR", d.cache_dir),
            visibility_timeout_s=get("KILN_VISIBILITY_TIMEOUT", d.visibility_timeout_s),
            task_soft_limit_s=get("KILN_TASK_SOFT_LIMIT", d.task_soft_limit_s),
            task_hard_limit_s=get("KILN_TASK_HARD_LIMIT", d.task_hard_limit_s),
            profile_run_timeout_s=get("KILN_PROFILE_RUN_TIMEOUT", d.profile_run_timeout_s),
            heartbeat_s=get("KILN_HEARTBEAT", d.heartbeat_s),
            job_idle_timeout_s=get("KILN_JOB_IDLE_TIMEOUT", d.job_idle_timeout_s),
        )

    def open_store(self):
        from artifacts import open_store

        return open_store(self.store_url, s3_endpoint_url=self.s3_endpoint_url, cache_dir=self.cache_dir)
