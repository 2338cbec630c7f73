"""The CUTLASS sm90 GEMM compiles here (no GPU): right headers, wgmma not serialised."""
from __future__ import annotations

import re
import shutil
import subprocess

import pytest

from codegen_worker import build
from codegen_worker.backends import cutlass_sm80, cutlass_sm90, get_backend
from codegen_worker.backends.base import CONV_HALO
from kiln.dtypes import DType
from kiln.ir import IntVar, TensorType
from kiln.ops import EwInstr, LinearAttrs
from kiln.ops.gemm import Matmul, MatmulAttrs
from kiln.plan import canonical_spec
from kiln.targets import get_target
from tests.support import local_build as lb


def _spec(dtype: DType, epilogue: tuple[EwInstr, ...], n: int = 256, k: int = 128):
    m = IntVar("m", 1, 512)
    ins = [TensorType(dtype, (m, k)), TensorType(dtype, (n, k)), TensorType(dtype, (n,))]
    if any(i.op == "add" for i in epilogue):
        ins.append(TensorType(dtype, (m, n)))
    return canonical_spec("linear", LinearAttrs(True, epilogue), ins, [TensorType(dtype, (m, n))])[0]


def test_eligible_linears_default_to_cutlass_and_others_do_not():
    backend, sm90, sm80 = get_backend("cuda"), get_target("cuda:sm90"), get_target("cuda:sm80")
    gelu = (EwInstr("gelu", (0,)),)
    assert backend.default_config(_spec(DType.F16, gelu), sm90)["impl"] == "cutlass_sm90"
    assert backend.default_config(_spec(DType.F16, gelu), sm80)["impl"] == "cutlass_sm80"
    assert "impl" not in backend.default_config(_spec(DType.F32, gelu), sm90)       # no fp32 Tensor Core path
    assert "impl" not in backend.default_config(_spec(DType.F16, gelu, n=250), sm90)  # rows not 16-byte aligned
    odd = (EwInstr("mul", (0, 0)),)
    assert "impl" not in backend.default_config(_spec(DType.F16, odd), sm90)
    assert len(backend.candidate_configs(_spec(DType.BF16, gelu), sm90)) == len(cutlass_sm90.CANDIDATES)


STREAMK = cutlass_sm90.STREAMK


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc is not installed")
@pytest.mark.parametrize("config", [cutlass_sm90.DEFAULT, STREAMK], ids=["persistent", "streamk"])
def test_cutlass_gemm_with_residual_epilogue_compiles_without_serialised_wgmma(config):
    backend, target = get_backend("cuda"), get_target("cuda:sm90")
    spec = _spec(DType.BF16, (EwInstr("add", (0, 1)), EwInstr("relu", (2,))))
    rk = build.render(backend, target, spec, config)
    assert "LinCombPerColBiasEltAct" in rk.source and "ReLu" in rk.source
    assert ("StreamKScheduler" in rk.source) == (config is STREAMK)
    obj, log = build.compile_kernel(backend, target, rk)
    assert obj[:4] == b"\x7fELF"
    assert "C7510" not in log


def test_eligible_convs_default_to_cutlass_and_others_do_not():
    from kiln.ops import Conv2dAttrs

    backend, sm90 = get_backend("cuda"), get_target("cuda:sm90")
    n = IntVar("n", 1, 64)

    def conv(dtype: DType, c: int, o: int, groups: int = 1):
        ins = [TensorType(dtype, (n, 14, 14, c)), TensorType(dtype, (o, 3, 3, c // groups)), TensorType(dtype, (o,))]
        attrs = Conv2dAttrs(pads=(1, 1, 1, 1), groups=groups, has_bias=True, epilogue=(EwInstr("relu", (0,)),))
        return canonical_spec("conv2d", attrs, ins, [TensorType(dtype, (n, 14, 14, o))])[0]

    assert backend.default_config(conv(DType.F16, 64, 128), sm90)["impl"] == "cutlass_sm90"
    assert "impl" not in backend.default_config(conv(DType.F16, 3, 64), sm90)          # stem: 3 channels
    assert "impl" not in backend.default_config(conv(DType.F16, 64, 64, groups=2), sm90)  # grouped
    assert "impl" not in backend.default_config(conv(DType.F32, 64, 64), sm90)
    # Every conv candidate but the one whose 256-wide tile exceeds the 128 output channels, then Kiln's halo conv
    # (3x3 over 64 channels); not over 32 channels, nor 128.
    kept = backend.candidate_configs(conv(DType.BF16, 64, 128), sm90)
    assert kept == [*[c for c in cutlass_sm90.CONV_CANDIDATES if c["tile"][1] <= 128], CONV_HALO]
    assert backend.candidate_configs(conv(DType.BF16, 64, 256), sm90) == [*cutlass_sm90.CONV_CANDIDATES, CONV_HALO]
    assert backend.candidate_configs(conv(DType.BF16, 128, 256), sm90) == cutlass_sm90.CONV_CANDIDATES
    assert not backend.fits(conv(DType.F16, 32, 64), sm90, CONV_HALO)
    assert not backend.fits(conv(DType.F16, 64, 96), sm90, CONV_HALO)  # output channels in blocks of 64
    assert not backend.fits(conv(DType.F16, 64, 64), get_target("rocm:gfx90a"), CONV_HALO)
    # CUTLASS 2.x's convs may be pinned on sm90 (the profiler leaves them out: no programmatic dependent launch).
    assert all(backend.fits(conv(DType.F16, 64, 128), sm90, c) for c in cutlass_sm80.CONV_CANDIDATES)
    # sm80 convs default to CUTLASS 2.x where it applies: not the stem's 3 channels, not asymmetric padding.
    sm80 = get_target("cuda:sm80")
    assert backend.default_config(conv(DType.F16, 64, 128), sm80) == cutlass_sm80.CONV_DEFAULT
    assert "impl" not in backend.default_config(conv(DType.F16, 3, 64), sm80)


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc is not installed")
def test_cutlass_implicit_gemm_conv_with_residual_epilogue_compiles():
    from kiln.ops import Conv2dAttrs

    backend, target = get_backend("cuda"), get_target("cuda:sm90")
    n = IntVar("n", 1, 64)
    t = TensorType(DType.F16, (n, 28, 28, 64))
    attrs = Conv2dAttrs(pads=(1, 1, 1, 1), has_bias=True, epilogue=(EwInstr("add", (0, 1)), EwInstr("relu", (2,))))
    ins = [t, TensorType(DType.F16, (64, 3, 3, 64)), TensorType(DType.F16, (64,)), t]
    spec = canonical_spec("conv2d", attrs, ins, [t])[0]
    rk = build.render(backend, target, spec, backend.default_config(spec, target))
    assert "ConvUniversal" in rk.source and "LinCombPerColBiasEltAct" in rk.source
    obj, log = build.compile_kernel(backend, target, rk)
    assert obj[:4] == b"\x7fELF"
    assert "C7510" not in log
    # Kiln's waiting entry is the only kernel: CUTLASS's own device_kernel<> is never instantiated.
    assert b"device_kernel" not in obj


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc is not installed")
@pytest.mark.parametrize("target_name", ["cuda:sm90", "cuda:sm80"])
def test_halo_conv_compiles_without_spills(tmp_path, target_name):
    """gpu/conv2d_halo.j2 with a residual epilogue: its 32 accumulators and the unrolled taps' addresses fit the
    registers (2 blocks of 128 threads an SM leave 256 a thread)."""
    from kiln.ops import Conv2dAttrs

    backend, target = get_backend("cuda"), get_target(target_name)
    n = IntVar("n", 1, 256)
    t = TensorType(DType.F16, (n, 56, 56, 64))
    attrs = Conv2dAttrs(pads=(1, 1, 1, 1), has_bias=True, epilogue=(EwInstr("add", (0, 1)), EwInstr("relu", (2,))))
    spec = canonical_spec("conv2d", attrs, [t, TensorType(DType.F16, (64, 3, 3, 64)), TensorType(DType.F16, (64,)), t],
                          [t])[0]
    assert backend.fits(spec, target, CONV_HALO)
    rk = build.render(backend, target, spec, CONV_HALO)
    src = tmp_path / "halo.cu"
    src.write_text(rk.source)
    ptxas = subprocess.run(["nvcc", *backend.flags(target), "-Xptxas", "-v", "-c", str(src), "-o", str(tmp_path / "k.o")],
                           capture_output=True, text=True)
    assert ptxas.returncode == 0, ptxas.stderr[-2000:]
    spills = re.findall(r"(\d+) bytes spill stores", ptxas.stderr)
    assert spills and set(spills) == {"0"}, ptxas.stderr[-3000:]


PINGPONG = {"impl": "cutlass_sm90", "tile": [128, 128, 64], "cluster": [1, 1], "schedule": "pingpong"}


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc is not installed")
def test_cutlass_gemm_with_kiln_erf_gelu_compiles_on_pingpong():
    backend, target = get_backend("cuda"), get_target("cuda:sm90")
    rk = build.render(backend, target, _spec(DType.F16, (EwInstr("gelu", (0,)),)), PINGPONG)
    assert "KilnGeluErf" in rk.source and "erff(" not in rk.source
    assert "KernelTmaWarpSpecializedPingpong" in rk.source
    obj, log = build.compile_kernel(backend, target, rk)
    assert obj[:4] == b"\x7fELF"
    assert "C7510" not in log


def test_sm80_takes_bias_or_residual_but_not_both():
    from codegen_worker.backends import cutlass_sm80

    relu = (EwInstr("relu", (0,)),)
    assert cutlass_sm80.plan_for(_spec(DType.F16, relu)).source == "bias"
    both = _spec(DType.F16, (EwInstr("add", (0, 1)), EwInstr("relu", (2,))))  # bias and a residual
    assert cutlass_sm80.plan_for(both) is None
    backend, sm80 = get_backend("cuda"), get_target("cuda:sm80")
    assert "impl" not in backend.default_config(both, sm80)  # the SIMT kernel serves it
    # Configs of one architecture never fit the other.
    assert not backend.fits(_spec(DType.F16, relu), sm80, cutlass_sm90.DEFAULT)
    assert not backend.fits(_spec(DType.F16, relu), get_target("cuda:sm90"), cutlass_sm80.DEFAULT)


# The GPU test (tests/gpu/test_cutlass_sm80.py) runs the same kinds on Hopper through the embedded PTX.
SM80_KINDS = (("gelu", DType.F16), ("add_relu", DType.F16), ("bias", DType.BF16), ("plain", DType.BF16),
              ("gelu_tanh", DType.BF16))


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc is not installed")
def test_sm80_tensor_op_gemms_compile(tmp_path):
    """CUTLASS 2.x TensorOp GEMMs for cuda:sm80, one translation unit: bias with Kiln's
    erf GELU, a residual with ReLU (no bias), bias alone, a plain GEMM and bias with the tanh GELU."""
    batch = IntVar("batch", 1, 4096)
    graph = lb.graph("sm80", *[(lambda b, k=k, dt=dt: lb.add_linear(b, dt, k, m=batch, n=256, k=128, p=f"{k}{dt.value}."))
                               for k, dt in SM80_KINDS])
    built = lb.build_local(graph, "cuda:sm80", tmp_path / "a", single_tu=True)
    impls = {c.kernel: built.configs[c.kernel].get("impl") for c in built.plan.calls}
    assert set(impls.values()) == {"cutlass_sm80"}, impls
    source = next(iter(built.sources.values())).read_text()
    assert source.count("cutlass::arch::Sm80") == len(SM80_KINDS)
    assert "KilnGeluErf" in source and "KilnGeluTanh" in source
    assert (built.dir / "libmodel.so").stat().st_size > 0


def _matmul_spec(dtype: DType, a_shape: tuple, b_shape: tuple):
    ins = [TensorType(dtype, a_shape), TensorType(dtype, b_shape)]
    out = Matmul().infer(ins, MatmulAttrs())
    return canonical_spec("matmul", MatmulAttrs(), ins, out)[0]


def test_matmul_cutlass_is_the_sm90_default_where_it_applies():
    backend, sm90, sm80 = get_backend("cuda"), get_target("cuda:sm90"), get_target("cuda:sm80")
    b = IntVar("b", 1, 64)
    folded = _matmul_spec(DType.F16, (b, 77, 64), (64, 128))           # b has no batch: folds into M
    batched = _matmul_spec(DType.BF16, (b, 12, 77, 64), (b, 12, 64, 96))  # same batch dims: L = b * 12
    assert cutlass_sm90.matmul_batching(folded) == "fold" and cutlass_sm90.matmul_batching(batched) == "batched"
    for spec in (folded, batched):
        default, table = cutlass_sm90.defaults(spec)
        assert backend.default_config(spec, sm90) == default and default["impl"] == "cutlass_sm90"
        cands = backend.candidate_configs(spec, sm90)
        fitting = [c for c in table if backend.fits(spec, sm90, c)]
        assert cands == fitting[:backend.max_candidates] and cands[0] == default and len(fitting) > 4
        assert "impl" not in backend.default_config(spec, sm80)
        assert all("impl" not in c for c in backend.candidate_configs(spec, sm80))  # sm80 has no CUTLASS matmul
    # Broadcast between a and b, unaligned rows, and fp32 stay on the SIMT kernel alone.
    for spec in (_matmul_spec(DType.F16, (2, 1, 77, 64), (3, 64, 128)), _matmul_spec(DType.F16, (b, 77, 60), (60, 128)),
                 _matmul_spec(DType.F16, (b, 77, 64), (64, 100)), _matmul_spec(DType.F32, (b, 77, 64), (64, 128))):
        assert cutlass_sm90.plan_for(spec) is None
        assert all("impl" not in c for c in backend.candidate_configs(spec, sm90))


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc is not installed")
def test_cutlass_matmuls_compile_without_serialised_wgmma(tmp_path):
    """Both batchings in one translation unit (tests/gpu/test_cutlass_sm90.py runs them)."""
    graph = lb.graph("mm", lambda b: lb.add_matmul(b, DType.F16, "fold", p="f."),
                     lambda b: lb.add_matmul(b, DType.F16, "batched", p="b."))
    built = lb.build_local(graph, "cuda:sm90", tmp_path / "a", {"matmul": cutlass_sm90.DEFAULT}, single_tu=True)
    assert [built.configs[c.kernel].get("impl") for c in built.plan.calls] == ["cutlass_sm90"] * 2
    source = next(iter(built.sources.values())).read_text()
    assert "a's batch folds into M" in source and "L = BATCH GEMMs" in source
    assert "C7510" not in built.log
