"""The fleet profile database against a real redis-server, and `kiln profile show/export/import`."""
from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import asdict, replace
from pathlib import Path

import pytest
import redis

from kiln import cli
from kiln.cluster import ClusterState
from kiln.profiledb import ProfileDB, ProfileRecord
from tests.support.redis import redis_server

TOOLCHAIN = "g++ (Debian 14.2.0-19) 14.2.0"
SPEC = "5e1f" + "0" * 60
OTHER_SPEC = "a7c3" + "1" * 60
H200 = {"kind": "cuda.sm90", "name": "NVIDIA H200", "compute_capability": "9.0", "driver": "580.159.03"}
CPU = {"kind": "cpu.x86_64", "name": "AMD EPYC 9654 96-Core Processor", "machine": "x86_64"}
CONFIGS = [{"tm": 4, "tn": 4}, {"tm": 1, "tn": 1}, {"tm": 4, "tn": 8}]


def rec(config: dict, ms: float, *, ok: bool = True, spec: str = SPEC, device: dict = CPU, error: str = "",
        toolchain: str = TOOLCHAIN) -> ProfileRecord:
    return ProfileRecord(device["kind"], device, toolchain, spec, config, ok, ms if ok else -1.0, 20 if ok else 0,
                         error, "worker-1.4242")


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    with redis_server() as url:
        yield url


@pytest.fixture
def db(redis_url: str, monkeypatch) -> ProfileDB:
    r = redis.Redis.from_url(redis_url, decode_responses=True)
    r.flushdb()
    monkeypatch.setenv("KILN_REDIS_URL", redis_url)
    return ProfileDB(r)


def test_best_waits_for_every_candidate_and_skips_failures(db: ProfileDB):
    db.put(rec(CONFIGS[0], 0.30))
    db.put(rec(CONFIGS[2], 0.20))
    assert db.best("cpu.x86_64", TOOLCHAIN, SPEC, CONFIGS) is None, "one candidate is not measured yet"
    # A failure counts as measured, and its -1 ms must not win.
    db.put(rec(CONFIGS[1], 0.0, ok=False, error="killed by signal SIGSEGV"))
    assert db.best("cpu.x86_64", TOOLCHAIN, SPEC, CONFIGS) == CONFIGS[2]
    recs = db.records("cpu.x86_64", TOOLCHAIN, SPEC)
    assert [(r.config, r.ok) for r in recs] == [(CONFIGS[2], True), (CONFIGS[0], True), (CONFIGS[1], False)]
    assert recs[2].error == "killed by signal SIGSEGV"
    # Only the asked-for configs compete: a faster record of a config no longer a candidate does not win.
    db.put(rec({"tm": 2, "tn": 8}, 0.01))
    assert db.best("cpu.x86_64", TOOLCHAIN, SPEC, CONFIGS) == CONFIGS[2]
    # A later measurement of the same config replaces the old one.
    db.put(rec(CONFIGS[0], 0.05))
    assert db.best("cpu.x86_64", TOOLCHAIN, SPEC, CONFIGS) == CONFIGS[0]
    assert len(db.records("cpu.x86_64", TOOLCHAIN, SPEC)) == 4
    # Other toolchains, devices and kernels are other indexes.
    assert db.best("cpu.x86_64", "g++ 15", SPEC, CONFIGS) is None
    assert db.records("cuda.sm90", TOOLCHAIN, SPEC) == []
    assert db.records("cpu.x86_64", TOOLCHAIN, OTHER_SPEC) == []


def test_each_profile_point_has_its_own_records_and_pick(db: ProfileDB, capsys):
    # A dynamic-batch kernel: small M favours one config, large M another.
    for at, times in (((1,), (0.01, 0.02, 0.03)), ((64,), (0.9, 0.5, 0.4))):
        for config, ms in zip(CONFIGS, times, strict=True):
            db.put(replace(rec(config, ms), at=at))
    assert db.best("cpu.x86_64", TOOLCHAIN, SPEC, CONFIGS, (1,)) == CONFIGS[0]
    assert db.best("cpu.x86_64", TOOLCHAIN, SPEC, CONFIGS, [64]) == CONFIGS[2]
    assert db.best("cpu.x86_64", TOOLCHAIN, SPEC, CONFIGS, (8,)) is None, "never profiled at 8"
    assert db.best("cpu.x86_64", TOOLCHAIN, SPEC, CONFIGS) is None, "nor at the static point"
    exported = db.export()
    assert len(exported) == 6 and {tuple(d["at"]) for d in exported} == {(1,), (64,)}
    # `kiln profile show` groups by point, best first within each.
    assert cli.main(["profile", "show", SPEC[:6]]) == 0
    out = capsys.readouterr().out.splitlines()
    headers = [line for line in out if not line.startswith(" ")]
    assert [h.split("  ")[2] for h in headers] == ["at 1", "at 64"]
    assert '"tn": 4' in out[1] and '"tm": 4, "tn": 8' in out[5]
    db.r.flushdb()
    db.import_records(exported)  # JSON lists come back as the same keys
    assert db.best("cpu.x86_64", TOOLCHAIN, SPEC, CONFIGS, [1]) == CONFIGS[0] and len(db.export()) == 6


def test_best_is_none_when_every_candidate_failed(db: ProfileDB):
    for c in CONFIGS:
        db.put(rec(c, 0.0, ok=False, error="timed out after 5s"))
    assert db.best("cpu.x86_64", TOOLCHAIN, SPEC, CONFIGS) is None


def _fill(db: ProfileDB) -> list[ProfileRecord]:
    recs = [rec(CONFIGS[0], 0.123456789012345), rec(CONFIGS[1], 1e-7),
            rec(CONFIGS[2], 0.0, ok=False, error='no JSON result (exit 0): "ok" \\ ünïcode\nsecond line'),
            rec({"tile": 32}, 0.0421, device=H200, toolchain="Cuda compilation tools, release 13.0, V13.0.88"),
            rec({"tile": 16}, 0.0512, device=H200, toolchain="Cuda compilation tools, release 13.0, V13.0.88"),
            rec({"block": 256, "nested": {"a": [1, 2.5, None]}}, 3.0, spec=OTHER_SPEC)]
    for r in recs:
        db.put(r)
    return recs


def test_export_import_round_trip_is_exact(db: ProfileDB, tmp_path: Path, capsys):
    recs = _fill(db)
    first, second = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    assert cli.main(["profile", "export", str(first)]) == 0
    lines = first.read_text().splitlines()
    assert len(lines) == len(recs) and all(isinstance(json.loads(line), dict) for line in lines)

    db.r.flushdb()
    assert db.export() == []
    assert cli.main(["profile", "import", str(first)]) == 0
    assert cli.main(["profile", "export", str(second)]) == 0
    assert second.read_bytes() == first.read_bytes()
    def canon(d: dict) -> str:
        return json.dumps(d, sort_keys=True)

    as_json = [json.loads(json.dumps(asdict(r))) for r in recs]  # tuples (at) come back as lists
    assert sorted(as_json, key=canon) == sorted(db.export(), key=canon)
    # The indexes come back too, so `best` works on imported records.
    assert db.best("cuda.sm90", recs[3].toolchain, SPEC, [{"tile": 16}, {"tile": 32}]) == {"tile": 32}
    assert "imported 6 profile records" in capsys.readouterr().err


def test_import_rejects_a_bad_line_and_writes_nothing(db: ProfileDB, tmp_path: Path, capsys):
    good = json.dumps(asdict(rec(CONFIGS[0], 0.5)), sort_keys=True)
    path = tmp_path / "bad.jsonl"
    path.write_text(f"{good}\n\n{{\"device_kind\": \"cpu.x86_64\"}}\n")
    assert cli.main(["profile", "import", str(path)]) == 2
    assert f"{path}:3" in capsys.readouterr().err
    assert db.export() == []


def test_show_lists_best_first_per_device_kind(db: ProfileDB, capsys):
    _fill(db)
    assert cli.main(["profile", "show", SPEC[:6]]) == 0
    out = capsys.readouterr().out.splitlines()
    headers = [i for i, line in enumerate(out) if not line.startswith(" ")]
    assert [out[i].split()[0] for i in headers] == ["cpu.x86_64", "cuda.sm90"]
    cpu_rows, gpu_rows = out[headers[0] + 1:headers[1]], out[headers[1] + 1:]
    assert ['"tn": 1' in cpu_rows[0], '"tn": 4' in cpu_rows[1], "FAILED" in cpu_rows[2]] == [True] * 3
    # A runner's error may carry the profiler's stderr: one row each still.
    assert "ünïcode" in cpu_rows[2] and "second line" in cpu_rows[2] and len(cpu_rows) == 3
    assert ['"tile": 32' in gpu_rows[0], '"tile": 16' in gpu_rows[1]] == [True, True]
    assert OTHER_SPEC not in "\n".join(out)

    assert cli.main(["profile", "show", SPEC[:6], "--device-kind", "cuda.sm90"]) == 0
    out = capsys.readouterr().out
    assert "cuda.sm90" in out and "cpu.x86_64" not in out
    assert cli.main(["profile", "show", "ffff"]) == 1
    assert "no profile records" in capsys.readouterr().out


def test_cli_finds_redis_through_the_local_cluster_state(db: ProfileDB, redis_url: str, tmp_path: Path, monkeypatch,
                                                         capsys):
    _fill(db)
    monkeypatch.delenv("KILN_REDIS_URL")
    monkeypatch.setenv("KILN_CLUSTER_DIR", str(tmp_path))
    assert cli.main(["profile", "show", SPEC]) == 2
    assert "KILN_REDIS_URL" in capsys.readouterr().err
    state = ClusterState(str(tmp_path), 0, redis_url, "127.0.0.1:1", str(tmp_path / "store"), [])
    (tmp_path / "cluster.json").write_text(json.dumps(asdict(state)))
    assert cli.main(["profile", "show", SPEC]) == 0
    assert "cuda.sm90" in capsys.readouterr().out


def test_records_survive_a_redis_restart_with_appendonly(tmp_path: Path):
    recs = [rec(CONFIGS[0], 0.3), rec(CONFIGS[1], 0.0, ok=False, error="timed out after 120s"), rec(CONFIGS[2], 0.2)]
    with redis_server(appendonly=True, dir=tmp_path) as url:
        db = ProfileDB(redis.Redis.from_url(url, decode_responses=True))
        for r in recs:
            db.put(r)
        before = db.export()
    assert (tmp_path / "appendonlydir").is_dir(), "redis wrote no AOF"
    with redis_server(appendonly=True, dir=tmp_path) as url:
        db = ProfileDB(redis.Redis.from_url(url, decode_responses=True))
        assert db.export() == before and len(before) == 3
        assert db.best("cpu.x86_64", TOOLCHAIN, SPEC, CONFIGS) == CONFIGS[2]
        assert db.records("cpu.x86_64", TOOLCHAIN, SPEC) == sorted(
            [replace(r) for r in recs], key=lambda r: (not r.ok, r.median_ms))
