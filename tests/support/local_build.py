"""Build and run an artifact on this machine: the farm's path with no farm.

graph -> passes -> lower -> render/compile every kernel -> link -> manifest.json,
the same steps codegen_worker.tasks takes, minus Celery, Redis and the store.
Imports only what a bare GPU box has (numpy, scipy, jinja2, pytest, torch):
no celery, boto3 or redis, so the tests under tests/gpu run there as they are.

Besides the builder this holds the graph cases that tests/codegen (cpu) and
tests/gpu (cuda) share, so that both cover the same ops the same way.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from codegen_worker import build
from codegen_worker.backends import Backend, get_backend
from kiln import reference
from kiln.builder import GraphBuilder, Value, gelu, gelu_tanh, layer_norm, linear, relu, sigmoid, silu, softmax, tanh
from kiln.dtypes import DType, bf16_bits_from_f32, f32_from_bf16_bits
from kiln.ir import Dim, Graph, IntVar
from kiln.manifest import FORMAT, FileEntry, KernelEntry, Manifest, TensorSig
from kiln.ops import BINARY, UNARY
from kiln.plan import ExecutionPlan, KernelSpec
from kiln.targets import Target, get_target
from kiln.version import compiler_version
from planner_svc.lower import lower
from planner_svc.pipeline import PassContext, run_passes

# Objects by content key, as the farm's store keeps them: a kernel that several
# tests render identically is compiled once per process.
_OBJECTS: dict[str, bytes] = {}
_OBJECTS_LOCK = threading.Lock()


@dataclass
class LocalBuild:
    dir: Path                      # the artifact: manifest.json + libmodel.so (Model(dir) loads it)
    graph: Graph                   # after the passes
    plan: ExecutionPlan
    configs: dict[str, dict[str, Any]]  # kernel id -> config used
    log: str                       # every compiler's output, concatenated
    sources: dict[str, Path] = field(default_factory=dict)  # kernel id -> its rendered source

    def ops(self) -> list[str]:
        return [c.spec.op for c in self.plan.calls]

    def manifest(self) -> Manifest:
        return Manifest.loads((self.dir / "manifest.json").read_bytes())

    def configs_by_spec(self) -> dict[str, dict[str, Any]]:
        """spec key -> config used: picks another build of the same kernels takes as they are."""
        return {c.spec.key(): self.configs[c.kernel] for c in self.plan.calls}


def _config(backend: Backend, target: Target, spec: KernelSpec, configs: dict[str, dict[str, Any]] | None) -> dict[str, Any]:
    """configs maps a spec key (a profiled pick) or an op kind (a test's pin) to a config."""
    if configs and spec.key() in configs:
        return dict(configs[spec.key()])
    if configs and spec.op in configs:
        return dict(configs[spec.op])
    return backend.default_config(spec, target)


def merge_sources(backend: Backend, sources: Iterable[str]) -> str:
    """Several rendered kernels as one translation unit: the prelude once.

    Each kernel's own names are prefixed by its fn, so only the prelude (with
    its static helpers) would clash; nvcc pays ~2 s a translation unit.
    """
    prelude = backend.prelude
    parts = []
    seen = False
    unique = list(dict.fromkeys(sources))
    # CUTLASS decides its grid-dependency hooks at its first include; a Stream-K source
    # #undefs them, so merged with another CUTLASS source one of the two would be wrong.
    if any("#undef CUTLASS_ENABLE_GDC_FOR_SM90" in s for s in unique) and sum("cutlass/" in s for s in unique) > 1:
        raise ValueError("a Stream-K CUTLASS kernel cannot share a translation unit with another CUTLASS kernel")
    for src in unique:
        # CUTLASS kernels carry no prelude: their names live in their own namespace.
        if prelude in src:
            parts.append(src.replace(prelude, "", 1) if seen else src)
            seen = True
        else:
            parts.append(src)
    return "\n".join(parts)


def _disk_cache() -> Path | None:
    """KILN_OBJECT_CACHE: a folder of objects by key, so that objects compiled on a
    CPU machine travel to a GPU box (benches) instead of being compiled there again."""
    d = os.environ.get("KILN_OBJECT_CACHE")
    return Path(d) if d else None


def compile_cached(backend: Backend, target: Target, rk: build.RenderedKernel, workdir: Path) -> tuple[bytes, str]:
    with _OBJECTS_LOCK:
        cached = _OBJECTS.get(rk.object_key)
    disk = _disk_cache()
    if cached is None and disk is not None and (disk / f"{rk.object_key}.o").is_file():
        cached = (disk / f"{rk.object_key}.o").read_bytes()
    if cached is not None:
        return cached, ""
    obj, log = build.compile_source(backend, target, rk.source, workdir, rk.fn)
    with _OBJECTS_LOCK:
        _OBJECTS[rk.object_key] = obj
    if disk is not None:
        disk.mkdir(parents=True, exist_ok=True)
        tmp = disk / f"{rk.object_key}.o.{os.getpid()}.{threading.get_ident()}"
        tmp.write_bytes(obj)
        tmp.replace(disk / f"{rk.object_key}.o")  # never a half-written object under its key
    return obj, log


def build_local(graph: Graph, target_name: str, out_dir: str | Path, configs: dict[str, dict[str, Any]] | None = None,
                *, single_tu: bool = False, jobs: int | None = None,
                disabled_passes: frozenset[str] = frozenset()) -> LocalBuild:
    """Build `graph` for `target_name` into `out_dir`.

    configs: spec key or op kind -> config, replacing the backend's default.
    single_tu: compile every kernel in one translation unit (one nvcc run).
    jobs: compilers run in parallel (default: the machine's cores).
    disabled_passes: pipeline steps left out (an A/B of one pass).
    Objects are cached in-process by object key (as the farm caches them), so
    `log` holds the output of this build's compiles only.
    """
    out = Path(out_dir)
    work = out / "build"
    work.mkdir(parents=True, exist_ok=True)
    target = get_target(target_name)
    backend = get_backend(target.family)
    g2, _records = run_passes(graph, PassContext(disabled=disabled_passes))
    plan = lower(g2, target_name)

    rendered: dict[str, build.RenderedKernel] = {}
    used: dict[str, dict[str, Any]] = {}
    for call in plan.calls:
        cfg = _config(backend, target, call.spec, configs)
        rendered[call.kernel] = build.render(backend, target, call.spec, cfg)
        used[call.kernel] = cfg
    fns = {k: rk.fn for k, rk in rendered.items()}
    # One object per fn, or the link sees duplicates; a dispatch kernel brings one per range.
    unique = list({k.fn: k for rk in rendered.values() for k in (rk, *rk.parts)}.values())
    sources = {k: work / f"{rk.fn}{backend.source_suffix}" for k, rk in rendered.items()}

    if single_tu:
        obj, log = build.compile_source(backend, target, merge_sources(backend, [rk.source for rk in unique]),
                                        work, "kernels")
        objects, logs = [obj], [log]
        sources = dict.fromkeys(rendered, work / f"kernels{backend.source_suffix}")
        digests = dict.fromkeys(fns.values(), hashlib.sha256(obj).hexdigest())
    else:
        workers = max(1, min(len(unique), jobs or os.cpu_count() or 1))
        with ThreadPoolExecutor(workers) as pool:
            results = list(pool.map(lambda rk: compile_cached(backend, target, rk, work), unique))
        objects = [obj for obj, _ in results]
        logs = [log for _, log in results]
        digests = {rk.fn: hashlib.sha256(obj).hexdigest() for rk, obj in zip(unique, objects, strict=True)}
        for rk in unique:  # for a reader of a failed test: what was compiled
            path = work / f"{rk.fn}{backend.source_suffix}"
            if not path.exists():
                path.write_text(rk.source)

    linked = build.link(backend, target, plan, fns, objects, [c.data for c in g2.constants], work)
    logs.append(linked.log)
    files = []
    for name, path in (("libmodel.so", linked.lib), ("weights.bin", linked.weights)):
        if path is not None:
            shutil.copyfile(path, out / name)
            data = (out / name).read_bytes()
            files.append(FileEntry(name, hashlib.sha256(data).hexdigest(), len(data)))
    types = {t.name: t.type for t in graph.inputs}
    manifest = Manifest(
        format=FORMAT, graph=plan.graph_name, target=target_name, job_key="local",
        compiler_version=compiler_version(), toolchain=backend.toolchain_version(),
        inputs=tuple(TensorSig(b.name, b.type.dtype, types[b.name].shape) for b in plan.of_kind("input")),
        outputs=tuple(TensorSig(b.name, b.type.dtype, b.type.shape) for b in plan.of_kind("output")),
        symbols=plan.symbols, files=tuple(files),
        kernels=tuple(KernelEntry(c.kernel, c.source_ops, c.spec.key(), fns[c.kernel],
                                  digests[fns[c.kernel]], used[c.kernel], False) for c in plan.calls),
        arena_bytes=plan.arena_bytes, profiled=False)
    (out / "manifest.json").write_bytes(manifest.dumps())
    log = "".join(logs)
    (out / "build.log").write_text(log)
    return LocalBuild(out, g2, plan, used, log, sources)


def build_artifact(graph: Graph, target_name: str, out_dir: str | Path,
                   configs: dict[str, dict[str, Any]] | None = None) -> Path:
    """The artifact directory (manifest.json + libmodel.so) for kiln.runtime.Model."""
    return build_local(graph, target_name, out_dir, configs).dir


def rel_err(got: Any, ref: Any) -> float:
    """||got - ref|| / ||ref|| in float64 (NaN anywhere gives NaN, so `< tol` fails)."""
    g = np.asarray(got, dtype=np.float64)
    r = np.asarray(ref, dtype=np.float64)
    assert g.shape == r.shape, f"shape {g.shape} != reference {r.shape}"
    denom = float(np.linalg.norm(r))
    num = float(np.linalg.norm(g - r))
    return num / denom if denom > 0 else num


# --- running and comparing ---------------------------------------------------
def feeds_for(graph: Graph, seed: int = 0, sizes: dict[str, int] | None = None) -> dict[str, np.ndarray]:
    """Random non-zero normals, already rounded to each input's dtype.

    bf16 inputs stay float32 arrays (the runtime converts), but hold values a
    bf16 can represent, so the float64 reference sees what the kernel sees.
    """
    feeds = reference.random_inputs(graph, seed=seed, sizes=sizes)
    for t in graph.inputs:
        v = feeds[t.name]
        v = np.where(v == 0, 0.5, v).astype(v.dtype)  # "non-zero" on the nose
        if t.type.dtype is DType.BF16:
            v = f32_from_bf16_bits(bf16_bits_from_f32(v)).reshape(v.shape)  # (keeps rank 0)
        feeds[t.name] = v
    return feeds


TOLERANCE = {"cpu": {DType.F32: 1e-5, DType.F16: 1e-2},
             "cuda": {DType.F32: 1e-4, DType.F16: 1e-2, DType.BF16: 1e-2}}


def check_model(model: Any, graph: Graph, tol: float, sizes_list: Iterable[dict[str, int] | None] = (None,),
                seed: int = 0, feeds_fn: Callable[..., dict[str, np.ndarray]] | None = None) -> list[float]:
    """Run `model` at each size assignment and compare every output with the
    float64 reference; every element must be finite. Returns the errors.
    feeds_fn(graph, seed=, sizes=) draws the inputs instead of feeds_for (e.g.
    tests.support.op_cases.case_feeds, for indices and masks)."""
    errors = []
    for n, sizes in enumerate(sizes_list):
        feeds = (feeds_fn or feeds_for)(graph, seed=seed + n, sizes=sizes)
        got = model.run(feeds)
        ref = reference.run(graph, feeds)
        assert set(got) == set(ref), f"outputs {sorted(got)} != reference outputs {sorted(ref)}"
        for name, want in ref.items():
            have = np.asarray(got[name], dtype=np.float64)
            bad = ~np.isfinite(have)
            assert not bad.any(), (f"output {name!r} at sizes {sizes}: {int(bad.sum())} of {have.size} elements "
                                   f"are not finite (first at {np.argwhere(bad)[0].tolist()})")
            err = rel_err(have, want)
            assert err < tol, f"output {name!r} at sizes {sizes}: rel err {err:.3g} >= {tol:g}"
            errors.append(err)
    return errors


# --- graph cases shared by tests/codegen and tests/gpu -----------------------
# Each `add_*` adds one case to a builder under a name prefix and returns its
# outputs, so a test can build a case alone (cheap with g++) or many cases in
# one graph (one nvcc build instead of dozens). `graph()` makes the graph.
def graph(name: str, *adds: Callable[[GraphBuilder], Value | list[Value]]) -> Graph:
    b = GraphBuilder(name)
    outs: list[Value] = []
    for add in adds:
        got = add(b)
        outs += got if isinstance(got, list) else [got]
    return b.build(*outs)


def _op(b: GraphBuilder, kind: str, *xs: Value) -> Value:
    return b.op(kind, list(xs))


def _weights(n: int, k: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-1, 1, (n, k)) / np.sqrt(k)


def add_pointwise_chain(b: GraphBuilder, dtype: DType, shape: tuple[Dim, ...] = (5, 37), p: str = "") -> Value:
    """One chain using every unary and binary op, kept in their domains (sqrt
    of a positive, exp of a bounded value, division by >= 1), every
    intermediate used once, so that the whole chain fuses into one kernel."""
    x = b.input(f"{p}x", shape, dtype)
    y = b.input(f"{p}y", shape, dtype)
    a = gelu(x) + gelu_tanh(y)                    # gelu, gelu_tanh, add
    c = silu(a) - tanh(x * y)                     # silu, tanh, mul, sub
    d = _op(b, "maximum", c, relu(-y))            # maximum, relu, neg
    e = _op(b, "exp", tanh(d))                    # exp (of a value in [-1, 1])
    f = _op(b, "sqrt", sigmoid(e + x))            # sqrt (of a value in (0, 1)), sigmoid
    g = f / _op(b, "exp", relu(x))                # div (by a value >= 1)
    p1 = _op(b, "minimum", _op(b, "erf", x), _op(b, "rsqrt", _op(b, "exp", tanh(y))))  # minimum, erf, rsqrt
    p2 = _op(b, "pow", sigmoid(x), _op(b, "abs", y))  # pow (of a positive base), abs
    p3 = _op(b, "log", _op(b, "reciprocal", sigmoid(y)))  # log (of a value >= 1), reciprocal
    return g + p1 * p2 - p3


def add_each_pointwise_op(b: GraphBuilder, dtype: DType, shape: tuple[Dim, ...] = (5, 37), p: str = "") -> list[Value]:
    """Every unary and binary op alone (one output, one kernel each), so that an
    op whose error a long chain would squash is still seen."""
    x = b.input(f"{p}x", shape, dtype)
    y = b.input(f"{p}y", shape, dtype)
    positive = ("sqrt", "rsqrt", "log", "reciprocal")
    outs = [_op(b, kind, _op(b, "exp", x)) if kind in positive else _op(b, kind, x) for kind in UNARY]
    outs += [_op(b, kind, x, sigmoid(y)) if kind == "div" else _op(b, kind, sigmoid(y), x) if kind == "pow"
             else _op(b, kind, x, y) for kind in BINARY]
    return outs


def add_sum_chain(b: GraphBuilder, dtype: DType, n: int, shape: tuple[Dim, ...], p: str = "") -> Value:
    """in0 + in1 + ... + in{n-1}: one fused kernel of n inputs (64 is the op's limit)."""
    xs = [b.input(f"{p}in{i}", shape, dtype) for i in range(n)]
    acc = xs[0]
    for x in xs[1:]:
        acc = acc + x
    return acc


def add_scalar(b: GraphBuilder, dtype: DType, p: str = "") -> Value:
    """Rank-0 inputs and output."""
    x, y = b.input(f"{p}x", (), dtype), b.input(f"{p}y", (), dtype)
    return sigmoid(x * y)


def broadcast_shapes(kind: str, batch: Dim) -> tuple[tuple[Dim, ...], tuple[Dim, ...]]:
    return {
        "bias_n": ((batch, 33), (33,)),
        "row_1n": ((7, 33), (1, 33)),
        "col_b1": ((batch, 33), (batch, 1)),
        "scalar": ((batch, 33), (1,)),
        "b1n_1m1": ((batch, 1, 33), (1, 5, 1)),
        "m1_rank3": ((batch, 5, 33), (5, 1)),
        "trailing_ones": ((batch, 33, 1), (33, 1)),
        "rank0": ((batch, 33), ()),
    }[kind]


BROADCAST_KINDS = ("bias_n", "row_1n", "col_b1", "scalar", "b1n_1m1", "m1_rank3", "trailing_ones", "rank0")


def add_broadcast(b: GraphBuilder, dtype: DType, kind: str, batch: Dim, p: str = "") -> Value:
    """(x op bias) chains: one fused kernel whose inputs broadcast differently."""
    xs, bs = broadcast_shapes(kind, batch)
    x = b.input(f"{p}x", xs, dtype)
    bias = b.input(f"{p}bias", bs, dtype)
    return silu(tanh(x * bias + x)) - bias


LINEAR_KINDS = ("plain", "bias", "gelu", "residual", "add_relu", "broadcast_extras")


def add_linear(b: GraphBuilder, dtype: DType, kind: str, m: Dim = 7, n: int = 33, k: int = 65, p: str = "") -> Value:
    """x[m, k] @ w[n, k]^T (+ bias) with an epilogue; weights are constants.
    The default 7 x 33 x 65 is a multiple of no tile size."""
    x = b.input(f"{p}x", (m, k), dtype)
    w = b.constant(f"{p}w", _weights(n, k, 1), dtype)
    bias = b.constant(f"{p}b", np.random.default_rng(2).uniform(-1, 1, n), dtype)
    if kind == "plain":
        return linear(x, w)
    if kind == "bias":
        return linear(x, w, bias)
    if kind == "gelu":
        return gelu(linear(x, w, bias))
    if kind == "gelu_tanh":
        return gelu_tanh(linear(x, w, bias))
    if kind == "silu":
        return silu(linear(x, w, bias))
    if kind == "sigmoid":
        return sigmoid(linear(x, w))
    r = b.input(f"{p}r", (m, n), dtype)
    if kind == "residual":
        return linear(x, w, bias) + r
    if kind == "add_relu":
        return relu(linear(x, w) + r)
    if kind == "broadcast_extras":  # epilogue inputs of shape [n] and [m, 1], and a full one
        s = b.input(f"{p}s", (n,), dtype)
        t = b.input(f"{p}t", (m, 1), dtype)
        return sigmoid(linear(x, w, bias) * s + t) * r
    raise ValueError(kind)


def add_matmul(b: GraphBuilder, dtype: DType, batching: str, batch: Dim | None = None, p: str = "") -> Value:
    """A matmul CUTLASS can serve (K = 64, N = 72: 16-byte rows; M = 77 a multiple of no tile):
    "fold" is [B, 77, 64] @ [64, 72], "batched" is [B, 3, 77, 64] @ [B, 3, 64, 72]. Both operands
    are inputs: a constant rank-2 b becomes a linear (planner_svc's matmul-to-linear pass)."""
    batch = batch if batch is not None else IntVar("batch", 1, 64)
    if batching == "fold":
        a = b.input(f"{p}a", (batch, 77, 64), dtype)
        return b.op("matmul", [a, b.input(f"{p}b", (64, 72), dtype)])
    a = b.input(f"{p}a", (batch, 3, 77, 64), dtype)
    return b.op("matmul", [a, b.input(f"{p}b", (batch, 3, 64, 72), dtype)])


def add_linear_rank3(b: GraphBuilder, dtype: DType, batch: Dim, p: str = "") -> Value:
    """x of rank 3 with a symbolic leading dim: M = batch * 3."""
    x = b.input(f"{p}x", (batch, 3, 20), dtype)
    w = b.constant(f"{p}w", _weights(17, 20, 3), dtype)
    return gelu(linear(x, w))


ROW_LENGTHS = (1, 7, 33, 257, 1001)


def add_row_op(b: GraphBuilder, dtype: DType, op: str, cols: int, batch: Dim | None = 5, p: str = "",
               eps: float = 1e-5) -> Value:
    """layernorm or softmax over rows of `cols` elements, 3 x batch rows
    (batch None: a rank-1 input, one row)."""
    x = b.input(f"{p}x", (batch, 3, cols) if batch is not None else (cols,), dtype)
    if op == "softmax":
        return softmax(x)
    rng = np.random.default_rng(cols)
    g = b.constant(f"{p}gamma", 1.0 + 0.1 * rng.standard_normal(cols), dtype)
    beta = b.constant(f"{p}beta", 0.1 * rng.standard_normal(cols), dtype)
    return layer_norm(x, g, beta, eps=eps)


def add_two_symbols(b: GraphBuilder, dtype: DType, p: str = "") -> list[Value]:
    """Two symbolic dims that kernels meet in different orders: each kernel's
    s0, s1 must be bound to the right graph symbol."""
    seq, batch = IntVar("seq", 1, 12), IntVar("batch", 1, 6)
    x = b.input(f"{p}x", (seq, 8), dtype)            # the plan's symbols: seq, then batch
    y = b.input(f"{p}y", (batch, seq, 8), dtype)
    w = b.constant(f"{p}w", _weights(5, 8, 9), dtype)
    g = b.constant(f"{p}g", np.linspace(0.5, 1.5, 8), dtype)
    beta = b.constant(f"{p}beta", np.linspace(-0.1, 0.1, 8), dtype)
    return [tanh(y * x + x),                       # fused, x broadcast: s0 = batch, s1 = seq
            softmax(y),                            # s0 = batch, s1 = seq
            linear(y, w),                          # M = batch * seq
            layer_norm(x, g, beta)]                # s0 = seq


def add_mlp(b: GraphBuilder, dtype: DType, batch: Dim, d: int = 32, hidden: int = 48, p: str = "") -> list[Value]:
    """A small transformer-ish block: every kernel kind in one graph."""
    x = b.input(f"{p}x", (batch, d), dtype)
    w1 = b.constant(f"{p}fc1.weight", _weights(hidden, d, 5), dtype)
    b1 = b.constant(f"{p}fc1.bias", np.random.default_rng(6).uniform(-0.2, 0.2, hidden), dtype)
    w2 = b.constant(f"{p}fc2.weight", _weights(d, hidden, 7), dtype)
    h = gelu(linear(x, w1, b1))
    h = linear(h, w2) + x
    rng = np.random.default_rng(8)
    z = layer_norm(h, b.constant(f"{p}ln.weight", 1 + 0.1 * rng.standard_normal(d), dtype),
                   b.constant(f"{p}ln.bias", 0.1 * rng.standard_normal(d), dtype))
    return [softmax(z), silu(z) * x]


HOSTILE = ('*/ #include <evil>', 'q"uote\'s', 'back\\slash\\', '??/ trigraph %s %n {{ x }} {% raw %}',
           '"); system("rm -rf /"); //', 'a+b+c', "x" * 250)


def hostile_graph(dtype: DType) -> Graph:
    """Tensor, op, constant and graph names full of C/C++, asm and Jinja syntax."""
    h = HOSTILE
    b = GraphBuilder(f"/* {h[0]} {h[1]} {h[2]}")
    x = b.input(h[0], (IntVar("batch", 1, 8), 16), dtype)
    r = b.input(h[1], (16,), dtype)
    w = b.constant(h[2], _weights(16, 16, 4), dtype)
    y = b.op("linear", [x, w], name=h[3])
    y = b.op("add", [y, r], name=h[4])
    y = b.op("gelu", [y], name=h[5])
    g = b.constant(h[6], np.ones(16), dtype)
    beta = b.constant(h[6] + "\\", np.zeros(16), dtype)
    z = layer_norm(y, g, beta, name='ln */ "\\')
    s = b.op("softmax", [z], name="#define int float")
    return b.build(z, s)
