"""Planted bad candidates: a hang, a crash and garbage each fail alone, and a hang leaves no process behind."""
from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

from profile_worker.runner import run_all

# Speaks the profiler protocol (`exe CANDIDATE [RUNS]`, one JSON line). Candidate
# 1 forks first: killing the hung process alone would leave its child running.
PLANTED = r"""
#include <cstdio>
#include <cstdlib>
#include <unistd.h>
int main(int argc, char** argv) {
  const int cand = atoi(argv[1]);
  const int runs = argc > 2 ? atoi(argv[2]) : 20;
  if (cand == 0) { printf("{\"ok\": true, \"median_ms\": 2.5, \"runs\": %d}\n", runs); return 0; }
  if (cand == 1) {
    const pid_t child = fork();
    if (child == 0) for (;;) pause();
    FILE* f = fopen(PID_FILE, "w");
    fprintf(f, "%d\n", (int)child);
    fclose(f);
    for (;;) pause();
  }
  if (cand == 2) { volatile int* p = nullptr; *p = 1; return 0; }
  if (cand == 3) { printf("profiling... done, 1.2 ms\n"); return 0; }
  printf("{\"ok\": true, \"median_ms\": 0.5, \"runs\": %d}\n", runs);
  return 0;
}
"""
FAST = 4  # the faster good candidate, for tests that check which one is picked


def build_planted(workdir: Path) -> tuple[Path, Path]:
    """The planted profiler, and the file where its hung candidate writes its child's pid."""
    src, exe, pid_file = workdir / "planted.cc", workdir / "planted", workdir / "hung_child.pid"
    src.write_text(PLANTED)
    subprocess.run(["g++", "-O0", "-o", str(exe), str(src), f'-DPID_FILE="{pid_file}"'], check=True)
    return exe, pid_file


def process_gone(pid: int) -> bool:
    """Nothing runs as pid: no such process, or a zombie (dead, left for init to reap)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (FileNotFoundError, IndexError):
        return True


def wait_gone(pid: int, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while not process_gone(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def test_each_bad_candidate_fails_alone(tmp_path):
    exe, pid_file = build_planted(tmp_path)
    t0 = time.monotonic()
    results = run_all(str(exe), 5, runs=7, timeout_s=2)
    assert time.monotonic() - t0 < 10, "the hang must cost the timeout, not more"

    assert [r.index for r in results] == [0, 1, 2, 3, 4]
    good, hung, crashed, garbage, fast = results
    assert good.ok and good.median_ms == 2.5 and good.runs == 7 and not good.error
    assert fast.ok and fast.median_ms == 0.5
    assert not hung.ok and "timed out" in hung.error
    assert not crashed.ok and "SIGSEGV" in crashed.error
    assert not garbage.ok and "no JSON" in garbage.error
    assert all(r.median_ms == float("inf") and r.runs == 0 for r in (hung, crashed, garbage))

    # The whole process group went: the hung candidate's forked child too.
    child = int(pid_file.read_text())
    assert wait_gone(child), f"the hung candidate's child {child} still runs"


# Speaks the `all` protocol too. Every start appends a line to STARTS_FILE; with CRASH_AT >= 0
# the candidate of that index crashes, but only inside the shared process.
TOGETHER = r"""
#include <cstdio>
#include <cstdlib>
#include <cstring>
static int one(int cand, int runs, bool shared) {
  if (shared && cand == CRASH_AT) { volatile int* p = nullptr; *p = 1; }
  printf("{\"index\": %d, \"ok\": true, \"median_ms\": %d.5, \"runs\": %d}\n", cand, 3 - cand, runs);
  fflush(stdout);
  return 0;
}
int main(int argc, char** argv) {
  FILE* f = fopen(STARTS_FILE, "a");
  fprintf(f, "%s\n", argv[1]);
  fclose(f);
  const int runs = argc > 2 ? atoi(argv[2]) : 20;
  if (strcmp(argv[1], "all") != 0) return one(atoi(argv[1]), runs, false);
  for (int c = 0; c < 3; ++c) one(c, runs, true);
  return 0;
}
"""


def build_together(workdir: Path, crash_at: int) -> tuple[Path, Path]:
    src, exe, starts = workdir / "together.cc", workdir / "together", workdir / "starts.txt"
    src.write_text(TOGETHER)
    subprocess.run(["g++", "-O0", "-o", str(exe), str(src), f'-DSTARTS_FILE="{starts}"', f"-DCRASH_AT={crash_at}"],
                   check=True)
    return exe, starts


def test_clean_candidates_share_one_process(tmp_path):
    exe, starts = build_together(tmp_path, crash_at=-1)
    results = run_all(str(exe), 3, runs=4, timeout_s=5)
    assert starts.read_text().split() == ["all"]
    assert [(r.index, r.ok, r.median_ms, r.runs) for r in results] == [(0, True, 3.5, 4), (1, True, 2.5, 4),
                                                                        (2, True, 1.5, 4)]


def test_a_crash_in_the_shared_process_reruns_every_candidate_alone(tmp_path):
    exe, starts = build_together(tmp_path, crash_at=1)
    results = run_all(str(exe), 3, runs=4, timeout_s=5)
    # The shared run died at candidate 1; candidate 0's line from it is not trusted either.
    assert starts.read_text().split() == ["all", "0", "1", "2"]
    assert [(r.index, r.ok, r.median_ms) for r in results] == [(0, True, 3.5), (1, True, 2.5), (2, True, 1.5)]


def test_isolation_can_be_asked_for(tmp_path):
    exe, starts = build_together(tmp_path, crash_at=-1)
    run_all(str(exe), 3, runs=4, timeout_s=5, together=False)
    assert starts.read_text().split() == ["0", "1", "2"]
