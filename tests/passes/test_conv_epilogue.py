"""conv2d takes bias, activation and residual add into its epilogue; ResNet blocks are one kernel a conv."""
from __future__ import annotations

import numpy as np

from kiln.builder import GraphBuilder, relu
from kiln.ops import Conv2dAttrs, EwInstr
from planner_svc.passes import absorb_bias_adds, fuse_elementwise_chains, fuse_gemm_epilogues
from planner_svc.pipeline import run_passes
from tests.passes.helpers import B, assert_same_meaning, const, kernels, kinds
from tests.passes.models import bottleneck, resnet50

FOLDED = {"rtol": 1e-6, "atol": 1e-5}


def conv(b: GraphBuilder, x, cout: int, name: str, seed: int, **attrs):
    w = const(b, f"{name}.w", cout, 3, 3, x.type.shape[-1], seed=seed, scale=0.3)
    return b.op("conv2d", [x, w], Conv2dAttrs(pads=(1, 1, 1, 1), **attrs), name=name)


def test_per_channel_add_becomes_the_bias():
    b = GraphBuilder("conv_bias")
    x = b.input("x", (B, 5, 5, 3))
    y = b.op("add", [conv(b, x, 8, "c", 1), const(b, "bias", 8, seed=2)], name="ad")
    before = b.build(y)
    after = absorb_bias_adds(before)
    assert kinds(after) == ["conv2d"]
    assert after.ops[0].attrs.has_bias and after.ops[0].inputs[2] == "bias" and after.ops[0].outputs == ("ad.out",)
    assert_same_meaning(before, after)


def test_add_of_a_full_tensor_is_not_a_bias():
    b = GraphBuilder("conv_res")
    x = b.input("x", (B, 5, 5, 3))
    before = b.build(b.op("add", [conv(b, x, 8, "c", 1), b.input("r", (B, 5, 5, 8))], name="ad"))
    assert absorb_bias_adds(before) is before


def test_conv_relu_residual_fuse_into_the_epilogue():
    b = GraphBuilder("conv_epi")
    x = b.input("x", (B, 6, 6, 4))
    r = b.input("r", (B, 6, 6, 8))
    y = relu(b.op("add", [conv(b, x, 8, "c", 3), r], name="res"), name="act")
    before = fuse_elementwise_chains(b.build(y))
    after = fuse_gemm_epilogues(before)
    assert kinds(after) == ["conv2d"]
    fused = after.ops[0]
    assert fused.name == "c+res+act" and fused.inputs[2:] == ("r",)
    assert fused.attrs.epilogue == (EwInstr("add", (0, 1)), EwInstr("relu", (2,)))
    assert_same_meaning(before, after)


def test_conv_read_twice_keeps_its_output():
    b = GraphBuilder("conv_two")
    x = b.input("x", (B, 4, 4, 4))
    y = conv(b, x, 4, "c", 5)
    before = fuse_elementwise_chains(b.build(relu(y), y * y))
    after = fuse_gemm_epilogues(before)
    assert kinds(after)[0] == "conv2d" and after.ops[0].attrs.epilogue == ()
    assert_same_meaning(before, after)


def _block(stride: int, cin: int, width: int):
    b = GraphBuilder("bottleneck")
    x = b.input("x", (B, 6, 6, cin))
    return b.build(bottleneck(b, x, width, stride, "block", np.random.default_rng(0)))


def test_identity_bottleneck_is_three_gemm_kernels():
    before = _block(1, 32, 8)
    after, _ = run_passes(before)
    assert kinds(after) == ["linear", "conv2d", "linear"]  # the 1x1 convs are plain GEMMs
    names = [op.name for op in after.ops]
    assert names == ["block.conv1+block.conv1.bn+relu_0", "block.conv2+block.conv2.bn+relu_1",
                     "block.conv3+block.conv3.bn+add_0+relu_2"]
    assert after.ops[2].inputs[3:] == ("x",)          # the residual is read in the epilogue
    assert_same_meaning(before, after, **FOLDED)


def test_downsample_bottleneck_is_four_gemm_kernels():
    before = _block(2, 16, 8)
    after, _ = run_passes(before)
    assert kinds(after) == ["linear", "conv2d", "linear", "conv2d"]  # the strided 1x1 downsample stays a conv
    # torchvision computes the downsample after conv3, so the downsample conv takes add + relu.
    assert after.ops[3].name == "block.downsample+block.downsample.bn+add_0+relu_2"
    assert_same_meaning(before, after, **FOLDED)


def test_small_resnet_every_conv_is_one_kernel():
    before = resnet50(B, size=32, blocks=(1, 2))
    n_convs = kinds(before).count("conv2d")
    got = kernels(before)
    # Every conv is one kernel, the 3-channel stem a patch_linear (im2col inside the GEMM).
    assert got[:2] == ["patch_linear", "pool2d"] and got[-2:] == ["reduce_mean", "linear"]
    assert len(got) == n_convs + 3 and set(got[2:-2]) == {"conv2d", "linear"}
    after, _ = run_passes(before)
    assert_same_meaning(before, after, batches=(2,), **FOLDED)
