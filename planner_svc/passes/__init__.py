"""Graph -> Graph passes. Each keeps the graph's meaning (tests check with the reference)."""
from planner_svc.passes.dce import eliminate_dead_code
from planner_svc.passes.fuse_elementwise import fuse_elementwise_chains
from planner_svc.passes.fuse_epilogue import fuse_gemm_epilogues

__all__ = ["eliminate_dead_code", "fuse_elementwise_chains", "fuse_gemm_epilogues"]
