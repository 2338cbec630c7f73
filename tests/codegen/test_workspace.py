"""The CUTLASS kernels' scratch memory (templates/gpu/workspace.h), on the host with a
stand-in cudaMalloc: one buffer per stream, grown at least twofold, outgrown buffers
kept (a captured graph may still use them), allocation failure reported."""
from __future__ import annotations

import shutil
import subprocess

import pytest

from codegen_worker.backends.base import TEMPLATES

PROGRAM = r"""
#include <cassert>
#include <cstdio>
#include <cstdlib>
#include <set>
enum cudaError_t { cudaSuccess = 0, cudaErrorMemoryAllocation = 2 };
static int allocs = 0;
static bool fail = false;
static std::set<void*> live;  // nothing here is ever freed: the header has no cudaFree
cudaError_t cudaMalloc(void** p, size_t n) {
  if (fail) return cudaErrorMemoryAllocation;
  *p = std::malloc(n);
  live.insert(*p);
  ++allocs;
  return cudaSuccess;
}
#include "workspace.h"
int main() {
  KilnWorkspace ws;
  bool ok = false;
  void* a = reinterpret_cast<void*>(0xA), *b = reinterpret_cast<void*>(0xB);
  assert(ws.get(a, 0, &ok) == nullptr && ok && allocs == 0);   // most kernels need none
  void* p1 = ws.get(a, 100, &ok);
  assert(ok && p1 && allocs == 1);
  assert(ws.get(a, 60, &ok) == p1 && allocs == 1);               // reused while it fits
  void* p2 = ws.get(a, 150, &ok);                                 // grows to 2 x 100
  assert(ok && p2 != p1 && allocs == 2 && ws.retired.size() == 1 && ws.retired[0] == p1);
  assert(ws.get(a, 200, &ok) == p2 && allocs == 2);
  void* q = ws.get(b, 100, &ok);                                  // another stream, its own buffer
  assert(ok && q != p1 && q != p2 && allocs == 3);
  assert(ws.get(a, 120, &ok) == p2);
  fail = true;
  assert(ws.get(b, 1000, &ok) == nullptr && !ok);                // failure: reported, old one kept
  fail = false;
  assert(ws.get(b, 50, &ok) == q && ok);
  assert(live.count(p1) && live.count(p2) && live.count(q));
  std::puts("ok");
  return 0;
}
"""


@pytest.mark.skipif(shutil.which("g++") is None, reason="g++ is not installed")
def test_workspace_per_stream_never_frees(tmp_path):
    (tmp_path / "main.cc").write_text(PROGRAM)
    exe = tmp_path / "ws"
    subprocess.run(["g++", "-O1", "-I", str(TEMPLATES / "gpu"), str(tmp_path / "main.cc"), "-o", str(exe)], check=True)
    assert subprocess.run([str(exe)], capture_output=True, text=True, check=True).stdout.strip() == "ok"
