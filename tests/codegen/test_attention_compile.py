"""gpu/attention.j2 renders and compiles for cuda:sm90, cuda:sm80 and rocm:gfx90a.

Nothing runs here (no GPU): tests/gpu/test_attention_gpu.py runs the kernels
on a device. Each target's kernels go into one translation unit (one nvcc or
hipcc run). `add_attention` is shared with the GPU test.
"""
from __future__ import annotations

import re
import shutil
import subprocess

import pytest

from codegen_worker.backends import get_backend
from codegen_worker.backends.base import SM90_DYNAMIC_SMEM_BYTES, attention_config_smem_bytes
from kiln.builder import GraphBuilder, Value
from kiln.dtypes import DType
from kiln.ir import Dim, IntVar
from kiln.ops import AttentionAttrs
from kiln.plan import KernelSpec
from kiln.targets import get_target
from planner_svc.lower import lower
from planner_svc.pipeline import run_passes
from tests.support import local_build as lb

LAYOUTS = ("bhsd", "bshd", "bs3hd")
HEADS = 2


def mask_shape(kind: str, batch: Dim, sq: int, sk: int) -> tuple[Dim, ...]:
    """Additive mask shapes: a key-padding mask, a full one, one shared by the
    batch, and one broadcast along the keys (a stride-0 key axis)."""
    return {"b11k": (batch, 1, 1, sk), "bhqk": (batch, HEADS, sq, sk), "qk": (sq, sk),
            "1hq1": (1, HEADS, sq, 1)}[kind]


def add_attention(b: GraphBuilder, dtype: DType, layout: str, *, d: int, sq: int, sk: int, batch: Dim,
                  mask: str | None = None, causal: bool = False, dv: int | None = None, p: str = "") -> Value:
    """One attention op on fresh inputs named p + q/k/v/qkv/mask; scale 1/sqrt(d)."""
    dv = d if dv is None else dv
    if layout == "bs3hd":
        assert sq == sk and dv == d, "a packed qkv has one length and one head dim"
        ins = [b.input(f"{p}qkv", (batch, sq, 3, HEADS, d), dtype)]
    else:
        def shape(s: int, width: int) -> tuple[Dim, ...]:
            return (batch, HEADS, s, width) if layout == "bhsd" else (batch, s, HEADS, width)
        ins = [b.input(f"{p}q", shape(sq, d), dtype), b.input(f"{p}k", shape(sk, d), dtype),
               b.input(f"{p}v", shape(sk, dv), dtype)]
    if mask is not None:
        ins.append(b.input(f"{p}mask", mask_shape(mask, batch, sq, sk), dtype))
    return b.op("attention", ins, AttentionAttrs(d ** -0.5, causal, mask is not None, layout), name=f"{p}attn")


def case_name(dtype: DType, layout: str, d: int, mask: str | None, causal: bool) -> str:
    return f"{dtype.value}_{layout}_d{d}_{mask or 'nomask'}_{'causal' if causal else 'full'}_"


def coverage_graph(dtypes: list[DType]):
    """Per dtype, layout and head dim (64: tensor cores where the target has
    them; 40: SIMT everywhere) one op with a padding mask and causal on, and
    a plain one for bshd, which is what BERT runs."""
    batch = IntVar("batch", 1, 64)
    adds = []
    for dt in dtypes:
        for layout in LAYOUTS:
            for d in (64, 40):
                sq, sk = (77, 77) if layout == "bs3hd" else (77, 50)
                adds.append(lambda b, dt=dt, layout=layout, d=d, sq=sq, sk=sk: add_attention(
                    b, dt, layout, d=d, sq=sq, sk=sk, batch=batch, mask="b11k", causal=True,
                    p=case_name(dt, layout, d, "b11k", True)))
        adds.append(lambda b, dt=dt: add_attention(b, dt, "bshd", d=64, sq=384, sk=384, batch=batch,
                                                   p=case_name(dt, "bshd", 64, None, False)))
    return lb.graph("attention_compile", *adds)


TARGETS = {
    "cuda:sm90": ("nvcc", [DType.F16, DType.BF16, DType.F32]),
    "cuda:sm80": ("nvcc", [DType.F16, DType.BF16, DType.F32]),
    "rocm:gfx90a": ("hipcc", [DType.F16, DType.F32]),
}


def _need(tool: str) -> None:
    if shutil.which(tool) is None:
        pytest.skip(f"{tool} is not installed")


@pytest.mark.parametrize("target_name", list(TARGETS))
def test_attention_compiles_in_one_translation_unit(tmp_path, target_name):
    tool, dtypes = TARGETS[target_name]
    _need(tool)
    graph = coverage_graph(dtypes)
    built = lb.build_local(graph, target_name, tmp_path / "a", single_tu=True)
    calls = built.plan.calls
    assert {c.spec.op for c in calls} == {"attention"} and len(calls) == len(dtypes) * (len(LAYOUTS) * 2 + 1)
    source = (built.dir / "build" / f"kernels{get_backend(get_target(target_name).family).source_suffix}").read_text()
    mma_kernels = source.count("// ---- tensor-core path")
    simt_kernels = source.count("// ---- SIMT path")
    expect_mma = sum(1 for c in calls if c.spec.inputs[0].dtype in (DType.F16, DType.BF16)
                     and c.spec.inputs[0].shape[-1] == 64) if tool == "nvcc" else 0
    assert (mma_kernels, simt_kernels) == (expect_mma, len(calls) - expect_mma)
    if tool == "nvcc":
        assert "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32" in source
        assert "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32" in source
    assert (built.dir / "libmodel.so").stat().st_size > 0
    if target_name == "cuda:sm90" and shutil.which("cuobjdump"):
        sass = subprocess.run(["cuobjdump", "-sass", str(built.dir / "libmodel.so")], capture_output=True,
                              text=True).stdout
        assert "HMMA.16816.F32" in sass, "the tensor-core path compiled to no HMMA"


def _spec(target_name: str, dtype: DType, d: int, dv: int | None = None, mask: str = "b11k") -> KernelSpec:
    graph = lb.graph("one", lambda b: add_attention(b, dtype, "bhsd", d=d, sq=33, sk=33, batch=IntVar("batch", 1, 4),
                                                    dv=dv, mask=mask))
    return lower(run_passes(graph)[0], target_name).calls[0].spec


@pytest.mark.parametrize("d", [64, 128])
def test_mma_candidates_fit_the_smem_limit(d):
    target = get_target("cuda:sm90")
    backend = get_backend("cuda")
    spec = _spec("cuda:sm90", DType.F16, d)
    cands = backend.candidate_configs(spec, target)
    assert cands[0] == backend.default_config(spec, target) and len(cands) >= 3
    for c in cands:
        smem = attention_config_smem_bytes(d, d, c)
        assert smem <= (SM90_DYNAMIC_SMEM_BYTES if c.get("overlap") or c.get("stages") else target.smem_per_block)
    # 128-query blocks of 128-wide heads with 128-key blocks would need 2 x 69,632 bytes: never offered.
    assert not backend.fits(spec, target, {"block_q": 64, "block_k": 256})
    assert not backend.fits(spec, target, {"block_q": 40, "block_k": 64})


@pytest.mark.parametrize("d", [64, 128])
@pytest.mark.parametrize("mask", ["b11k", "bhqk"])
def test_rendered_layout_is_the_one_fits_counts(d, mask):
    """The template's shared memory (a comment in the source) is what GpuBackend.fits counts, with the key
    block's mask values in each stage only for a mask row shared by every query (b11k), and only where they
    cost no stage."""
    target = get_target("cuda:sm90")
    backend = get_backend("cuda")
    spec = _spec("cuda:sm90", DType.F16, d, mask=mask)
    staged = []
    for c in backend.candidate_configs(spec, target):
        src = backend.render_kernel(spec, c, "kiln_k_probe")
        got = re.search(r"stages=(\d+) mask a stage=(\d+) smem=(\d+) B", src)
        assert got, c
        smem = attention_config_smem_bytes(d, d, c, mask_block=mask == "b11k")
        assert int(got.group(3)) == smem, c
        staged.append(int(got.group(2)) > 0)
        if mask != "b11k":
            assert int(got.group(2)) == 0, c
    # BERT's shape (d 64, a padding mask): the key blocks carry their mask in most configs.
    assert any(staged) == (mask == "b11k")


@pytest.mark.parametrize("target_name,dtype,d", [("cuda:sm90", DType.F32, 64), ("cuda:sm90", DType.F16, 40),
                                                 ("cuda:sm90", DType.F16, 256), ("rocm:gfx90a", DType.F16, 64)])
def test_simt_path_offers_only_its_one_config(target_name, dtype, d):
    target = get_target(target_name)
    backend = get_backend(target.family)
    spec = _spec(target_name, dtype, d)
    assert backend.candidate_configs(spec, target) == [backend.default_config(spec, target)]


def test_head_dims_pick_the_path():
    backend = get_backend("cuda")
    target = get_target("cuda:sm90")
    for d, dv, mma in ((64, 64, True), (16, 128, True), (48, 32, True), (40, 40, False), (64, 40, False),
                       (144, 144, False), (8, 8, False)):
        spec = _spec("cuda:sm90", DType.BF16, d, dv)
        src = backend.render_kernel(spec, backend.default_config(spec, target), "kiln_k_probe")
        assert ("// ---- tensor-core path" in src) == mma, (d, dv)
        assert ("// ---- SIMT path" in src) != mma, (d, dv)


@pytest.mark.parametrize("config,dtype", [({"block_q": 128, "block_k": 64, "warp_rows": 32}, DType.F16),
                                          ({"block_q": 64, "block_k": 32, "warp_rows": 32}, DType.BF16)])
def test_two_row_tiles_a_warp_compile(tmp_path, config, dtype):
    """warp_rows = 32: one padding mask row shared by every query, a mask row per
    query, and no mask, in one translation unit."""
    _need("nvcc")
    batch = IntVar("batch", 1, 8)
    graph = lb.graph("attention_rows32", *[
        (lambda b, mask=mask, causal=causal: add_attention(b, dtype, "bshd", d=64, sq=150, sk=211, batch=batch,
                                                           mask=mask, causal=causal, p=f"{mask}_{causal}."))
        for mask, causal in (("b11k", True), ("bhqk", False), (None, False))])
    built = lb.build_local(graph, "cuda:sm90", tmp_path / "a", configs={"attention": config}, single_tu=True)
    source = (built.dir / "build" / "kernels.cu").read_text()
    assert source.count("row tiles a warp=2") == 3
    assert "mask_pairs" in source and "one row serves all of this thread's rows" in source
    assert (built.dir / "libmodel.so").stat().st_size > 0


def _wgmma_cases() -> list:
    """Every wgmma candidate the backend offers at D = 64 and D = 128, plus a
    64-query, 128-key config (bf16) outside the candidates."""
    cases = []
    for d in (64, 128):
        for c in get_backend("cuda").candidate_configs(_spec("cuda:sm90", DType.F16, d), get_target("cuda:sm90")):
            if c.get("wgmma"):
                cases.append(pytest.param(c, DType.F16, d, id=f"d{d}-" + "-".join(f"{k}{v}" for k, v in c.items())))
    cases.append(pytest.param({"block_q": 64, "block_k": 128, "wgmma": True}, DType.BF16, 64, id="d64-bf16-64x128"))
    return cases


@pytest.mark.parametrize("config,dtype,d", _wgmma_cases())
def test_wgmma_path_compiles_without_serialisation(tmp_path, config, dtype, d):
    """The sm90 warpgroup-MMA path, with a padding mask (causal), a mask row per
    query (full and causal) and no mask: S and P V on wgmma (SS and RS forms),
    a proxy fence between cp.async and wgmma, and no ptxas warning that it
    serialised the asynchronous MMAs or waited on them to free registers
    (C7510, C7512, C7519). Without a min_blocks cap nothing spills."""
    _need("nvcc")
    batch = IntVar("batch", 1, 8)
    cases = (("b11k", True), ("bhqk", False), ("bhqk", True), (None, False))
    graph = lb.graph("attention_wgmma", *[
        (lambda b, mask=mask, causal=causal: add_attention(b, dtype, "bshd", d=d, sq=150, sk=211, batch=batch,
                                                           mask=mask, causal=causal, p=f"{mask}_{causal}."))
        for mask, causal in cases])
    built = lb.build_local(graph, "cuda:sm90", tmp_path / "a", configs={"attention": config}, single_tu=True)
    source = (built.dir / "build" / "kernels.cu").read_text()
    ab = "bf16" if dtype == DType.BF16 else "f16"
    # One S = Q K^T (m64n<block_k>) and one O += P V (m64n<DV>) wrapper a kernel.
    forms = [f"wgmma.mma_async.sync.aligned.m64n{n}k16.f32.{ab}.{ab}" for n in (config["block_k"], d)]
    assert sum(source.count(f) for f in set(forms)) == 2 * len(cases) and source.count(forms[1]) >= len(cases)
    assert source.count("fence.proxy.async.shared::cta") == len(cases)
    assert "static_assert(true" in source and "static_assert(false" not in source
    # overlap: three stages past 48 KiB (dynamic, opted in) and P V waited on one group behind the scores; the
    # producer variant's stages are dynamic too.
    overlap, producer = bool(config.get("overlap")), bool(config.get("producer"))
    assert (source.count("cudaFuncAttributeMaxDynamicSharedMemorySize") == 2 * len(cases)) == (overlap or producer)
    assert ("wgmma.wait_group.sync.aligned 1;" in source) == overlap
    ptxas = subprocess.run(["nvcc", *get_backend("cuda").flags(get_target("cuda:sm90")),
                            "-Xptxas", "-v", "-c", str(built.dir / "build" / "kernels.cu"), "-o", str(tmp_path / "k.o")],
                           capture_output=True, text=True)
    assert ptxas.returncode == 0, ptxas.stderr[-2000:]
    assert " bytes spill stores" in ptxas.stderr
    for code in ("C7510", "C7512", "C7519", "serializ"):
        assert code not in ptxas.stderr, ptxas.stderr[-3000:]
    # Spill stores of each kernel, the aligned (cp.async) instantiation marked.
    spills, aligned = [], False
    for line in ptxas.stderr.splitlines():
        if "Compiling entry function" in line:
            aligned = "ILb1E" in line
        elif "bytes spill stores" in line:
            spills.append((aligned, int(re.search(r"(\d+) bytes spill stores", line).group(1))))
    if producer:
        # Three consumer warpgroups share 152 registers a thread: the aligned kernel may spill a few words on some
        # of these masks (BERT's padding mask: none; these configs won BERT's shapes on an H200, s12); the
        # plain-load fallback may spill more.
        assert all(n <= 64 for is_aligned, n in spills if is_aligned), ptxas.stderr[-2000:]
    elif "min_blocks" not in config:
        assert all(n == 0 for _, n in spills), ptxas.stderr[-2000:]


def test_pinned_wgmma_configs_the_path_cannot_run_fail_to_compile():
    """Pins bypass GpuBackend.fits; the template itself refuses what wgmma cannot run."""
    backend = get_backend("cuda")
    spec = _spec("cuda:sm90", DType.F16, 64)
    for bad in ({"block_q": 128, "block_k": 64, "wgmma": True, "warp_rows": 32},
                {"block_q": 96, "block_k": 64, "wgmma": True}, {"block_q": 64, "block_k": 24, "wgmma": True},
                # The producer's ring with overlap holds two stages: two would deadlock it.
                {"block_q": 64, "block_k": 64, "wgmma": True, "producer": True, "stages": 2, "overlap": True},
                # The mma.sync loop runs one or two stages.
                {"block_q": 64, "block_k": 64, "lean": True, "stages": 3}):
        assert "static_assert(false" in backend.render_kernel(spec, bad, "kiln_k_probe"), bad
    assert "static_assert(true" in backend.render_kernel(spec, {"block_q": 64, "block_k": 64, "wgmma": True},
                                                         "kiln_k_probe")


def test_wgmma_configs_only_on_sm90():
    backend = get_backend("cuda")
    wg = {"block_q": 128, "block_k": 64, "wgmma": True}
    assert backend.fits(_spec("cuda:sm90", DType.F16, 64), get_target("cuda:sm90"), wg)
    assert not backend.fits(_spec("cuda:sm80", DType.F16, 64), get_target("cuda:sm80"), wg)
    assert not backend.fits(_spec("cuda:sm90", DType.F16, 64), get_target("cuda:sm90"), {**wg, "block_q": 96})
    assert not backend.fits(_spec("cuda:sm90", DType.F16, 64), get_target("cuda:sm90"), {**wg, "warp_rows": 32})
    # 128-wide heads: only 64-query blocks leave room for Q beside a K/V stage in 48 KiB.
    assert not backend.fits(_spec("cuda:sm90", DType.F16, 128), get_target("cuda:sm90"), wg)
    assert backend.fits(_spec("cuda:sm90", DType.F16, 128), get_target("cuda:sm90"), {**wg, "block_q": 64})
    assert not backend.fits(_spec("cuda:sm90", DType.F16, 64), get_target("cuda:sm90"),
                            {"block_q": 128, "block_k": 64, "overlap": True})  # overlap is a wgmma variant
    assert backend.fits(_spec("cuda:sm90", DType.F16, 128), get_target("cuda:sm90"), {**wg, "overlap": True})
    # overlap checks what every config needs (16-key steps, a positive block, min_blocks >= 1) ...
    for bad in ({"block_k": 24}, {"block_q": 0}, {"min_blocks": 0}):
        assert not backend.fits(_spec("cuda:sm90", DType.F16, 64), get_target("cuda:sm90"),
                                {**wg, "overlap": True, **bad}), bad
    # ... and two 128 KiB CTAs do not fit an SM's 228 KiB: min_blocks 2 at D = 128 would only spill.
    assert not backend.fits(_spec("cuda:sm90", DType.F16, 128), get_target("cuda:sm90"),
                            {**wg, "overlap": True, "min_blocks": 2})
    sm90 = backend.candidate_configs(_spec("cuda:sm90", DType.F16, 64), get_target("cuda:sm90"))
    sm80 = backend.candidate_configs(_spec("cuda:sm80", DType.F16, 64), get_target("cuda:sm80"))
    assert sum(bool(c.get("wgmma")) for c in sm90) >= 3 and not any(c.get("wgmma") for c in sm80)
    assert [c for c in sm90 if not c.get("wgmma")] == sm80


def test_two_row_tiles_a_warp_only_for_narrow_heads():
    backend, target = get_backend("cuda"), get_target("cuda:sm90")
    narrow, wide = _spec("cuda:sm90", DType.F16, 64), _spec("cuda:sm90", DType.F16, 128)
    assert backend.fits(narrow, target, {"block_q": 128, "block_k": 64, "warp_rows": 32})
    assert not backend.fits(narrow, target, {"block_q": 128, "block_k": 128, "warp_rows": 32})
    assert not backend.fits(wide, target, {"block_q": 128, "block_k": 64, "warp_rows": 32})
    assert not backend.fits(narrow, target, {"block_q": 48, "block_k": 64, "warp_rows": 32})
    assert not backend.fits(narrow, target, {"block_q": 64, "block_k": 64, "warp_rows": 8})
    assert any(c.get("warp_rows") == 32 for c in backend.candidate_configs(narrow, target))
    assert all(c.get("warp_rows", 16) == 16 for c in backend.candidate_configs(wide, target))


def test_min_blocks_caps_registers(tmp_path):
    """min_blocks = 5 renders a two-argument launch bound, and ptxas keeps the
    kernels at 96 registers or fewer (65536 / (5 x 128) = 102, rounded down to
    a multiple of 8). At D = 64 with 32-key blocks that costs at most a few
    dozen bytes of spill (52 bytes for the padding-mask kernel with nvcc 13.0)."""
    _need("nvcc")
    backend, target = get_backend("cuda"), get_target("cuda:sm90")
    config = {"block_q": 64, "block_k": 32, "min_blocks": 5}
    spec = _spec("cuda:sm90", DType.F16, 64)
    assert config in backend.candidate_configs(spec, target)
    assert not backend.fits(spec, target, {"block_q": 64, "block_k": 32, "min_blocks": 17})  # 17 x 128 > 2048 threads
    src = backend.render_kernel(spec, config, "kiln_k_probe")
    assert "__launch_bounds__(128, 5)" in src
    (tmp_path / "k.cu").write_text(src)
    out = subprocess.run(["nvcc", "-std=c++17", "-O3", "-gencode", "arch=compute_90a,code=sm_90a", "-Xptxas", "-v",
                          "-c", str(tmp_path / "k.cu"), "-o", str(tmp_path / "k.o")], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    regs = [int(line.split("Used ")[1].split()[0]) for line in out.stderr.splitlines() if "Used " in line]
    spills = [int(line.split("bytes spill stores")[0].split(",")[-1]) for line in out.stderr.splitlines()
              if "spill stores" in line]
    assert len(regs) == 2 and max(regs) <= 96, out.stderr
    assert max(spills) <= 128, out.stderr


def test_extents_the_shapes_fix_become_kernel_constants(tmp_path):
    """Extents and strides known at render time are static constexpr members of
    the kernels' params (index arithmetic folds, blocks known full drop their
    edge tests); what varies at run time (the batch, here one op's sequence too)
    stays a field the host fills. Both kinds compile side by side."""
    seq, batch = IntVar("seq", 1, 200), IntVar("batch", 1, 8)
    graph = lb.graph("attention_extents",
                     lambda b: add_attention(b, DType.F16, "bshd", d=64, sq=384, sk=384, batch=batch, mask="b11k",
                                             p="static."),
                     lambda b: add_attention(b, DType.F16, "bshd", d=64, sq=seq, sk=seq, batch=batch, mask="b11k",
                                             p="dynamic."))
    calls = lower(run_passes(graph)[0], "cuda:sm90").calls
    backend, target = get_backend("cuda"), get_target("cuda:sm90")
    by_seq = {isinstance(c.spec.inputs[0].shape[1], int): c.spec for c in calls}
    static, dynamic = (backend.render_kernel(by_seq[s], backend.default_config(by_seq[s], target), "kiln_k_probe")
                       for s in (True, False))

    def constant(source: str, name: str) -> str | None:
        line = next((ln for ln in source.splitlines() if f"static constexpr int64_t {name} = " in ln), None)
        return line.split("= ")[1].rstrip(";") if line else None

    # bshd with 2 heads of 64: a position is 128 elements, a batch item 384 x 128; the mask is [B, 1, 1, S].
    assert [constant(static, n) for n in ("H", "SQ", "SK", "k_s", "k_b", "m_b", "m_h", "m_k")] == [
        "INT64_C(2)", "INT64_C(384)", "INT64_C(384)", "INT64_C(128)", "INT64_C(49152)", "INT64_C(384)", "INT64_C(0)",
        "INT64_C(1)"]
    assert [constant(dynamic, n) for n in ("H", "SQ", "SK", "k_s", "k_b", "m_b", "m_k")] == [
        "INT64_C(2)", None, None, "INT64_C(128)", None, None, "INT64_C(1)"]
    for source in (static, dynamic):  # the host fills every field, constant or not, and launches the kernels' view
        assert "p.SK = " in source and "p.k_b = " in source and "(kiln_stream_t)stream, kp);" in source
    _need("nvcc")
    built = lb.build_local(graph, "cuda:sm90", tmp_path / "a", single_tu=True)
    assert (built.dir / "libmodel.so").stat().st_size > 0


@pytest.mark.parametrize("expr,value", [("INT64_C(384)", 384), ("(INT64_C(0))", 0), ("INT64_C(-3)", -3),
                                        ("s0 * INT64_C(128)", None), ("INT64_C(2) * INT64_C(3)", None)])
def test_only_single_literals_count_as_constants(expr, value):
    from codegen_worker.backends.cexpr import literal_value
    assert literal_value(expr) == value


@pytest.mark.parametrize("config", [None, {"block_q": 128, "block_k": 64, "wgmma": True, "overlap": True}],
                         ids=["mma", "wgmma-overlap"])
def test_head_dims_whose_rows_do_not_split_the_threads_compile(tmp_path, config):
    """D = 48, 96 and 112 take the tensor-core path with 6, 12 and 14 16-byte
    chunks a row, which 128 or 256 threads do not divide evenly: the tile loads
    must still cover every chunk (no GPU test runs these widths)."""
    _need("nvcc")
    batch = IntVar("batch", 1, 4)
    graph = lb.graph("attention_odd_widths", *[
        (lambda b, d=d: add_attention(b, DType.F16, "bshd", d=d, sq=70, sk=90, batch=batch, mask="b11k",
                                      causal=True, p=f"d{d}."))
        for d in (48, 96, 112)])
    built = lb.build_local(graph, "cuda:sm90", tmp_path / "a", configs={"attention": config} if config else None,
                           single_tu=True)
    source = (built.dir / "build" / "kernels.cu").read_text()
    assert source.count("// ---- tensor-core path") == 3
    assert ("wgmma.mma_async" in source) == bool(config)


def test_producer_configs_fit_only_as_the_template_can_run_them():
    """The warp-specialized variant: wgmma on sm90 only, 2 to 4 stages (3 or more with overlap, which holds two),
    and with three consumer warpgroups the producer gives its registers to them (setmaxnreg)."""
    backend = get_backend("cuda")
    sm90, sm80 = get_target("cuda:sm90"), get_target("cuda:sm80")
    spec = _spec("cuda:sm90", DType.F16, 64)
    ws = {"block_q": 192, "block_k": 64, "wgmma": True, "producer": True, "stages": 3}
    assert backend.fits(spec, sm90, ws)
    assert not backend.fits(_spec("cuda:sm80", DType.F16, 64), sm80, ws)
    assert not backend.fits(spec, sm90, ws | {"wgmma": False})
    for stages in (0, 1, 5):
        assert not backend.fits(spec, sm90, ws | {"stages": stages}), stages
    assert not backend.fits(spec, sm90, ws | {"stages": 2, "overlap": True})
    assert backend.fits(spec, sm90, ws | {"stages": 4, "overlap": True})
    assert not backend.fits(spec, sm90, {"block_q": 128, "block_k": 64, "wgmma": True, "stages": 2})  # no producer
    assert not backend.fits(_spec("cuda:sm90", DType.F16, 128), sm90, ws)  # 128-wide heads: three spill
    src = backend.render_kernel(spec, ws, "kiln_k_probe")
    assert "setmaxnreg.dec.sync.aligned.u32 56" in src and "setmaxnreg.inc.sync.aligned.u32 152" in src
    assert "cp.async.mbarrier.arrive.noinc" in src and "bar.sync" not in src  # three warpgroups: no turns
    two = backend.render_kernel(spec, {"block_q": 128, "block_k": 128, "wgmma": True, "producer": True, "stages": 2},
                                "kiln_k_probe")
    assert "bar.sync %0, 256" in two and "setmaxnreg.inc.sync.aligned.u32 224" in two
