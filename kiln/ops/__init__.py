"""Op kinds: importing this package registers every op."""
from kiln.ops import attention, conv, elementwise, gemm, layout, norm, reduce  # noqa: F401  (registration)
from kiln.ops.attention import AttentionAttrs
from kiln.ops.base import OPS, OpDef, ShapeError, get_op
from kiln.ops.conv import BatchNormAttrs, Conv2dAttrs, Im2colAttrs, PatchLinearAttrs, Pool2dAttrs
from kiln.ops.elementwise import BINARY, UNARY, EwInstr, FusedAttrs
from kiln.ops.gemm import LinearAttrs
from kiln.ops.layout import CastAttrs, ConcatAttrs, PadAttrs, PermuteAttrs, ReshapeAttrs, SliceAttrs
from kiln.ops.norm import LayerNormAttrs
from kiln.ops.reduce import ReduceAttrs

__all__ = ["OPS", "OpDef", "ShapeError", "get_op", "BINARY", "UNARY", "EwInstr", "FusedAttrs",
           "LinearAttrs", "LayerNormAttrs", "AttentionAttrs", "BatchNormAttrs", "Conv2dAttrs", "Im2colAttrs", "PatchLinearAttrs",
           "Pool2dAttrs",
           "CastAttrs", "ConcatAttrs", "PadAttrs", "PermuteAttrs", "ReshapeAttrs", "SliceAttrs", "ReduceAttrs"]
