"""Render, compile and link, with no Celery in sight: tasks and benches call these."""
from __future__ import annotations

import hashlib
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from codegen_worker.backends import Backend
from codegen_worker.backends.base import template_env
from kiln import keys
from kiln.plan import ExecutionPlan, KernelSpec
from kiln.targets import Target
from kiln.tuning import DISPATCH, profile_points

CONST_ALIGN = 256


class CompileError(RuntimeError):
    def __init__(self, what: str, cmd: list[str], log: str):
        super().__init__(f"{what} failed: {' '.join(cmd[:3])} ...\n{log[-4000:]}")
        self.log = log


def kernel_fn_name(spec: KernelSpec, config: dict[str, Any]) -> str:
    h = hashlib.sha256((spec.key() + keys.canonical(config).decode()).encode()).hexdigest()
    return f"kiln_k_{h[:24]}"


@dataclass(frozen=True)
class RenderedKernel:
    fn: str
    source: str
    object_key: str
    # A dispatch config's kernels, one object each; `source` then only picks among them.
    parts: tuple[RenderedKernel, ...] = ()


def render(backend: Backend, target: Target, spec: KernelSpec, config: dict[str, Any]) -> RenderedKernel:
    backend.check(spec, target)
    fn = kernel_fn_name(spec, config)
    parts: tuple[RenderedKernel, ...] = ()
    if config.get("impl") == DISPATCH:
        # Each range's kernel is the very object its profiling compiled (same fn, same key).
        parts = tuple(render(backend, target, spec, case["config"]) for case in config["cases"])
        source = template_env().get_template("common/dispatch.j2").render(
            fn=fn, spec_key=spec.key(),
            cases=[{"fn": part.fn, "upto": case["upto"]} for part, case in zip(parts, config["cases"], strict=True)])
    else:
        source = backend.render_kernel(spec, config, fn)
    okey = keys.object_key(source, backend.toolchain_version(), backend.flags(target), target.arch)
    return RenderedKernel(fn, source, okey, parts)


def run_compiler(what: str, cmd: list[str], env: dict[str, str] | None, timeout: float = 900) -> str:
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env or None, timeout=timeout)
    except subprocess.TimeoutExpired as err:
        raise CompileError(what, cmd, f"timed out after {timeout:.0f}s") from err
    log = proc.stdout + proc.stderr
    if proc.returncode != 0:
        raise CompileError(what, cmd, log)
    return log


def compile_source(backend: Backend, target: Target, source: str, workdir: Path, stem: str) -> tuple[bytes, str]:
    src = workdir / f"{stem}{backend.source_suffix}"
    obj = workdir / f"{stem}.o"
    src.write_text(source)
    log = run_compiler(f"compiling {stem}", backend.compile_object_cmd(target, src, obj), backend.compiler_env())
    return obj.read_bytes(), log


def compile_kernel(backend: Backend, target: Target, kernel: RenderedKernel) -> tuple[bytes, str]:
    with tempfile.TemporaryDirectory(prefix="kiln-cc-") as tmp:
        return compile_source(backend, target, kernel.source, Path(tmp), kernel.fn)


def pack_constants(blobs: list[bytes]) -> tuple[bytes, list[int]]:
    out = bytearray()
    offsets = []
    for data in blobs:
        pad = (-len(out)) % CONST_ALIGN
        out += b"\0" * pad
        offsets.append(len(out))
        out += data
    return bytes(out), offsets


# Weights above this go to weights.bin beside libmodel.so instead of into it:
# a linker handles a few hundred MB of .incbin poorly, and the loader reads a
# side file straight into device memory.
SIDE_FILE_BYTES = 64 << 20


@dataclass(frozen=True)
class Linked:
    lib: Path
    weights: Path | None  # the side file, when the weights are not embedded
    log: str


def link(backend: Backend, target: Target, plan: ExecutionPlan, fns: dict[str, str], objects: list[bytes],
         constants: list[bytes], workdir: Path) -> Linked:
    """Build libmodel.so in workdir from kernel objects, the runtime and constants."""
    blob, offsets = pack_constants(constants)
    side = len(blob) > SIDE_FILE_BYTES
    weights = workdir / "weights.bin" if side else None
    if weights:
        weights.write_bytes(blob)
    (workdir / "constants.bin").write_bytes(b"" if side else blob)
    paths = []
    for i, data in enumerate(objects):
        p = workdir / f"kernel{i}.o"
        p.write_bytes(data)
        paths.append(p)
    asm = workdir / "constants.S"
    asm.write_text(backend.render_constants_asm(str(workdir / "constants.bin")))
    logs = [run_compiler("assembling constants", ["gcc", "-c", str(asm), "-o", str(workdir / "constants.o")], None)]
    model_src = backend.render_model(plan, fns, offsets, len(blob), side_file=side)
    _, log = compile_source(backend, target, model_src, workdir, "model")
    logs.append(log)
    lib = workdir / "libmodel.so"
    logs.append(run_compiler("linking libmodel.so", backend.link_cmd(
        target, [workdir / "model.o", *paths, workdir / "constants.o"], lib), backend.compiler_env()))
    return Linked(lib, weights, "".join(logs))


def build_profiler(backend: Backend, target: Target, spec: KernelSpec, kernels: list[RenderedKernel],
                   objects: list[bytes], workdir: Path, at: list[int] | None = None) -> Path:
    """One executable holding every candidate at one profile point (default: the
    last, largest); `exe I` profiles candidate I."""
    at = profile_points(spec)[-1] if at is None else at
    workdir.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, data in enumerate(objects):
        p = workdir / f"cand{i}.o"
        p.write_bytes(data)
        paths.append(p)
    source = backend.render_profiler(spec, [k.fn for k in kernels], at)
    compile_source(backend, target, source, workdir, "harness")
    exe = workdir / "profiler"
    run_compiler("linking the profiler", backend.exe_link_cmd(target, [workdir / "harness.o", *paths], exe),
                 backend.compiler_env())
    return exe
