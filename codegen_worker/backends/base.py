"""The backend plug-in interface and the one C-style renderer all three share.

A backend differs from another only in class attributes (type names, prelude,
template folder, compiler) and in its compiler command lines.
"""
from __future__ import annotations

import functools
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import jinja2

from codegen_worker.backends import cexpr, contexts
from kiln.dtypes import DType
from kiln.ir import IntVar, TensorType
from kiln.plan import Buffer, ExecutionPlan, KernelSpec
from kiln.targets import Target, get_target

TEMPLATES = Path(__file__).resolve().parent.parent / "templates"

# The profiler rotates through copies of its inputs whose sum passes ~2x the
# largest L2 of any target (H100/H200: 50 MiB), so no timed run finds them
# cached; never more than 8, so big inputs do not multiply device memory.
ROTATE_BYTES = 128 << 20
MAX_INPUT_COPIES = 8


def rotation_copies(input_bytes: int) -> int:
    return max(1, min(MAX_INPUT_COPIES, -(-ROTATE_BYTES // max(1, input_bytes))))


def gemm_tile_smem_bytes(tile: int) -> int:
    """Static shared memory of gpu/linear.j2: two float [T][T + 1] tiles."""
    return 2 * tile * (tile + 1) * 4


class UnsupportedKernel(ValueError):
    """This backend has no kernel for the spec; the message says which and why."""


def cident(text: str) -> str:
    """Anything user-written that reaches C++ goes through here first."""
    return re.sub(r"[^A-Za-z0-9_]", "_", text)[:80] or "_"


def clabel(text: str) -> str:
    """User text safe inside a C string literal and a // comment."""
    return re.sub(r"[^A-Za-z0-9_.+:-]", "_", text)[:120]


@functools.cache
def template_env() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATES)), undefined=jinja2.StrictUndefined,
                             keep_trailing_newline=True)
    env.filters["cident"] = cident
    env.filters["clabel"] = clabel
    env.globals["attention_layout"] = attention_layout
    return env


def buffer_pointer(buf: Buffer) -> str:
    """The C expression of a buffer's first byte inside kiln_model_run; a view
    starts alias_offset bytes into its owner (char arithmetic: a byte offset)."""
    off = buf.alias_offset
    if buf.kind == "activation":
        return f"m->arena + {buf.index + off}"
    if buf.kind == "constant":
        return f"m->consts + kConstOffsets[{buf.index}]" + (f" + {off}" if off else "")
    base = {"input": "inputs", "output": "outputs"}[buf.kind] + f"[{buf.index}]"
    return f"static_cast<char*>({base}) + {off}" if off else base


class Backend:
    family: ClassVar[str]
    template_dir: ClassVar[str]
    source_suffix: ClassVar[str]
    prelude_file: ClassVar[str]
    host_prelude: ClassVar[str] = ""
    api: ClassVar[str] = ""
    types: ClassVar[dict[DType, str]]
    default_configs: ClassVar[dict[str, dict[str, Any]]]
    candidate_table: ClassVar[dict[str, list[dict[str, Any]]]] = {}
    # Each candidate is one more compile and one more profiler run per kernel.
    max_candidates: ClassVar[int] = 8
    # Ops whose candidates are cheap to compile and profile may keep more.
    op_max_candidates: ClassVar[dict[str, int]] = {}

    # --- what the worker asks of a backend -------------------------------
    def toolchain_version(self) -> str:
        raise NotImplementedError

    def compile_object_cmd(self, target: Target, src: Path, out: Path) -> list[str]:
        raise NotImplementedError

    def link_cmd(self, target: Target, objects: list[Path], out: Path) -> list[str]:
        raise NotImplementedError

    def flags(self, target: Target) -> list[str]:
        raise NotImplementedError

    def compiler_env(self) -> dict[str, str]:
        return {}

    def check(self, spec: KernelSpec, target: Target) -> None:
        if spec.op not in self.default_configs:
            raise UnsupportedKernel(f"op {spec.op!r} has no {self.family} kernel yet")
        for t in spec.inputs + spec.outputs:
            if t.dtype not in target.dtypes or t.dtype not in self.types:
                raise UnsupportedKernel(f"dtype {t.dtype.value} is not supported by target {target.name}")

    def default_config(self, spec: KernelSpec, target: Target) -> dict[str, Any]:
        return dict(self.default_configs[spec.op])

    def candidate_configs(self, spec: KernelSpec, target: Target) -> list[dict[str, Any]]:
        """Configs worth profiling; the default comes first (the harness checks the others against it)."""
        default = self.default_config(spec, target)
        kept = self.prune(spec, target, [default, *self.candidate_table.get(spec.op, [])])
        if not kept:
            raise UnsupportedKernel(f"no {spec.op} config of the {self.family} backend fits target {target.name}")
        return kept

    def prune(self, spec: KernelSpec, target: Target, configs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The configs that fit the target, each once, in order, at most max_candidates
        (op_max_candidates for the ops it names)."""
        kept: list[dict[str, Any]] = []
        for config in configs:
            if config not in kept and self.fits(spec, target, config):
                kept.append(config)
        return kept[:self.op_max_candidates.get(spec.op, self.max_candidates)]

    def fits(self, spec: KernelSpec, target: Target, config: dict[str, Any]) -> bool:
        """Whether config can launch on target and is not sure to lose; backends add their limits."""
        return True

    # --- rendering ---------------------------------------------------------
    @property
    def prelude(self) -> str:
        return (TEMPLATES / self.template_dir / self.prelude_file).read_text()

    def ctype(self, dtype: DType) -> str:
        return self.types[dtype]

    def render_kernel(self, spec: KernelSpec, config: dict[str, Any], fn: str) -> str:
        ctx = self._context(spec, config, fn)
        return template_env().get_template(f"{self.template_dir}/{spec.op}.j2").render(**ctx)

    def _context(self, spec: KernelSpec, config: dict[str, Any], fn: str) -> dict[str, Any]:
        out = spec.outputs[0]
        ctx: dict[str, Any] = {
            "b": self, "spec": spec, "config": config, "fn": fn, "spec_key": spec.key(),
            "config_text": ",".join(f"{k}={v}" for k, v in sorted(config.items())),
            "symbol_lines": cexpr.symbol_lines(spec.symbols), "xt": self.ctype(out.dtype),
        }
        ctx.update(contexts.op_context(self, spec))
        return ctx

    def render_model(self, plan: ExecutionPlan, fns: dict[str, str], const_offsets: list[int],
                     const_bytes: int, side_file: bool = False) -> str:
        sym_names = [f"sym{i}" for i in range(len(plan.symbols))]
        sym_index = {s.name: sym_names[i] for i, s in enumerate(plan.symbols)}
        calls = []
        for call in plan.calls:
            args = [buffer_pointer(plan.buffer(name)) for name in call.args]
            calls.append({"id": call.kernel, "fn": fns[call.kernel], "args": args,
                          "dims": [sym_index[s] for s in call.symbols],
                          "label": clabel("+".join(call.source_ops))})
        return template_env().get_template("common/model.j2").render(
            b=self, plan=plan, kernel_fns=sorted(set(fns.values())), calls=calls, sym_names=sym_names,
            const_offsets=const_offsets, const_bytes=const_bytes, side_file=side_file)

    def render_profiler(self, spec: KernelSpec, fns: list[str], dims: list[int]) -> str:
        values = dict(zip((s.name for s in spec.symbols), dims, strict=True))
        codes = {DType.F32: 0, DType.F16: 1, DType.BF16: 2}

        def sig(t: TensorType) -> dict[str, int]:
            n = 1
            for d in t.shape:
                n *= values[d.name] if isinstance(d, IntVar) else d
            return {"bytes": n * t.dtype.itemsize, "code": codes[t.dtype]}

        inputs = [sig(t) for t in spec.inputs]
        return template_env().get_template("common/profiler.j2").render(
            b=self, fns=fns, spec_key=spec.key(), dims=dims, inputs=inputs, outputs=[sig(t) for t in spec.outputs],
            copies=rotation_copies(sum(t["bytes"] for t in inputs)))

    def exe_link_cmd(self, target: Target, objects: list[Path], out: Path) -> list[str]:
        cmd = self.link_cmd(target, objects, out)
        return [c for c in cmd if c != "-shared"]

    def render_constants_asm(self, blob_path: str) -> str:
        return template_env().get_template("common/constants.S.j2").render(path=blob_path)


# GPU ops whose only tuning knob is the threads per block.
GPU_BLOCK_OPS = ("conv2d", "pool2d", "reduce_sum", "reduce_mean", "reduce_max", "permute", "slice", "concat",
                 "embedding", "cast", "copy", "matmul", "pad", "im2col")
# patch_linear's knobs (gpu/patch_linear.j2): the pixels a block owns, and whether a tile is one output row.
# 128 pixels a block ran ResNet-50's stem fastest on an H200 (0.73 ms at batch 256; 64: 1.02, 32: 1.88): the gather,
# one column a warp at a time, has block_m / 32 independent loads a lane per column to hide latency with.
PATCH_LINEAR_DEFAULT = {"block_m": 128}
# gpu/conv2d_halo.j2: a 3x3 conv over 64 channels with its weights ([9][64][64]) and two 10x10-pixel input windows
# in shared memory. A candidate wherever it applies; the profiler decides.
CONV_HALO = {"halo": True}
CONV_HALO_SMEM_BYTES = (9 * 64 * 64 + 2 * 100 * 64) * 2


class GpuBackend(Backend):
    """cuda and rocm render the same gpu templates, so the same limits bound their configs."""

    def fits(self, spec: KernelSpec, target: Target, config: dict[str, Any]) -> bool:
        if spec.op == "attention":
            return self._attention_fits(spec, target, config)
        if spec.op == "patch_linear":
            return self._patch_linear_fits(spec, target, config)
        if spec.op == "conv2d" and config.get("halo"):
            # Its 97 KiB of shared memory is opted in to; cp.async and mma.sync need sm80.
            return (contexts.op_context(self, spec)["halo"] and config == CONV_HALO
                    and target.opt_in_smem_per_block >= CONV_HALO_SMEM_BYTES)
        if spec.op == "linear":
            # linear.j2 launches T x T threads, each staging one element of both tiles.
            tile = int(config["tile"])
            return gemm_tile_smem_bytes(tile) <= target.smem_per_block and tile * tile <= target.max_threads_per_block
        if "block" not in config:
            return True
        # A partial warp idles lanes; the reductions also keep one slot per warp in shared[32].
        block = int(config["block"])
        return 0 < block <= target.max_threads_per_block and block % target.warp_size == 0

    def _patch_linear_fits(self, spec: KernelSpec, target: Target, config: dict[str, Any]) -> bool:
        ctx = contexts.op_context(self, spec)
        if not ctx["mma"]:
            return config == self.default_configs["patch_linear"]  # the SIMT path has no knob
        block_m, rows = int(config.get("block_m", 0)), bool(config.get("row_tiles", False))
        if block_m not in (32, 64, 128) or (rows and ctx["OW"] > block_m):
            return False  # a row tile is one output row, padded to block_m pixels
        window = 2 * ctx["C"] * ctx["KH"] * ctx["WWP"] if rows else 0
        return patch_linear_smem_bytes(block_m, ctx["N"], ctx["K"]) + window <= target.opt_in_smem_per_block

    def _attention_fits(self, spec: KernelSpec, target: Target, config: dict[str, Any]) -> bool:
        ctx = contexts.op_context(self, spec)
        if not ctx["mma"]:
            # The SIMT path has a fixed tile: every other config would compile the same kernel again.
            return config == self.default_configs["attention"]
        if "block_q" not in config or "block_k" not in config:
            return False
        bq, bk, rows = int(config["block_q"]), int(config["block_k"]), int(config.get("warp_rows", 16))
        min_blocks = int(config.get("min_blocks", 1))
        wgmma, overlap = bool(config.get("wgmma")), bool(config.get("overlap"))
        stages, lean = int(config.get("stages", 0)), bool(config.get("lean"))
        producer = bool(config.get("producer"))
        if wgmma or overlap:
            # Hopper's warpgroup MMA: 64 query rows a warpgroup, one row tile a warp, S = m64n{block_k}.
            if target.arch != "sm90" or not wgmma or rows != 16 or bq % 64 or not 16 <= bk <= 256 or lean:
                return False
            # The warp-specialized variant (a producer warpgroup) takes 2 to 4 stages (3 or more with overlap, which
            # holds two at once) and nothing else pins them.
            if (producer and not (3 if overlap else 2) <= stages <= 4) or (stages and not producer):
                return False
            # Three consumer warpgroups share 152 registers a thread: past 64-wide heads, O alone spills them.
            if producer and bq > 128 and max(ctx["D"], ctx["DV"]) > 64:
                return False
        elif producer:
            return False
        threads = (bq // rows) * 32 + (128 if producer else 0)  # the producer is a whole warpgroup (its NT)
        if not 1 <= min_blocks * threads <= target.max_threads_per_sm or stages not in (0, 1, 2, 3, 4):
            return False
        if stages > 2 and not producer:
            return False
        # Two row tiles a warp double its S, P and O registers: past 64 they spill, unless the warp holds neither
        # Q nor the mask (lean), which leaves room for FlashAttention-2's 32 x 128 scores a warp.
        if rows not in (16, 32) or (rows == 32 and (max(ctx["D"], ctx["DV"]) > 64 or bk > (128 if lean else 64))):
            return False
        mask_block = attention_mask_block(ctx)
        if lean and not attention_layout(ctx["D"], ctx["DV"], bq, bk, mask_block=mask_block, stages=stages).qsep:
            return False  # lean re-reads Q from its own tile
        smem = attention_config_smem_bytes(ctx["D"], ctx["DV"], config, mask_block)
        if overlap or producer or (stages and smem > target.smem_per_block):
            # Dynamic shared memory (opted in past 48 KiB); min_blocks CTAs must fit an SM's 228 KiB, 1 KiB of it
            # reserved per block, or the register cap only buys spills.
            fits_smem = smem <= target.opt_in_smem_per_block and min_blocks * (smem + 1024) <= SM90_SMEM_PER_SM
        else:
            fits_smem = smem <= target.smem_per_block
        return (bq > 0 and bk > 0 and bq % rows == 0 and bk % 16 == 0
                and threads <= target.max_threads_per_block and fits_smem)


def attention_mask_block(ctx: dict[str, Any]) -> bool:
    """Whether the attention's mask is one row for every query with contiguous keys (BERT's padding mask): the
    template then stages it with each key block."""
    return bool(ctx["has_mask"]) and ctx["m"]["q"] == "INT64_C(0)" and ctx["m"]["k"] == "INT64_C(1)"


def patch_linear_smem_bytes(block_m: int, n: int, k: int) -> int:
    """gpu/patch_linear.j2's tensor-core path: the block's patches [KP][block_m] and the weights [n][KP], rows
    padded by 16 bytes, and 8 bytes a column of gather offsets (KP: k rounded up to 16)."""
    kp = -(-k // 16) * 16
    return (kp * (block_m + 8) + n * (kp + 8)) * 2 + kp * 8


# The most shared memory one sm90 block may opt in to (227 KiB: the target's), and an SM's whole (228 KiB).
SM90_DYNAMIC_SMEM_BYTES = get_target("cuda:sm90").opt_in_smem_per_block
SM90_SMEM_PER_SM = 233472


@dataclass(frozen=True)
class AttentionLayout:
    """Shared memory of gpu/attention.j2's tensor-core path, in elements. A stage holds a key block's K rows (ldk
    apart), its V rows (ldv apart) and, when `mask` > 0, its `mask` mask values; `stages` of them, then the Q tile
    (block_q rows, ldk apart) beside them when qsep, else aliasing them."""
    ldk: int
    ldv: int
    stage: int
    stages: int
    qsep: bool
    mask: int
    smem: int


def attention_layout(d: int, dv: int, block_q: int, block_k: int, wgmma: bool = False, overlap: bool = False,
                     mask_block: bool = False, stages: int = 0, producer: bool = False) -> AttentionLayout:
    """The one place the layout is decided: the template renders it, fits counts it. The mma.sync path pads rows by
    16 bytes and keeps two stages when they fit in 48 KiB, else one; Q gets its own tile when it fits beside them.
    The wgmma path keeps unpadded tiles and Q always beside them (the MMA reads it from shared memory); with
    overlap, three stages in dynamic shared memory. mask_block (a mask row shared by every query, keys
    contiguous): each stage also carries the key block's mask values, unless that would cost a stage, Q's own
    tile or static shared memory past 48 KiB. stages (mma.sync path; 0: that 48 KiB rule) pins the number of K/V
    stages, with Q beside them and the mask in every stage, in dynamic shared memory where past 48 KiB: two
    128-key stages are what FlashAttention-2's 128x128 tile needs, and 48 KiB holds only one. producer (wgmma,
    warp-specialized): `stages` stages in dynamic shared memory, each with its mask values."""
    if stages and not (wgmma or overlap):
        ldk, ldv, ms = d + 8, dv + 8, block_k if mask_block else 0
        stage = block_k * (ldk + ldv) + ms
        return AttentionLayout(ldk, ldv, stage, stages, True, ms, block_q * ldk + stages * stage)

    def layout(ms: int) -> AttentionLayout:
        if wgmma or overlap:
            stage = block_k * (d + dv) + ms
            n = stages if producer else 3 if overlap else (2 if 2 * (block_q * d + 2 * stage) <= 48 * 1024 else 1)
            # The producer keeps two Q tiles: the next tile's loads while this one's are read.
            return AttentionLayout(d, dv, stage, n, True, ms, block_q * d * (2 if producer else 1) + n * stage)
        ldk, ldv = d + 8, dv + 8
        stage = block_k * (ldk + ldv) + ms
        n = 2 if 2 * stage * 2 <= 48 * 1024 else 1
        q_tile = block_q * ldk
        qsep = 2 * (q_tile + n * stage) <= 48 * 1024
        return AttentionLayout(ldk, ldv, stage, n, qsep, ms, q_tile + n * stage if qsep else max(q_tile, n * stage))

    plain = layout(0)
    if mask_block:
        staged = layout(block_k)
        if (staged.stages, staged.qsep) == (plain.stages, plain.qsep) and (overlap or producer
                                                                           or 2 * staged.smem <= 48 * 1024):
            return staged
    return plain


def attention_config_smem_bytes(d: int, dv: int, config: dict[str, Any], mask_block: bool = False) -> int:
    """Bytes of shared memory a tensor-core attention config takes (the layout its knobs pick, as the template
    reads them)."""
    wgmma = bool(config.get("wgmma"))
    return 2 * attention_layout(d, dv, int(config["block_q"]), int(config["block_k"]), wgmma,
                                bool(config.get("overlap")), mask_block, int(config.get("stages", 0)),
                                wgmma and bool(config.get("producer"))).smem


def first_line(cmd: list[str], env: dict[str, str] | None = None, last: bool = False) -> str:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=env).stdout.strip().splitlines()
    except (OSError, subprocess.TimeoutExpired) as err:
        return f"unavailable ({err.__class__.__name__})"
    return (out[-1] if last else out[0]) if out else "unknown"
