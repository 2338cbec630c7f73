"""The `kiln` command line."""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from kiln import cluster

if TYPE_CHECKING:
    from kiln.ir import Graph
    from kiln.profiledb import ProfileDB


def _server(args: argparse.Namespace) -> str:
    if args.server:
        return args.server
    if os.environ.get("KILN_SERVER"):
        return os.environ["KILN_SERVER"]
    state = cluster.load_state(Path(os.environ.get("KILN_CLUSTER_DIR", cluster.DEFAULT_DIR)))
    return state.grpc_address if state else "127.0.0.1:50051"


def cmd_cluster(args: argparse.Namespace) -> int:
    state_dir = Path(args.state_dir)
    if args.action == "up":
        cluster.up(state_dir, grpc_port=args.port)
    elif args.action == "down":
        cluster.down(state_dir)
    else:
        rows = cluster.status(state_dir)
        if not rows:
            print("no cluster (run `kiln cluster up`)")
            return 1
        state = cluster.load_state(state_dir)
        print(f"frontend {state.grpc_address}  redis {state.redis_url}  store {state.store_url}")
        for name, pid, alive in rows:
            print(f"  {name:22s} pid {pid:<8d} {'up' if alive else 'DOWN'}")
        return 0 if all(alive for _, _, alive in rows) else 1
    return 0


def _dim_range(text: str) -> tuple[str, tuple[int, int]]:
    name, sep, span = text.partition("=")
    lo, sep2, hi = span.partition(":")
    if not (sep and sep2 and name and lo.isdigit() and hi.isdigit()):
        raise argparse.ArgumentTypeError(f"--dim {text!r}: expected NAME=MIN:MAX, e.g. batch=1:32")
    return name, (int(lo), int(hi))


def _load_model(args: argparse.Namespace) -> Graph:
    """A Python file with build(), an .onnx file or a .pt2 (torch.export.save) program."""
    from kiln.importers import load_model_file

    return load_model_file(args.model, dims=dict(args.dim or ()))


def cmd_compile(args: argparse.Namespace) -> int:
    from kiln.client import Client
    from kiln.v1 import farm_pb2

    graph = _load_model(args)
    t0 = time.monotonic()
    interactive = sys.stdout.isatty() and not args.json

    def show(e: farm_pb2.JobEvent) -> None:
        if interactive or args.verbose:
            progress = f"[{e.done}/{e.total}]" if e.total else ""
            text = e.error or e.log
            stream = sys.stderr if args.json else sys.stdout
            print(f"{time.monotonic() - t0:7.1f}s {e.stage:10s} {progress:8s} {text}", file=stream)

    with Client(_server(args)) as client:
        import grpc

        try:
            job = client.compile(graph, args.target, profile=args.profile, on_event=show)
        except grpc.RpcError as err:
            msg = f"{err.code().name}: {err.details()}"
            print(json.dumps({"error": msg}) if args.json else f"error: {msg}")
            return 2
    ok = job.state == farm_pb2.SUCCEEDED
    result = {"artifact": job.artifact, "cached": job.cached, "job": job.id, "target": job.target,
              "state": farm_pb2.JobState.Name(job.state), "error": job.error, "seconds": round(time.monotonic() - t0, 3)}
    if args.json:
        print(json.dumps(result))
    elif ok:
        print(f"{args.target}: artifact {job.artifact}{' (cached)' if job.cached else ''}")
    else:
        print(f"{args.target}: job {job.id} {result['state']}: {job.error}")
    return 0 if ok else 1


def cmd_fetch(args: argparse.Namespace) -> int:
    from kiln.client import Client

    with Client(_server(args)) as client:
        manifest = client.fetch(args.hash, args.output)
    print(f"fetched {args.hash} ({manifest.target}, {len(manifest.files)} file(s)) to {args.output}")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from kiln.runtime import Model

    model = Model(args.dir)
    with np.load(args.inputs) as data:
        inputs = {k: data[k] for k in data.files}
    outputs = model.run(inputs)
    np.savez(args.outputs, **outputs)
    for name, arr in outputs.items():
        print(f"{name}: {arr.dtype}{list(arr.shape)}")
    return 0


def cmd_job(args: argparse.Namespace) -> int:
    from google.protobuf.json_format import MessageToDict

    from kiln.client import Client

    with Client(_server(args)) as client:
        job = client.cancel(args.id) if args.action == "cancel" else client.get(args.id)
    print(json.dumps(MessageToDict(job), indent=1))
    return 0


def cmd_plan(args: argparse.Namespace) -> int:
    from planner_svc.lower import lower
    from planner_svc.pipeline import run_passes

    graph = _load_model(args)
    optimized, records = run_passes(graph)
    plan = lower(optimized, args.target)
    if args.explain:
        from planner_svc.pipeline import explain_lines

        unfused = lower(graph, args.target)  # one buffer per op output: what the plan is measured against
        print("\n".join(explain_lines(graph, records, plan, unfused)))
        return 0
    print(f"{len(graph.ops)} ops -> {len(plan.calls)} kernels; arena {plan.arena_bytes} bytes "
          f"(activations total {plan.activation_bytes_total})")
    for call in plan.calls:
        print(f"  {call.kernel:4s} {call.spec.op:18s} {call.spec.key()[:16]}  {'+'.join(call.source_ops)}")
    return 0


def _redis_url() -> str:
    if os.environ.get("KILN_REDIS_URL"):
        return os.environ["KILN_REDIS_URL"]
    state = cluster.load_state(Path(os.environ.get("KILN_CLUSTER_DIR", cluster.DEFAULT_DIR)))
    if state is None:
        raise RuntimeError("no Redis to talk to: set KILN_REDIS_URL or start a cluster (`kiln cluster up`)")
    return state.redis_url


def _profile_show(db: ProfileDB, prefix: str, device_kind: str | None) -> int:
    # A scan of every record: fine for an operator's look-up, and it needs no second index.
    found = [d for d in db.export()
             if d["spec_key"].startswith(prefix) and (device_kind is None or d["device_kind"] == device_kind)]
    if not found:
        print(f"no profile records for spec {prefix}*" + (f" on {device_kind}" if device_kind else ""))
        return 1
    groups: dict[tuple[str, str, str, tuple[int, ...]], list[dict]] = {}
    for d in found:  # as `best` sees them: one group per device kind, kernel, toolchain and profile point
        groups.setdefault((d["device_kind"], d["spec_key"], d["toolchain"], tuple(d.get("at", ()))), []).append(d)
    for (kind, spec_key, toolchain, at), recs in sorted(groups.items()):
        point = f"  at {'x'.join(map(str, at))}" if at else ""
        print(f"{kind}  spec {spec_key}{point}  toolchain {toolchain}")
        recs.sort(key=lambda d: (not d["ok"], d["median_ms"] if d["ok"] else 0.0, json.dumps(d["config"], sort_keys=True)))
        for d in recs:
            config = json.dumps(d["config"], sort_keys=True)
            where = f"{d['device'].get('name', '?')} ({d['worker'] or 'unknown worker'})"
            if d["ok"]:
                print(f"  {d['median_ms']:12.6f} ms  {config:24s} {d['runs']:4d} runs  {where}")
            else:
                error = " ".join(d["error"].split())  # a profiler's stderr tail, on the record's one row
                print(f"  {'FAILED':>15s}  {config:24s} {error}  {where}")
    return 0


def _profile_import(db: ProfileDB, path: str) -> int:
    from kiln.profiledb import ProfileRecord

    text = sys.stdin.read() if path == "-" else Path(path).read_text()
    records = []
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            d = json.loads(line)
            ProfileRecord(**d)  # all checked before any is written: a bad file imports nothing
        except (json.JSONDecodeError, TypeError) as err:
            raise ValueError(f"{path}:{n}: not a profile record: {err}") from None
        records.append(d)
    db.import_records(records)
    print(f"imported {len(records)} profile records from {path}", file=sys.stderr)
    return 0


def _profile_run(args: argparse.Namespace) -> int:
    """Profile MODEL's kernels across the fleet, building no artifact, with a progress bar."""
    from kiln.client import Client
    from kiln.v1 import farm_pb2

    graph = _load_model(args)
    t0 = time.monotonic()
    tty = sys.stderr.isatty()

    def show(e: farm_pb2.JobEvent) -> None:
        if e.total:
            width = 30
            filled = width * e.done // e.total
            bar = f"[{'#' * filled}{'.' * (width - filled)}] {e.done}/{e.total} kernels"
            text = f"{time.monotonic() - t0:7.1f}s {bar}"
            print(("\r" + text) if tty else text, end="" if tty else "\n", file=sys.stderr, flush=True)
        if args.verbose and (e.log or e.error):
            print(f"\n{e.error or e.log}" if tty else (e.error or e.log), file=sys.stderr)

    with Client(_server(args)) as client:
        job = client.compile(graph, args.target, profile_only=True, on_event=show)
    if tty:
        print(file=sys.stderr)
    if job.state != farm_pb2.SUCCEEDED:
        print(f"{args.target}: job {job.id} {farm_pb2.JobState.Name(job.state)}: {job.error}")
        return 1
    print(f"{args.target}: profiled {graph.name} in {time.monotonic() - t0:.1f} s (job {job.id}); "
          f"`kiln profile show SPEC` lists the timings")
    return 0


def cmd_profile(args: argparse.Namespace) -> int:
    if args.action == "run":
        return _profile_run(args)
    import redis

    from kiln.profiledb import ProfileDB

    db = ProfileDB(redis.Redis.from_url(_redis_url(), decode_responses=True))
    try:
        if args.action == "show":
            return _profile_show(db, args.spec_prefix, args.device_kind)
        if args.action == "import":
            return _profile_import(db, args.file)
        records = db.export()
        lines = "".join(json.dumps(d, sort_keys=True) + "\n" for d in records)
        if args.file == "-":
            sys.stdout.write(lines)
        else:
            Path(args.file).write_text(lines)
        print(f"exported {len(records)} profile records to {args.file}", file=sys.stderr)
        return 0
    except redis.RedisError as err:
        print(f"kiln: error: redis: {err}", file=sys.stderr)
        return 2


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="kiln", description="Kiln: a GPU inference compiler farm")
    sub = p.add_subparsers(dest="command", required=True)

    c = sub.add_parser("cluster", help="run a local cluster without Docker")
    c.add_argument("action", choices=["up", "status", "down"])
    c.add_argument("--state-dir", default=os.environ.get("KILN_CLUSTER_DIR", str(cluster.DEFAULT_DIR)))
    c.add_argument("--port", type=int, default=None, help="frontend port (default: a free one)")
    c.set_defaults(fn=cmd_cluster)

    model_help = "a Python file with build(), an .onnx model or a .pt2 torch.export program"
    dim_help = "range of a symbolic dim of an .onnx MODEL, NAME=MIN:MAX (repeatable)"
    c = sub.add_parser("compile", help="compile MODEL on the farm")
    c.add_argument("model", help=model_help)
    c.add_argument("--dim", action="append", type=_dim_range, metavar="NAME=MIN:MAX", help=dim_help)
    c.add_argument("--target", required=True, help="cpu, cuda:sm90, cuda:sm80, rocm:gfx90a")
    c.add_argument("--server", default=None)
    c.add_argument("--json", action="store_true", help="last line of stdout is one JSON object")
    c.add_argument("--profile", action="store_true", help="profile candidate configs on the fleet")
    c.add_argument("-v", "--verbose", action="store_true")
    c.set_defaults(fn=cmd_compile)

    c = sub.add_parser("fetch", help="download an artifact by hash, verifying it")
    c.add_argument("hash")
    c.add_argument("-o", "--output", required=True)
    c.add_argument("--server", default=None)
    c.set_defaults(fn=cmd_fetch)

    c = sub.add_parser("run", help="run a fetched artifact on inputs from an .npz")
    c.add_argument("dir")
    c.add_argument("--inputs", required=True)
    c.add_argument("--outputs", required=True)
    c.set_defaults(fn=cmd_run)

    c = sub.add_parser("job", help="show or cancel a job")
    c.add_argument("action", choices=["show", "cancel"])
    c.add_argument("id")
    c.add_argument("--server", default=None)
    c.set_defaults(fn=cmd_job)

    c = sub.add_parser("plan", help="run the planner's passes locally and list the kernels")
    c.add_argument("model", help=model_help)
    c.add_argument("--dim", action="append", type=_dim_range, metavar="NAME=MIN:MAX", help=dim_help)
    c.add_argument("--target", default="cpu")
    c.add_argument("--explain", action="store_true")
    c.set_defaults(fn=cmd_plan)

    c = sub.add_parser("profile", help="profile a model on the fleet; the fleet profile database (in the cluster's Redis)")
    actions = c.add_subparsers(dest="action", required=True)
    a = actions.add_parser("run", help="profile MODEL's kernels on the fleet (no artifact): warms the database")
    a.add_argument("model", help=model_help)
    a.add_argument("--dim", action="append", type=_dim_range, metavar="NAME=MIN:MAX", help=dim_help)
    a.add_argument("--target", required=True, help="cpu, cuda:sm90, cuda:sm80, rocm:gfx90a")
    a.add_argument("--server", default=None)
    a.add_argument("-v", "--verbose", action="store_true")
    a = actions.add_parser("show", help="a kernel's records, best first, per device kind")
    a.add_argument("spec_prefix", metavar="SPEC_KEY_PREFIX")
    a.add_argument("--device-kind", default=None, help="cpu.x86_64, cuda.sm90, ...")
    a = actions.add_parser("export", help="write every record, one JSON object a line")
    a.add_argument("file", metavar="FILE.jsonl", help="'-' for stdout")
    a = actions.add_parser("import", help="add the records of an export")
    a.add_argument("file", metavar="FILE.jsonl", help="'-' for stdin")
    c.set_defaults(fn=cmd_profile)

    args = p.parse_args(argv)
    import grpc

    try:
        return args.fn(args)
    except grpc.RpcError as err:
        print(f"kiln: error: {err.code().name}: {err.details()}", file=sys.stderr)
        return 2
    except (FileNotFoundError, ValueError, TypeError, RuntimeError) as err:
        print(f"kiln: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
