"""gpu/attention.j2 on a real GPU (cuda:sm90) against the float64 reference.

Each test packs many attention ops into one graph (one artifact, one parallel
build); an output's name names its case (dtype, layout, head dim, mask,
causal). Outputs are poisoned with NaN bytes before each run, so every element
must be written and finite. A row that sees no key outputs zeros, as the
reference defines it.

Run on a GPU box: pytest -q tests/gpu/test_attention_gpu.py
"""
from __future__ import annotations

import numpy as np
import pytest

from codegen_worker.backends import get_backend
from kiln import reference
from kiln.builder import GraphBuilder
from kiln.dtypes import DType
from kiln.ir import Graph, IntVar
from kiln.ops import AttentionAttrs
from kiln.runtime import Model
from kiln.targets import get_target
from tests.codegen.test_attention_compile import LAYOUTS, add_attention, case_name
from tests.support import local_build as lb

pytestmark = pytest.mark.gpu

TARGET = "cuda:sm90"
DTYPES = [pytest.param(DType.F32, id="f32"), pytest.param(DType.F16, id="f16"), pytest.param(DType.BF16, id="bf16")]
HALVES = [pytest.param(DType.F16, id="f16"), pytest.param(DType.BF16, id="bf16")]
BATCH = IntVar("batch", 1, 3)
SIZES = [{"batch": 1}, {"batch": 3}]


def tol(dtype: DType) -> float:
    return lb.TOLERANCE["cuda"][dtype]


def check(model: Model, graph: Graph, dtype: DType, feeds: dict[str, np.ndarray]) -> dict[str, float]:
    got = model.run(feeds)
    ref = reference.run(graph, feeds)
    errors = {}
    for name, want in ref.items():
        have = np.asarray(got[name], dtype=np.float64)
        bad = ~np.isfinite(have)
        assert not bad.any(), f"{name}: {int(bad.sum())} of {have.size} elements not finite"
        errors[name] = lb.rel_err(have, want)
        assert errors[name] < tol(dtype), f"{name}: rel err {errors[name]:.3g} >= {tol(dtype):g}"
    return errors


def build_and_check(tmp_path, graph: Graph, dtype: DType, configs=None, feeds_list=None) -> lb.LocalBuild:
    built = lb.build_local(graph, TARGET, tmp_path / "artifact", configs)
    model = Model(built.dir)
    try:
        for feeds in feeds_list or [lb.feeds_for(graph, seed=n, sizes=s) for n, s in enumerate(SIZES)]:
            check(model, graph, dtype, feeds)
    finally:
        model.close()
    return built


@pytest.mark.parametrize("dtype", DTYPES)
def test_layouts_masks_causal_head_dims(tmp_path, dtype):
    """Every layout x {no mask, padding mask} x {full, causal} x D in {64, 40}:
    SQ = SK = 77 when causal or packed, else SQ = 77 and SK = 50; none is a
    multiple of a block. The mask holds random normals (an additive bias)."""
    adds = []
    for layout in LAYOUTS:
        for d in (64, 40):
            for mask in (None, "b11k"):
                for causal in (False, True):
                    sq, sk = (77, 77) if causal or layout == "bs3hd" else (77, 50)
                    adds.append(lambda b, layout=layout, d=d, mask=mask, causal=causal, sq=sq, sk=sk: add_attention(
                        b, dtype, layout, d=d, sq=sq, sk=sk, batch=BATCH, mask=mask, causal=causal,
                        p=case_name(dtype, layout, d, mask, causal)))
    graph = lb.graph("attention_grid", *adds)
    built = build_and_check(tmp_path, graph, dtype)
    assert len(built.plan.calls) == len(LAYOUTS) * 8 and {c.spec.op for c in built.plan.calls} == {"attention"}


def _edge_graph(dtype: DType) -> Graph:
    def add(**kw):
        name = "_".join(f"{k}{v}" for k, v in kw.items())
        layout = kw.pop("layout", "bhsd")
        return lambda b: add_attention(b, dtype, layout, batch=BATCH, p=f"{name}.", **kw)

    return lb.graph("attention_edges",
                    add(d=64, sq=50, sk=77, causal=True),                 # SQ < SK: diagonal shifted right
                    add(d=64, sq=77, sk=50, causal=True),                 # SQ > SK: the first 27 rows see no key
                    add(d=64, sq=200, sk=50, causal=True),                # ... and whole CTAs see none (no key block)
                    add(d=40, sq=77, sk=50, causal=True),
                    add(d=64, sq=1, sk=1),                                # one query, one key
                    add(d=64, sq=1, sk=333, mask="b11k"),                 # decode-like: one query, many key blocks
                    add(d=64, sq=200, sk=333, mask="bhqk", causal=True),  # several blocks both ways, full mask
                    add(d=128, sq=130, sk=257, mask="qk"),                # widest mma head dim, mask shared by the batch
                    add(d=32, dv=64, sq=70, sk=90, mask="1hq1"),          # DV != D; mask broadcast along the keys
                    add(d=64, dv=16, sq=70, sk=90, causal=True),
                    add(d=16, sq=33, sk=17),                              # smallest mma head dim
                    add(d=8, sq=33, sk=17, mask="b11k"),                  # SIMT: tiny head dim
                    add(d=256, dv=200, sq=40, sk=45, mask="b11k"),        # SIMT: the op's widest head dims
                    add(d=64, sq=384, sk=384, layout="bshd", mask="b11k"))  # BERT's shape, small batch


@pytest.mark.parametrize("dtype", DTYPES)
def test_edges_and_odd_shapes(tmp_path, dtype):
    graph = _edge_graph(dtype)
    build_and_check(tmp_path, graph, dtype)


def padding_feeds(graph: Graph, seed: int, batch: int, fill: float) -> dict[str, np.ndarray]:
    """Random q/k/v; every mask input becomes a key-padding mask (0 or `fill`)
    whose batch items keep 3, 40, ... keys and whose last item keeps none, so
    its rows are fully masked and must come out as zeros."""
    feeds = lb.feeds_for(graph, seed=seed, sizes={"batch": batch})
    for name, v in feeds.items():
        if name.endswith("mask"):
            keep = np.array([3 + 37 * i for i in range(batch)])
            if batch > 1:
                keep[-1] = 0
            cols = np.arange(v.shape[-1])
            m = np.where(cols[None, :] < keep[:, None], 0.0, fill)
            feeds[name] = np.broadcast_to(m.reshape(batch, 1, 1, -1), v.shape).astype(v.dtype).copy()
    return feeds


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("fill", [-np.inf, -10000.0], ids=["neg_inf", "neg_1e4"])
def test_key_padding_masks_with_fully_masked_rows(tmp_path, dtype, fill):
    adds = [(lambda b, layout=layout, d=d, causal=causal: add_attention(
                b, dtype, layout, d=d, sq=77, sk=77, batch=BATCH, mask="b11k", causal=causal,
                p=case_name(dtype, layout, d, "b11k", causal)))
            for layout in ("bshd", "bs3hd") for d in (64, 40) for causal in (False, True)]
    graph = lb.graph("attention_padding", *adds)
    feeds = [padding_feeds(graph, seed, n, fill) for seed, n in enumerate((1, 3))]
    built = build_and_check(tmp_path, graph, dtype, feeds_list=feeds)
    if fill == -np.inf:
        model = Model(built.dir)
        got = model.run(feeds[1])
        model.close()
        for name, out in got.items():
            last = np.asarray(out, dtype=np.float64)[-1]
            assert np.all(last == 0), f"{name}: a batch item with every key masked must output zeros"


@pytest.mark.parametrize("dtype", HALVES)
@pytest.mark.parametrize("d", [64, 128])
def test_every_candidate_config_agrees(tmp_path, dtype, d):
    """Each tensor-core config (block_q x block_k, 16 or 32 rows a warp) that
    fits gives the reference's answer, with a causal edge inside a key block
    and a per-query mask (d=64) and SQ != SK (d=128)."""
    target = get_target(TARGET)
    backend = get_backend("cuda")
    if d == 64:
        # A padding mask (one row for all queries) with causal, and a mask row per query with SQ != SK.
        graph = lb.graph("attention_configs",
                         lambda b: add_attention(b, dtype, "bshd", d=64, sq=300, sk=300, batch=BATCH, mask="b11k",
                                                 causal=True, p="d64."),
                         lambda b: add_attention(b, dtype, "bshd", d=64, sq=150, sk=211, batch=BATCH, mask="bhqk",
                                                 p="d64q."))
    else:
        graph = lb.graph("attention_configs", lambda b: add_attention(b, dtype, "bhsd", d=128, sq=150, sk=211,
                                                                      batch=BATCH, p="d128."))
    probe = lb.build_local(graph, TARGET, tmp_path / "probe")
    cands = backend.candidate_configs(probe.plan.calls[0].spec, target)
    assert len(cands) >= 4, cands
    for i, config in enumerate(cands):
        build_and_check(tmp_path / f"c{i}", graph, dtype, {"attention": config})


WGMMA = {"sync": ({"block_q": 64, "block_k": 64, "wgmma": True},
                  {"block_q": 128, "block_k": 64, "wgmma": True, "min_blocks": 2}),
         "overlap": ({"block_q": 64, "block_k": 64, "wgmma": True, "overlap": True},
                     {"block_q": 128, "block_k": 64, "wgmma": True, "overlap": True})}
# The lean mma.sync path (Q and the mask read from shared memory where used, two K/V stages in dynamic shared
# memory): FlashAttention-2's 32 x 128 a warp, and 16 rows a warp.
LEAN = {"lean_flash2": ({"block_q": 64, "block_k": 128, "lean": True, "stages": 2},
                        {"block_q": 128, "block_k": 128, "warp_rows": 32, "lean": True, "stages": 2}),
        "lean_rows16": ({"block_q": 64, "block_k": 64, "lean": True, "stages": 2},
                        {"block_q": 128, "block_k": 64, "lean": True, "stages": 2})}
# The warp-specialized wgmma path (persistent): a producer warpgroup fills a ring of K/V stages (mbarriers) for
# one consumer warpgroup, two taking turns at the score MMA, or three; with overlap, each runs block j - 1's P V
# under block j's softmax.
PRODUCER = {"producer": ({"block_q": 64, "block_k": 64, "wgmma": True, "producer": True, "stages": 2},
                         {"block_q": 128, "block_k": 128, "wgmma": True, "producer": True, "stages": 2}),
            "producer_3wg": ({"block_q": 64, "block_k": 64, "wgmma": True, "producer": True, "stages": 4},
                             {"block_q": 192, "block_k": 64, "wgmma": True, "producer": True, "stages": 3}),
            "producer_overlap": ({"block_q": 64, "block_k": 64, "wgmma": True, "producer": True, "stages": 3,
                                  "overlap": True},
                                 {"block_q": 192, "block_k": 64, "wgmma": True, "producer": True, "stages": 3,
                                  "overlap": True})}
PINNED = WGMMA | LEAN | PRODUCER


@pytest.mark.parametrize("dtype", HALVES)
@pytest.mark.parametrize("variant", list(PINNED))
def test_pinned_variant_on_every_layout_mask_and_edge(tmp_path, dtype, variant):
    """Hopper's warpgroup-MMA path pinned (P V waited for at once, or left
    running under the next block's softmax with three K/V stages), and the
    lean mma.sync path: every layout x mask x causal at D = 64 with the larger
    config, and every edge case (SQ != SK, rows that see no key, D from 16 to
    128, DV != D, one key, masks per query, per batch, broadcast along keys)
    with the smaller. Ops of the SIMT path in the same graphs ignore the pin."""
    one_wg, two_wg = PINNED[variant]
    adds = [(lambda b, layout=layout, mask=mask, causal=causal: add_attention(
                b, dtype, layout, d=64, sq=77, sk=77 if causal or layout == "bs3hd" else 50, batch=BATCH,
                mask=mask, causal=causal, p=case_name(dtype, layout, 64, mask, causal)))
            for layout in LAYOUTS for mask in (None, "b11k") for causal in (False, True)]
    build_and_check(tmp_path / "grid", lb.graph("attention_wgmma_grid", *adds), dtype, {"attention": two_wg})
    build_and_check(tmp_path / "edges", _edge_graph(dtype), dtype, {"attention": one_wg})
    # Key padding where the last batch item keeps no key: its rows must come out as zeros.
    pad = lb.graph("attention_wgmma_pad", *(adds[i] for i in range(len(adds)) if i % 4 >= 2))
    build_and_check(tmp_path / "pad", pad, dtype, {"attention": two_wg},
                    feeds_list=[padding_feeds(pad, seed, n, -np.inf) for seed, n in enumerate((1, 3))])


@pytest.mark.parametrize("dtype", HALVES)
@pytest.mark.parametrize("config", [None, WGMMA["sync"][1], WGMMA["overlap"][1], LEAN["lean_flash2"][1],
                                    PRODUCER["producer"][1]], ids=["mma", "wgmma", "overlap", "lean", "producer"])
def test_unaligned_pointers_take_the_plain_load_path(tmp_path, dtype, config):
    """Tensors 2 bytes off a 16-byte boundary: cp.async cannot move them, so the
    kernel must notice and load them element by element (same answer), on the
    default path and on both wgmma variants."""
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("torch has no CUDA device")
    graph = lb.graph("attention_unaligned", lambda b: add_attention(b, dtype, "bshd", d=64, sq=77, sk=77, batch=BATCH,
                                                                    mask="b11k", causal=True, p="u."))
    built = lb.build_local(graph, TARGET, tmp_path / "a", {"attention": config} if config else None)
    model = Model(built.dir)
    tdt = {DType.F16: torch.float16, DType.BF16: torch.bfloat16}[dtype]
    feeds = lb.feeds_for(graph, seed=4, sizes={"batch": 3})
    ref = reference.run(graph, feeds)

    def off_by_one(a: np.ndarray):
        flat = torch.empty(a.size + 1, dtype=tdt, device="cuda")
        view = flat[1:].view(a.shape)
        view.copy_(torch.from_numpy(np.asarray(a, dtype=np.float32)).to(device="cuda", dtype=tdt))
        assert view.data_ptr() % 16 == 2
        return view

    aligned = model.run({k: torch.from_numpy(np.asarray(v, dtype=np.float32)).to(device="cuda", dtype=tdt)
                         for k, v in feeds.items()})
    out_name = graph.outputs[0]
    out = off_by_one(np.full(ref[out_name].shape, np.nan, dtype=np.float32))
    got = model.run({k: off_by_one(v) for k, v in feeds.items()}, out={out_name: out})
    torch.cuda.synchronize()
    model.close()
    have = got[out_name].float().cpu().numpy()
    assert np.isfinite(have).all()
    assert lb.rel_err(have, ref[out_name]) < tol(dtype)
    # Same sums in the same order either way: the two paths agree to the bit.
    np.testing.assert_array_equal(have, aligned[out_name].float().cpu().numpy())


@pytest.mark.parametrize("dtype", HALVES)
@pytest.mark.parametrize("config", [None, WGMMA["overlap"][1], PRODUCER["producer"][1]],
                         ids=["mma", "overlap", "producer"])
def test_sequence_length_known_only_at_run_time(tmp_path, dtype, config):
    """A length that varies at run time stays a params field while the head and
    position strides become kernel constants: two lengths (neither a multiple
    of a block), with a padding mask, full and causal, bshd and packed qkv."""
    seq = IntVar("seq", 1, 200)
    adds = [(lambda b, layout=layout, causal=causal: add_attention(
                b, dtype, layout, d=64, sq=seq, sk=seq, batch=BATCH, mask="b11k", causal=causal,
                p=case_name(dtype, layout, 64, "b11k", causal)))
            for layout in ("bshd", "bs3hd") for causal in (False, True)]
    graph = lb.graph("attention_dynamic_seq", *adds)
    build_and_check(tmp_path, graph, dtype, {"attention": config} if config else None,
                    feeds_list=[lb.feeds_for(graph, seed=n, sizes=s)
                                for n, s in enumerate(({"batch": 3, "seq": 77}, {"batch": 1, "seq": 200}))])


@pytest.mark.parametrize("dtype", HALVES)
def test_bert_base_shape(tmp_path, dtype):
    """B=8, H=12, S=384, D=64 (BERT-base) with a key-padding mask, bshd."""
    b = GraphBuilder("bert_attention")
    batch = IntVar("batch", 1, 8)
    ins = [b.input(n, (batch, 384, 12, 64), dtype) for n in "qkv"]
    ins.append(b.input("mask", (batch, 1, 1, 384), dtype))
    graph = b.build(b.op("attention", ins, AttentionAttrs(0.125, False, True, "bshd")))
    feeds = lb.feeds_for(graph, seed=1, sizes={"batch": 8})
    keep = np.array([384, 300, 200, 100, 50, 10, 1, 383])
    feeds["mask"] = np.where(np.arange(384)[None, :] < keep[:, None], 0.0, -10000.0).reshape(8, 1, 1, 384).astype(
        feeds["mask"].dtype)
    built = build_and_check(tmp_path, graph, dtype, feeds_list=[feeds])
    assert built.configs["k0"] == get_backend("cuda").default_configs["attention"]
