"""The fleet profile database: every timing of every candidate, in Redis.

Keyed as DESIGN.md says (device identity, toolchain, spec, config); an index
per (device kind, spec) finds all records of a kernel for `best` and `show`.
Redis runs with AOF in the cluster, so the database survives a restart.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any

import redis

from kiln import keys
from kiln.plan import KernelSpec
from kiln.tuning import dispatch_config, profile_points


@dataclass(frozen=True)
class ProfileRecord:
    device_kind: str         # cuda.sm90, cpu.x86_64, ...
    device: dict[str, Any]   # name, compute capability / cpu model, driver
    toolchain: str
    spec_key: str
    config: dict[str, Any]
    ok: bool
    median_ms: float
    runs: int
    error: str = ""
    worker: str = ""
    # The symbol values it ran at (one per symbol of the spec; [] for a static spec):
    # a dynamic-batch kernel has one record per profile point and candidate.
    at: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "at", tuple(self.at))  # JSON gives a list

    @property
    def key(self) -> str:
        spec = self.spec_key if not self.at else f"{self.spec_key}@{','.join(map(str, self.at))}"
        return keys.profile_key(self.device, self.toolchain, spec, self.config)


class ProfileDB:
    def __init__(self, r: redis.Redis):
        self.r = r

    def _index(self, device_kind: str, toolchain: str, spec_key: str) -> str:
        return f"kiln:profile:index:{device_kind}:{keys.sha256_bytes(toolchain.encode())[:16]}:{spec_key}"

    def put(self, rec: ProfileRecord) -> None:
        pipe = self.r.pipeline()
        pipe.set(f"kiln:profile:{rec.key}", json.dumps(asdict(rec), sort_keys=True))
        pipe.sadd(self._index(rec.device_kind, rec.toolchain, rec.spec_key), rec.key)
        pipe.execute()

    def records(self, device_kind: str, toolchain: str, spec_key: str) -> list[ProfileRecord]:
        names = self.r.smembers(self._index(device_kind, toolchain, spec_key))
        raw = self.r.mget([f"kiln:profile:{n}" for n in sorted(names)]) if names else []
        recs = [ProfileRecord(**json.loads(x)) for x in raw if x]
        return sorted(recs, key=lambda r: (not r.ok, r.median_ms))

    def best(self, device_kind: str, toolchain: str, spec_key: str, configs: list[dict[str, Any]],
             at: list[int] | tuple[int, ...] = ()) -> dict | None:
        """The fastest correct config at profile point `at`, if every candidate has been measured there."""
        recs = [r for r in self.records(device_kind, toolchain, spec_key) if r.at == tuple(at)]
        measured = {json.dumps(r.config, sort_keys=True) for r in recs}
        if any(json.dumps(c, sort_keys=True) not in measured for c in configs):
            return None
        wanted = {json.dumps(c, sort_keys=True) for c in configs}
        ok = [r for r in recs if r.ok and json.dumps(r.config, sort_keys=True) in wanted]
        return ok[0].config if ok else None

    def tuned(self, device_kind: str, toolchain: str, spec: KernelSpec, configs: list[dict[str, Any]],
              points: list[list[int]] | None = None) -> dict[str, Any] | None:
        """The spec's one config from the fastest pick at each profile point (by default the
        spec's own; a range dispatch when picks differ), or None while any point lacks a full
        measurement."""
        points = profile_points(spec) if points is None else points
        picks = [self.best(device_kind, toolchain, spec.key(), configs, at) for at in points]
        if any(p is None for p in picks):
            return None
        return dispatch_config(points, picks)

    def export(self) -> list[dict[str, Any]]:
        out = []
        for name in self.r.scan_iter(match="kiln:profile:*", count=1000):
            if ":index:" in name:
                continue
            raw = self.r.get(name)
            if raw:
                out.append(json.loads(raw))
        return sorted(out, key=lambda d: (d["device_kind"], d["spec_key"], d.get("at", []),
                                          json.dumps(d["config"], sort_keys=True)))

    def import_records(self, records: list[dict[str, Any]]) -> int:
        for d in records:
            self.put(ProfileRecord(**d))
        return len(records)
