"""One real farm per test module: redis-server, moto S3 over HTTP, gRPC frontend, Celery workers."""
from __future__ import annotations

import shutil
import uuid

import pytest

from artifacts import S3Store, make_client
from kiln.client import Client
from tests.support.farm import Farm, new_farm
from tests.support.moto import TEST_CREDENTIALS, moto_s3_server
from tests.support.redis import redis_server


@pytest.fixture(scope="module")
def farm(tmp_path_factory) -> Farm:
    tmp = tmp_path_factory.mktemp("farm")
    bucket = f"kiln-{uuid.uuid4().hex[:12]}"
    with redis_server() as redis_url, moto_s3_server() as endpoint:
        S3Store(bucket, client=make_client(endpoint, **TEST_CREDENTIALS)).ensure_bucket()
        f = new_farm(redis_url, f"s3://{bucket}", endpoint, tmp)
        f.start("frontend", "frontend_svc")
        f.start("planner", "planner_svc")
        f.start("codegen-cpu", "codegen_worker", "--queues", "codegen.cpu")
        if shutil.which("nvcc"):
            f.start("codegen-cuda", "codegen_worker", "--queues", "codegen.cuda")
        f.start("profile-cpu-1", "profile_worker", "--queues", "profile.cpu.x86_64")
        f.start("profile-cpu-2", "profile_worker", "--queues", "profile.cpu.x86_64")
        try:
            f.wait_frontend()
            f.wait_online("codegen.cpu")
            f.wait_online("planner")
            f.wait_online("profile.cpu.x86_64", 2)
            if shutil.which("nvcc"):
                f.wait_online("codegen.cuda")
            yield f
        finally:
            f.stop_all()


@pytest.fixture
def client(farm: Farm) -> Client:
    with Client(farm.grpc_address) as c:
        yield c
