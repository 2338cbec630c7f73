"""Where a kernel is profiled, and how the picks at those points become one config.

Pure functions of a KernelSpec and profile results: the codegen worker (which
builds profilers and renders dispatch kernels) and the profile worker (which
turns fresh timings into a pick) must agree on both.
"""
from __future__ import annotations

import math
from typing import Any

from kiln.plan import KernelSpec

PROFILE_CAP = 256  # symbol values above this are profiled at it: a huge dynamic range stays quick to profile
DISPATCH = "dispatch"


def profile_points(spec: KernelSpec) -> list[list[int]]:
    """The symbol values a kernel is profiled at, smallest first.

    One symbol (a dynamic batch): its min, its (capped) max and their geometric
    middle, because the best tile for M = 384 is not the best for M = 24576.
    No symbol: the one static shape ([]). Several: each at its capped max.
    """
    top = [max(s.min, min(s.max, PROFILE_CAP)) for s in spec.symbols]
    if len(spec.symbols) != 1:
        return [top]
    lo, hi = spec.symbols[0].min, top[0]
    return [[v] for v in sorted({lo, round(math.sqrt(lo * hi)), hi})]


def dispatch_config(points: list[list[int]], picks: list[dict[str, Any]]) -> dict[str, Any]:
    """One config from the pick at each profile point: the pick itself when all
    agree, else a dispatch on the symbol's value at run time. Range boundaries
    sit at the geometric middle between neighbouring points; the last range is
    open (values past the profiling cap take the largest point's pick)."""
    if all(p == picks[0] for p in picks):
        return picks[0]
    cases: list[dict[str, Any]] = []
    for i, pick in enumerate(picks):
        upto = math.floor(math.sqrt(points[i][0] * points[i + 1][0])) if i + 1 < len(picks) else None
        if cases and cases[-1]["config"] == pick:
            cases[-1]["upto"] = upto
        else:
            cases.append({"upto": upto, "config": pick})
    return {"impl": DISPATCH, "cases": cases}
