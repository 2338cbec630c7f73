"""Cold and warm compile times through the real farm, on this machine.

For each worker count, a fresh cluster (redis-server, moto S3 over HTTP, gRPC
frontend, planner, N cuda codegen workers of one process slot each) compiles
each model for cuda:sm90 three times:
  cold   - nothing cached anywhere: every kernel rendered and compiled;
  warm   - the same graph again: answered from refs/actions/<job key>, no task;
  relink - the same model under another graph name: every kernel object is
           found in the store by content key, only the link runs.
No GPU is needed (heuristic configs, no profiling). nvcc and the CUTLASS wheel are.

    PYTHONPATH=. python3 bench/compile_times.py --models bert_base,resnet50 --workers 1,2 \
        --out bench/results/compile_times.json
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
import uuid
from pathlib import Path

import torch

import kiln
from artifacts import S3Store, make_client
from kiln.client import Client
from kiln.v1 import farm_pb2
from tests.support import torch_models as tm
from tests.support.farm import new_farm
from tests.support.moto import TEST_CREDENTIALS, moto_s3_server
from tests.support.redis import redis_server


def import_model(name: str):
    batch = torch.export.Dim("batch", min=1, max=256 if name == "resnet50" else 64)
    if name == "resnet50":
        return kiln.from_torch(tm.resnet50().half(), (torch.randn(2, 3, 224, 224).half(),),
                               dynamic_shapes=({0: batch},), name=name)
    return kiln.from_torch(tm.bert_base().half(), tm.bert_inputs(2, 384, 30522),
                           dynamic_shapes=({0: batch}, {0: batch}), name=name)


def timed_compile(client: Client, graph, target: str) -> tuple[float, farm_pb2.Job]:
    t0 = time.monotonic()
    job = client.compile(graph, target)
    elapsed = time.monotonic() - t0
    if job.state != farm_pb2.SUCCEEDED:
        raise RuntimeError(f"{graph.name}: {job.error}")
    return elapsed, job


def run(workers: int, graphs: dict, target: str) -> list[dict]:
    rows = []
    with tempfile.TemporaryDirectory() as tmp, redis_server() as redis_url, moto_s3_server() as endpoint:
        bucket = f"kiln-{uuid.uuid4().hex[:12]}"
        S3Store(bucket, client=make_client(endpoint, **TEST_CREDENTIALS)).ensure_bucket()
        farm = new_farm(redis_url, f"s3://{bucket}", endpoint, Path(tmp))
        # A CUTLASS compile takes a minute here: a 10 s visibility timeout (the tests') would redeliver it.
        farm.env["KILN_VISIBILITY_TIMEOUT"] = "3600"
        farm.start("frontend", "frontend_svc")
        farm.start("planner", "planner_svc")
        for i in range(workers):
            farm.start(f"codegen-cuda-{i}", "codegen_worker", "--queues", "codegen.cuda", "--concurrency", "1")
        try:
            farm.wait_frontend()
            farm.wait_online("planner")
            farm.wait_online("codegen.cuda", workers)
            with Client(farm.grpc_address) as client:
                for name, graph in graphs.items():
                    before = farm.stats().get("compiles", 0)  # one cluster serves every model in turn
                    cold, job = timed_compile(client, graph, target)
                    compiled = farm.stats().get("compiles", 0) - before
                    warm, again = timed_compile(client, graph, target)
                    relink, other = timed_compile(client, graph.replace(name=f"{name}_renamed"), target)
                    row = {"model": name, "workers": workers, "cold_s": round(cold, 1), "warm_s": round(warm, 3),
                           "warm_cached": again.cached, "relink_s": round(relink, 1),
                           "compiles_cold": compiled, "artifact": job.artifact,
                           "same_artifact_warm": again.artifact == job.artifact}
                    rows.append(row)
                    print(json.dumps(row), flush=True)
                    del other
        finally:
            farm.stop_all()
    return rows


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--models", default="bert_base,resnet50")
    p.add_argument("--workers", default="1,2")
    p.add_argument("--target", default="cuda:sm90")
    p.add_argument("--out", default="compile_times.json")
    args = p.parse_args()
    graphs = {name: import_model(name) for name in args.models.split(",")}
    result = {"machine": f"{os.cpu_count()} cores, {platform.processor() or platform.machine()}",
              "target": args.target, "rows": []}
    for n in (int(w) for w in args.workers.split(",")):
        result["rows"] += run(n, graphs, args.target)
        Path(args.out).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
