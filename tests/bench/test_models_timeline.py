"""bench/models.py's reading of a replayed graph's timeline: overlapping kernels (PDL) count once,
gaps between them do not count as busy."""
from __future__ import annotations

import pytest

models = pytest.importorskip("bench.models")


def test_busy_time_counts_overlaps_once_and_leaves_gaps_out():
    # a: 0-10, b starts early (PDL) at 8 and ends at 15, a gap to 20, c: 20-30, d inside c.
    busy, span = models.busy_and_span([(20.0, 30.0), (0.0, 10.0), (8.0, 15.0), (22.0, 25.0)])
    assert busy == 25.0
    assert span == 30.0


def test_one_interval_and_none():
    assert models.busy_and_span([(5.0, 7.5)]) == (2.5, 2.5)
    assert models.busy_and_span([]) == (0.0, 0.0)
