"""Op kinds: importing this package registers every op."""
from kiln.ops import elementwise, gemm, norm  # noqa: F401  (registration)
from kiln.ops.base import OPS, OpDef, ShapeError, get_op
from kiln.ops.elementwise import BINARY, UNARY, EwInstr, FusedAttrs
from kiln.ops.gemm import LinearAttrs
from kiln.ops.norm import LayerNormAttrs

__all__ = ["OPS", "OpDef", "ShapeError", "get_op", "BINARY", "UNARY", "EwInstr", "FusedAttrs",
           "LinearAttrs", "LayerNormAttrs"]
