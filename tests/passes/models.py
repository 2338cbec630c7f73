"""Graphs shaped the way the exporters shape them, built with kiln.builder.

BERT layers follow torch.export's core ATen graph of HuggingFace's eager
BertLayer (linear -> view [B, S, H, D] -> permute, k^T as a second permute,
div by sqrt(d), additive mask [B, 1, 1, S], context permuted back and viewed
as [B, S, H*D]); `style="onnx"` spells each linear as MatMul by a [K, N]
weight plus Add, and k^T as one Transpose (0, 2, 3, 1); `style="sdpa"` scales
q and k^T by sqrt(scale) each, as PyTorch's SDPA decomposition does.
ResNet bottlenecks follow torchvision (conv -> bn -> relu, the downsample
branch computed after the main branch, add then relu) over NHWC.
"""
from __future__ import annotations

import math

import numpy as np

from kiln.builder import GraphBuilder, Value, gelu, layer_norm, linear, matmul, relu, softmax
from kiln.dtypes import DType
from kiln.ir import Dim, Graph
from kiln.ops import BatchNormAttrs, Conv2dAttrs, PermuteAttrs, Pool2dAttrs, ReduceAttrs, ReshapeAttrs


def permute(x: Value, perm: tuple[int, ...]) -> Value:
    return x.builder.op("permute", [x], PermuteAttrs(perm))


def reshape(x: Value, shape: tuple[int, ...]) -> Value:
    return x.builder.op("reshape", [x], ReshapeAttrs(shape))


def scalar(b: GraphBuilder, name: str, value: float) -> Value:
    return b.constant(name, np.asarray(value))


def projection(b: GraphBuilder, x: Value, prefix: str, n_in: int, n_out: int, rng: np.random.Generator,
               style: str) -> Value:
    bound = 1 / math.sqrt(n_in)
    w = rng.uniform(-bound, bound, (n_out, n_in))
    bias = b.constant(f"{prefix}.bias", rng.uniform(-bound, bound, n_out))
    if style == "onnx":
        return matmul(x, b.constant(f"{prefix}.weight_t", w.T)) + bias
    return linear(x, b.constant(f"{prefix}.weight", w), bias)


def mask_from_attention_mask(b: GraphBuilder, attention_mask: Value, seq: int) -> Value:
    """HF's extended mask: (1 - mask[:, None, None, :]) * min, computed once per model."""
    m = reshape(attention_mask, (0, 1, 1, seq))
    return (scalar(b, "one", 1.0) - m) * scalar(b, "mask_min", -10000.0)


def self_attention(b: GraphBuilder, x: Value, mask: Value | None, prefix: str, hidden: int, heads: int,
                   rng: np.random.Generator, style: str = "torch") -> Value:
    d = hidden // heads
    q, k, v = (reshape(projection(b, x, f"{prefix}.{n}", hidden, hidden, rng, style), (0, 0, heads, d))
               for n in ("query", "key", "value"))
    q, v = permute(q, (0, 2, 1, 3)), permute(v, (0, 2, 1, 3))
    kt = permute(k, (0, 2, 3, 1)) if style == "onnx" else permute(permute(k, (0, 2, 1, 3)), (0, 1, 3, 2))
    if style == "sdpa":
        root = scalar(b, f"{prefix}.sqrt_scale", (1 / math.sqrt(d)) ** 0.5)
        scores = matmul(q * root, kt * root)
    elif style == "onnx":
        scores = matmul(q, kt) / scalar(b, f"{prefix}.sqrt_d", math.sqrt(d))
    else:
        scores = matmul(q, kt) * scalar(b, f"{prefix}.scale", 1 / math.sqrt(d))
    if mask is not None:
        scores = scores + mask
    ctx = matmul(softmax(scores), v)
    return reshape(permute(ctx, (0, 2, 1, 3)), (0, 0, hidden))


def bert_layer(b: GraphBuilder, x: Value, mask: Value | None, index: int, rng: np.random.Generator, *,
               hidden: int = 768, heads: int = 12, ffn: int = 3072, style: str = "torch") -> Value:
    p = f"layer{index}"
    attn = self_attention(b, x, mask, f"{p}.attention", hidden, heads, rng, style)
    h = projection(b, attn, f"{p}.attention.output", hidden, hidden, rng, style) + x
    h = layer_norm(h, b.constant(f"{p}.ln1.weight", 1 + 0.1 * rng.standard_normal(hidden)),
                   b.constant(f"{p}.ln1.bias", 0.1 * rng.standard_normal(hidden)), eps=1e-12)
    f = gelu(projection(b, h, f"{p}.intermediate", hidden, ffn, rng, style))
    f = projection(b, f, f"{p}.output", ffn, hidden, rng, style) + h
    return layer_norm(f, b.constant(f"{p}.ln2.weight", 1 + 0.1 * rng.standard_normal(hidden)),
                      b.constant(f"{p}.ln2.bias", 0.1 * rng.standard_normal(hidden)), eps=1e-12)


def bert_encoder(batch: Dim, seq: int, layers: int, *, hidden: int = 768, heads: int = 12, ffn: int = 3072,
                 style: str = "torch", seed: int = 0) -> Graph:
    rng = np.random.default_rng(seed)
    b = GraphBuilder(f"bert_{layers}x{hidden}")
    x = b.input("hidden_states", (batch, seq, hidden))
    mask = mask_from_attention_mask(b, b.input("attention_mask", (batch, seq)), seq)
    for i in range(layers):
        x = bert_layer(b, x, mask, i, rng, hidden=hidden, heads=heads, ffn=ffn, style=style)
    return b.build(x)


# --- ResNet -------------------------------------------------------------------------------------

def conv_bn(b: GraphBuilder, x: Value, cout: int, k: int, stride: int, pad: int, name: str,
            rng: np.random.Generator) -> Value:
    cin = x.type.shape[-1]
    w = b.constant(f"{name}.weight", rng.standard_normal((cout, k, k, cin)) * math.sqrt(2 / (k * k * cin)))
    y = b.op("conv2d", [x, w], Conv2dAttrs(stride=(stride, stride), pads=(pad,) * 4), name=name)
    stats = [b.constant(f"{name}.bn.weight", 1 + 0.1 * rng.standard_normal(cout)),
             b.constant(f"{name}.bn.bias", 0.1 * rng.standard_normal(cout)),
             b.constant(f"{name}.bn.running_mean", 0.1 * rng.standard_normal(cout)),
             b.constant(f"{name}.bn.running_var", rng.uniform(0.5, 1.5, cout))]
    return b.op("batchnorm", [y, *stats], BatchNormAttrs(1e-5), name=f"{name}.bn")


def bottleneck(b: GraphBuilder, x: Value, width: int, stride: int, name: str, rng: np.random.Generator) -> Value:
    out = relu(conv_bn(b, x, width, 1, 1, 0, f"{name}.conv1", rng))
    out = relu(conv_bn(b, out, width, 3, stride, 1, f"{name}.conv2", rng))
    out = conv_bn(b, out, width * 4, 1, 1, 0, f"{name}.conv3", rng)
    identity = x
    if stride != 1 or x.type.shape[-1] != width * 4:
        identity = conv_bn(b, x, width * 4, 1, stride, 0, f"{name}.downsample", rng)
    return relu(out + identity)


def resnet50(batch: Dim, size: int = 224, seed: int = 0, blocks: tuple[int, ...] = (3, 4, 6, 3)) -> Graph:
    rng = np.random.default_rng(seed)
    b = GraphBuilder("resnet50")
    x = b.input("image", (batch, size, size, 3))
    h = relu(conv_bn(b, x, 64, 7, 2, 3, "conv1", rng))
    h = b.op("pool2d", [h], Pool2dAttrs("max", (3, 3), (2, 2), (1, 1, 1, 1)))
    for stage, (n, width) in enumerate(zip(blocks, (64, 128, 256, 512), strict=False)):
        for i in range(n):
            h = bottleneck(b, h, width, 2 if i == 0 and stage > 0 else 1, f"layer{stage + 1}.{i}", rng)
    h = b.op("reduce_mean", [h], ReduceAttrs((1, 2)))
    w = b.constant("fc.weight", rng.standard_normal((1000, h.type.shape[-1])) / math.sqrt(h.type.shape[-1]))
    return b.build(linear(h, w, b.constant("fc.bias", 0.01 * rng.standard_normal(1000)), name="fc"))


# --- embeddings ---------------------------------------------------------------------------------

def bert_embeddings(b: GraphBuilder, batch: Dim, seq: int, rng: np.random.Generator, *, hidden: int = 768,
                    vocab: int = 1000, max_positions: int = 512, style: str = "distilbert") -> Value:
    """LayerNorm(word_embeddings(input_ids) + position_embeddings(position_ids) [+ token types]).

    `style="distilbert"` follows DistilBERT's Embeddings, whose position ids are
    expanded to [B, S]: two [B, S, H] addends, a lone add before the norm.
    `style="bert"` follows BertEmbeddings: word + token type embeddings (both
    [B, S, H]) plus position embeddings of a [1, S] id row, broadcast.
    """
    ids = b.input("input_ids", (batch, seq), DType.I64)
    word = b.constant("embeddings.word_embeddings.weight", 0.05 * rng.standard_normal((vocab, hidden)))
    pos = b.constant("embeddings.position_embeddings.weight", 0.05 * rng.standard_normal((max_positions, hidden)))
    x = b.op("embedding", [word, ids])
    if style == "distilbert":
        x = x + b.op("embedding", [pos, b.input("position_ids", (batch, seq), DType.I64)])
    else:
        types = b.constant("embeddings.token_type_embeddings.weight", 0.05 * rng.standard_normal((2, hidden)))
        x = x + b.op("embedding", [types, b.input("token_type_ids", (batch, seq), DType.I64)])
        x = x + b.op("embedding", [pos, b.constant("embeddings.position_ids", np.arange(seq).reshape(1, seq),
                                                   DType.I64)])
    return layer_norm(x, b.constant("embeddings.LayerNorm.weight", 1 + 0.1 * rng.standard_normal(hidden)),
                      b.constant("embeddings.LayerNorm.bias", 0.1 * rng.standard_normal(hidden)), eps=1e-12)


def bert_model(batch: Dim, seq: int, layers: int, *, hidden: int = 768, heads: int = 12, ffn: int = 3072,
               vocab: int = 1000, embeddings: str = "distilbert", seed: int = 0) -> Graph:
    """Token ids in, last hidden state out: the embeddings, then `layers` BERT layers."""
    rng = np.random.default_rng(seed)
    b = GraphBuilder(f"{embeddings}_{layers}x{hidden}")
    x = bert_embeddings(b, batch, seq, rng, hidden=hidden, vocab=vocab, style=embeddings)
    mask = mask_from_attention_mask(b, b.input("attention_mask", (batch, seq)), seq)
    for i in range(layers):
        x = bert_layer(b, x, mask, i, rng, hidden=hidden, heads=heads, ffn=ffn)
    return b.build(x)
