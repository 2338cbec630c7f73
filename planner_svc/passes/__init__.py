"""Graph -> Graph passes. Each keeps the graph's meaning (tests check with the reference)."""
from planner_svc.passes.attention import fuse_attention
from planner_svc.passes.canonicalize import absorb_bias_adds, matmul_to_linear
from planner_svc.passes.cleanup import eliminate_common_subexpressions, fold_constants, remove_noops
from planner_svc.passes.dce import eliminate_dead_code
from planner_svc.passes.fold_batchnorm import fold_batchnorm
from planner_svc.passes.fuse_elementwise import fuse_elementwise_chains
from planner_svc.passes.fuse_epilogue import fuse_gemm_epilogues
from planner_svc.passes.fuse_layernorm import fuse_residual_layernorm
from planner_svc.passes.im2col import fuse_patch_linear, gather_im2col_from_nchw, thin_convs_to_gemm
from planner_svc.passes.pointwise_conv import pointwise_convs_to_linear
from planner_svc.passes.qkv import fuse_qkv_projections

__all__ = ["eliminate_dead_code", "fuse_elementwise_chains", "fuse_gemm_epilogues", "fold_constants", "remove_noops",
           "eliminate_common_subexpressions", "matmul_to_linear", "absorb_bias_adds", "fold_batchnorm",
           "fuse_attention", "fuse_qkv_projections",
           "fuse_residual_layernorm", "pointwise_convs_to_linear",
           "thin_convs_to_gemm", "gather_im2col_from_nchw", "fuse_patch_linear"]
