"""thin_convs_to_gemm: few-channel convs become im2col + a linear over [O, KH*KW*C (aligned)];
gather_im2col_from_nchw: an im2col behind the NCHW -> NHWC edge permute reads the NCHW input;
fuse_patch_linear: an im2col that only its linear reads, over few output channels, is one patch_linear."""
from __future__ import annotations

from kiln.builder import GraphBuilder
from kiln.ops import Conv2dAttrs, EwInstr, PermuteAttrs
from planner_svc.passes.im2col import (
    PATCH_LINEAR_MAX_OUT,
    fuse_patch_linear,
    gather_im2col_from_nchw,
    thin_convs_to_gemm,
)
from tests.passes.helpers import B, assert_same_meaning, const, kernels, kinds


def _conv(channels: int, kernel: int = 7, stride: int = 2, pads: int = 3, dilation: int = 1, groups: int = 1,
          nchw: bool = False, extra_reader: bool = False, out: int = 16):
    b = GraphBuilder("stem")
    if nchw:  # a torch model's input: NCHW, permuted to NHWC at the edge as the importers do
        x = b.input("x", (B, channels, 17, 15))
        x = b.op("permute", [x], PermuteAttrs(perm=(0, 2, 3, 1)))
    else:
        x = b.input("x", (B, 17, 15, channels))
    w = const(b, "w", out, kernel, kernel, channels // groups, seed=1, scale=0.2)
    bias = const(b, "bias", out, seed=2)
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


def test_the_pipeline_runs_a_resnet_stem_as_one_patch_linear():
    assert kernels(_conv(3)) == ["patch_linear"]
    # Past PATCH_LINEAR_MAX_OUT output channels (ViT's patch embedding) the patches are stored for a dense GEMM.
    assert kernels(_conv(3, out=PATCH_LINEAR_MAX_OUT + 8)) == ["im2col", "linear"]


def test_patch_linear_keeps_the_window_bias_and_epilogue():
    for nchw in (False, True):
        before = gather_im2col_from_nchw(thin_convs_to_gemm(_conv(3, nchw=nchw)))
        after = fuse_patch_linear(before)
        (op,) = [op for op in after.ops if op.kind != "permute"]
        im2col, lin = (next(o for o in before.ops if o.kind == k) for k in ("im2col", "linear"))
        assert op.kind == "patch_linear" and op.inputs == im2col.inputs + lin.inputs[1:]
        assert op.outputs == lin.outputs and op.name == f"{im2col.name}+{lin.name}"
        a = op.attrs
        assert (a.kernel, a.stride, a.pads, a.dilation, a.channels_first) == (
            im2col.attrs.kernel, im2col.attrs.stride, im2col.attrs.pads, im2col.attrs.dilation, nchw)
        assert (a.has_bias, a.epilogue) == (lin.attrs.has_bias, lin.attrs.epilogue)
        assert_same_meaning(before, after, rtol=1e-12)


def test_patches_someone_else_reads_are_stored():
    # The im2col's output is also a graph output: it must be written, so the GEMM reads it.
    graph = thin_convs_to_gemm(_conv(3))
    patches = graph.ops[0].outputs[0]
    graph = graph.replace(outputs=graph.outputs + (patches,))
    assert fuse_patch_linear(graph) is graph


def test_im2col_gathers_from_the_nchw_input_and_the_edge_permute_goes():
    before = thin_convs_to_gemm(_conv(3, nchw=True))
    assert kinds(before) == ["permute", "im2col", "linear"]
    after = gather_im2col_from_nchw(before)
    im2col = next(op for op in after.ops if op.kind == "im2col")
    assert im2col.attrs.channels_first and im2col.inputs == ("x",)
    assert_same_meaning(before, after, rtol=1e-12)
    assert kernels(_conv(3, nchw=True)) == ["patch_linear"]


def test_a_permute_that_others_read_stays_and_im2col_reads_it():
    graph = thin_convs_to_gemm(_conv(3, nchw=True, extra_reader=True))
    assert gather_im2col_from_nchw(graph) is graph
