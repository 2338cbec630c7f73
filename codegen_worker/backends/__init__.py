"""Backend plug-ins, found by target family."""
from codegen_worker.backends.base import Backend, UnsupportedKernel
from codegen_worker.backends.cpu import CpuBackend
from codegen_worker.backends.cuda import CudaBackend
from codegen_worker.backends.rocm import RocmBackend

BACKENDS: dict[str, Backend] = {b.family: b for b in (CpuBackend(), CudaBackend(), RocmBackend())}


def get_backend(family: str) -> Backend:
    return BACKENDS[family]


__all__ = ["BACKENDS", "Backend", "UnsupportedKernel", "get_backend"]
