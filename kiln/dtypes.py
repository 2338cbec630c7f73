"""Element types: one enum, with the facts every layer needs about each."""
from __future__ import annotations

import enum

import numpy as np


class DType(enum.Enum):
    F32 = "float32"
    F16 = "float16"
    BF16 = "bfloat16"
    I32 = "int32"
    I64 = "int64"
    BOOL = "bool"

    @property
    def itemsize(self) -> int:
        return _ITEMSIZE[self]

    @property
    def is_float(self) -> bool:
        return self in (DType.F32, DType.F16, DType.BF16)

    @classmethod
    def parse(cls, text: str) -> DType:
        try:
            return cls(text)
        except ValueError:
            raise ValueError(f"unknown dtype {text!r}; expected one of {[d.value for d in cls]}") from None


_ITEMSIZE = {DType.F32: 4, DType.F16: 2, DType.BF16: 2, DType.I32: 4, DType.I64: 8, DType.BOOL: 1}

# bfloat16 has no NumPy dtype: it is stored as uint16 bit patterns and
# computed in float32, so these converters are the only place that knows.
_NUMPY_STORAGE = {
    DType.F32: np.float32, DType.F16: np.float16, DType.BF16: np.uint16,
    DType.I32: np.int32, DType.I64: np.int64, DType.BOOL: np.bool_,
}


def storage_dtype(dtype: DType) -> np.dtype:
    return np.dtype(_NUMPY_STORAGE[dtype])


def bf16_bits_from_f32(values: np.ndarray) -> np.ndarray:
    """Round-to-nearest-even float32 -> bfloat16 bit patterns."""
    bits = np.ascontiguousarray(values, dtype=np.float32).view(np.uint32)
    rounding = ((bits >> 16) & 1) + np.uint32(0x7FFF)
    return ((bits + rounding) >> 16).astype(np.uint16)


def f32_from_bf16_bits(bits: np.ndarray) -> np.ndarray:
    return (np.asarray(bits, dtype=np.uint16).astype(np.uint32) << 16).view(np.float32)


def to_storage(values: np.ndarray, dtype: DType) -> np.ndarray:
    """Values (any float/int array) -> the exact bytes layout a kernel reads."""
    if dtype is DType.BF16:
        return bf16_bits_from_f32(np.asarray(values, dtype=np.float32))
    return np.ascontiguousarray(values, dtype=storage_dtype(dtype))


def from_storage(stored: np.ndarray, dtype: DType) -> np.ndarray:
    """Stored bytes -> a NumPy array of values (bf16 widens to float32)."""
    if dtype is DType.BF16:
        return f32_from_bf16_bits(stored)
    return stored


def from_numpy(dt: np.dtype) -> DType:
    dt = np.dtype(dt)
    for kind, np_dt in _NUMPY_STORAGE.items():
        if kind is not DType.BF16 and np.dtype(np_dt) == dt:
            return kind
    raise ValueError(f"NumPy dtype {dt} has no Kiln dtype")
