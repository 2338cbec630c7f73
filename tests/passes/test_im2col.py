"""thin_convs_to_gemm: few-channel convs become im2col + a linear over [O, KH*KW*C (aligned)];
gather_im2col_from_nchw: an im2col behind the NCHW -> NHWC edge permute reads the NCHW input."""
from __future__ import annotations

from kiln.builder import GraphBuilder
from kiln.ops import Conv2dAttrs, EwInstr, PermuteAttrs
from planner_svc.passes.im2col import gather_im2col_from_nchw, thin_convs_to_gemm
from tests.passes.helpers import B, assert_same_meaning, const, kernels, kinds


def _conv(channels: int, kernel: int = 7, stride: int = 2, pads: int = 3, dilation: int = 1, groups: int = 1,
          nchw: bool = False, extra_reader: bool = False):
    b = GraphBuilder("stem")
    if nchw:  # a torch model's input: NCHW, permuted to NHWC at the edge as the importers do
        x = b.input("x", (B, channels, 17, 15))
        x = b.op("permute", [x], PermuteAttrs(perm=(0, 2, 3, 1)))
    else:
        x = b.input("x", (B, 17, 15, channels))
    w = const(b, "w", 16, kernel, kernel, channels // groups, seed=1, scale=0.2)
    bias = const(b, "bias", 16, seed=2)
    attrs = Conv2dAttrs(stride=(stride, stride), pads=(pads, max(pads - 1, 0), pads, pads), dilation=(dilation, dilation),
                        groups=groups, has_bias=True, epilogue=(EwInstr("relu", (0,)),))
    y = b.op("conv2d", [x, w, bias], attrs)
    return b.build(y, b.op("relu", [x])) if extra_reader else b.build(y)


def test_thin_conv_becomes_im2col_and_a_linear_with_aligned_columns():
    for channels, kernel, stride, dilation in ((3, 7, 2, 1), (3, 4, 4, 1), (5, 3, 1, 2)):
        before = _conv(channels, kernel, stride, pads=kernel // 2, dilation=dilation)
        after = thin_convs_to_gemm(before)
        assert kinds(after) == ["im2col", "linear"]
        cols = after.ops[0].attrs.cols
        assert cols % 8 == 0 and cols - 8 < kernel * kernel * channels <= cols
        assert after.constant_map()[after.ops[1].inputs[1]].type.shape == (16, cols)
        assert after.ops[1].attrs.epilogue == before.ops[0].attrs.epilogue
        assert_same_meaning(before, after, rtol=1e-10)


def test_wide_pointwise_and_grouped_convs_are_left_alone():
    for graph in (_conv(8), _conv(4, kernel=1, pads=0), _conv(6, groups=2)):
        assert thin_convs_to_gemm(graph) is graph


def test_the_pipeline_runs_a_resnet_stem_as_im2col_then_one_gemm():
    graph = _conv(3)
    assert kernels(graph) == ["im2col", "linear"]


def test_im2col_gathers_from_the_nchw_input_and_the_edge_permute_goes():
    before = thin_convs_to_gemm(_conv(3, nchw=True))
    assert kinds(before) == ["permute", "im2col", "linear"]
    after = gather_im2col_from_nchw(before)
    im2col = next(op for op in after.ops if op.kind == "im2col")
    assert im2col.attrs.channels_first and im2col.inputs == ("x",)
    assert_same_meaning(before, after, rtol=1e-12)
    assert kernels(_conv(3, nchw=True)) == ["im2col", "linear"]


def test_a_permute_that_others_read_stays_and_im2col_reads_it():
    graph = thin_convs_to_gemm(_conv(3, nchw=True, extra_reader=True))
    assert gather_im2col_from_nchw(graph) is graph
