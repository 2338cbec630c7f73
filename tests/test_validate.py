"""kiln.validate.graph_from_pb: every class of bad wire graph is rejected with a
GraphError whose .field and message name the culprit.

Bad graphs are made by editing the protobuf that wire.graph_to_pb produces for
a small valid graph, so each test differs from an accepted graph by exactly the
defect it names (test_base_graph_is_valid pins that the base is accepted).
"""
from __future__ import annotations

import hashlib

import numpy as np
import pytest

from kiln import reference
from kiln.builder import GraphBuilder, gelu, layer_norm, linear, relu, symbol
from kiln.dtypes import DType
from kiln.ir import IntVar, TensorType
from kiln.shapes import GraphError, infer_types
from kiln.v1 import graph_pb2 as pb
from kiln.validate import MAX_TENSOR_BYTES, graph_from_pb
from kiln.wire import graph_to_pb

B = symbol("B", 1, 8)


def build_base():
    """x[B,8] -fc-> [B,16] -ln-> -act(relu)-> + r[B,16] -res-> output.

    Wire order: inputs x, r; constants w, bias, gamma, beta; ops fc, ln, act, res.
    """
    rng = np.random.default_rng(0)
    b = GraphBuilder("base")
    x = b.input("x", (B, 8))
    r = b.input("r", (B, 16))
    w = b.constant("w", rng.standard_normal((16, 8)))
    bias = b.constant("bias", rng.standard_normal(16))
    gamma = b.constant("gamma", 1 + 0.1 * rng.standard_normal(16))
    beta = b.constant("beta", 0.1 * rng.standard_normal(16))
    h = linear(x, w, bias, name="fc")
    h = layer_norm(h, gamma, beta, eps=1e-3, name="ln")   # non-default eps: the attr is on the wire
    h = relu(h, name="act")
    out = b.op("add", [h, r], name="res")
    return b.build(out)


def base_pb() -> pb.Graph:
    return graph_to_pb(build_base())


def rejected(msg: pb.Graph) -> GraphError:
    with pytest.raises(GraphError) as info:
        graph_from_pb(msg)
    return info.value


def assert_names(err: GraphError, field: str, *in_message: str) -> None:
    assert err.field == field, (err.field, err.message)
    for part in in_message:
        assert part in err.message, (part, err.message)
    assert str(err).startswith(field)


def set_static(dim: pb.Dim, value: int) -> None:
    dim.static = value


def constant(msg: pb.Graph, name: str) -> pb.Constant:
    return next(c for c in msg.constants if c.name == name)


# --- the base graph, and the valid round trip --------------------------------------------------

def test_base_graph_is_valid():
    msg = base_pb()
    assert [o.name for o in msg.ops] == ["fc", "ln", "act", "res"]
    assert msg.ops[1].attrs["eps"].WhichOneof("value") == "f"
    graph = graph_from_pb(msg)
    assert [op.name for op in graph.ops] == ["fc", "ln", "act", "res"]


def test_symbolic_batch_round_trip_infers_types():
    original = build_base()
    graph = graph_from_pb(graph_to_pb(original))
    assert graph.name == "base"
    assert [t.name for t in graph.inputs] == ["x", "r"]
    assert graph.inputs[0].type == TensorType(DType.F32, (IntVar("B", 1, 8), 8))
    assert graph.outputs == ("res.out",)
    assert graph.constants == original.constants          # names, types, digests
    assert {c.name: c.data for c in graph.constants} == {c.name: c.data for c in original.constants}
    assert set(graph.ops) == set(original.ops)             # kinds, wiring and typed attrs
    assert next(op for op in graph.ops if op.name == "ln").attrs.eps == 1e-3
    types = infer_types(graph)
    for name in ("fc.out", "ln.out", "act.out", "res.out"):
        assert types[name] == TensorType(DType.F32, (IntVar("B", 1, 8), 16))
    # And it still means the same thing, at several batch sizes.
    for batch in (1, 5, 8):
        feeds = reference.random_inputs(original, seed=batch, sizes={"B": batch})
        want = reference.run(original, feeds)["res.out"]
        got = reference.run(graph, feeds)["res.out"]
        assert got.shape == (batch, 16)
        np.testing.assert_array_equal(got, want)


def test_ops_out_of_wire_order_are_sorted_topologically():
    msg = base_pb()
    ops = list(msg.ops)
    del msg.ops[:]
    msg.ops.extend(reversed(ops))
    graph = graph_from_pb(msg)
    assert [op.name for op in graph.ops] == ["fc", "ln", "act", "res"]


# --- op types ----------------------------------------------------------------------------------

def test_unknown_op_type():
    msg = base_pb()
    msg.ops[2].type = "relu6_but_faster"
    assert_names(rejected(msg), "ops[2] (op 'act').type", "'relu6_but_faster'", "unknown op type")


def test_internal_fused_elementwise_op_is_rejected():
    msg = base_pb()
    msg.ops[2].type = "fused_elementwise"
    err = rejected(msg)
    assert_names(err, "ops[2] (op 'act').type", "'fused_elementwise'")
    assert "fused_elementwise" not in err.message.split("supported:")[1]


# --- structure ---------------------------------------------------------------------------------

def test_cycle_names_the_ops():
    msg = base_pb()
    msg.ops[0].inputs[0] = "act.out"     # fc <- act <- ln <- fc
    err = rejected(msg)
    assert err.field == "ops"
    assert "cycle" in err.message
    for name in ("'fc'", "'ln'", "'act'"):
        assert name in err.message, err.message


def test_self_loop_is_a_cycle():
    msg = base_pb()
    msg.ops[2].inputs[0] = "act.out"
    err = rejected(msg)
    assert err.field == "ops" and "'act'" in err.message and "cycle" in err.message


def test_dangling_input():
    msg = base_pb()
    msg.ops[1].inputs[2] = "beta_typo"
    assert_names(rejected(msg), "ops[1] (op 'ln').inputs[2]", "'beta_typo'", "never defined")


def test_duplicate_tensor_name_constant_vs_input():
    msg = base_pb()
    constant(msg, "gamma").name = "r"
    assert_names(rejected(msg), "constants[2] (tensor 'r')", "'r'", "already defined by inputs[1]")


def test_duplicate_tensor_name_op_output_vs_constant():
    msg = base_pb()
    msg.ops[2].outputs[0] = "bias"
    msg.ops[3].inputs[0] = "bias"
    assert_names(rejected(msg), "ops[2] (op 'act').outputs[0]", "'bias'", "already defined by constants[1]")


def test_duplicate_op_name():
    msg = base_pb()
    msg.ops[2].name = "fc"
    assert_names(rejected(msg), "ops[2] (op 'fc').name", "'fc'", "used twice")


def test_output_never_defined():
    msg = base_pb()
    msg.outputs[0] = "ghost"
    assert_names(rejected(msg), "outputs[0]", "'ghost'", "never defined")


@pytest.mark.parametrize("name, what", [("x", "graph input"), ("w", "constant")])
def test_output_that_is_an_input_or_constant(name, what):
    msg = base_pb()
    msg.outputs.append(name)
    assert_names(rejected(msg), "outputs[1]", f"'{name}'", what)


def test_output_listed_twice():
    msg = base_pb()
    msg.outputs.append("res.out")
    assert_names(rejected(msg), "outputs", "twice")


def test_no_outputs():
    msg = base_pb()
    del msg.outputs[:]
    assert_names(rejected(msg), "graph.outputs", "at least one output")


# --- shapes and dtypes -------------------------------------------------------------------------

def test_linear_k_mismatch():
    msg = base_pb()
    w = constant(msg, "w")
    set_static(w.type.shape[1], 4)
    w.inline = bytes(16 * 4 * 4)
    assert_names(rejected(msg), "ops[0] (op 'fc', type 'linear')", "linear", "'x'", "'w'", "float32[16, 4]")


def test_binary_broadcast_failure():
    msg = base_pb()
    set_static(msg.inputs[1].type.shape[1], 12)
    assert_names(rejected(msg), "ops[3] (op 'res', type 'add')", "broadcast", "'act.out'", "'r'")


def test_symbolic_dim_does_not_broadcast_with_a_static_one():
    msg = base_pb()
    msg.inputs[1].type.shape[0].static = 8          # r: [8, 16] vs act.out: [B, 16]
    assert_names(rejected(msg), "ops[3] (op 'res', type 'add')", "broadcast", "'r'")


def test_layernorm_gamma_shape():
    msg = base_pb()
    g = constant(msg, "gamma")
    set_static(g.type.shape[0], 8)
    g.inline = bytes(8 * 4)
    assert_names(rejected(msg), "ops[1] (op 'ln', type 'layernorm')", "gamma", "[16]", "'gamma'")


def test_dtype_mismatch_f16_plus_f32():
    msg = base_pb()
    msg.inputs[1].type.dtype = pb.FLOAT16
    assert_names(rejected(msg), "ops[3] (op 'res', type 'add')", "float16", "float32", "'r'")


def test_unspecified_dtype():
    msg = base_pb()
    msg.inputs[0].type.dtype = pb.DTYPE_UNSPECIFIED
    assert_names(rejected(msg), "inputs[0] (tensor 'x').type.dtype", "dtype")


def test_shape_error_field_uses_the_wire_index():
    """A valid wire order is kept; an out-of-order one is sorted, and the field
    must still point at the wire position of the culprit."""
    b = GraphBuilder("order")
    x = b.input("x", (B, 8))
    w = b.constant("w", np.ones((16, 8)))
    h = relu(linear(x, w, name="fc"), name="act")
    side = gelu(x, name="side")
    msg = graph_to_pb(b.build(h, side))
    assert [op.name for op in graph_from_pb(msg).ops] == ["fc", "act", "side"]
    act = pb.Op()
    act.CopyFrom(msg.ops[1])
    del msg.ops[1]
    msg.ops.insert(0, act)                         # wire [act, fc, side]
    assert [op.name for op in graph_from_pb(msg).ops] == ["fc", "act", "side"]
    msg.ops[0].type = "add"
    msg.ops[0].inputs.append("w")                 # [B,16] + [16,8]: no broadcast
    assert_names(rejected(msg), "ops[0] (op 'act', type 'add')", "broadcast")


# --- attributes --------------------------------------------------------------------------------

def test_unknown_attribute_name():
    msg = base_pb()
    msg.ops[1].attrs["epsilon"].f = 1e-3
    assert_names(rejected(msg), "ops[1] (op 'ln').attrs['epsilon']", "'epsilon'", "unknown attribute", "'layernorm'")


def test_attribute_on_an_op_without_attributes():
    msg = base_pb()
    msg.ops[2].attrs["inplace"].b = True
    assert_names(rejected(msg), "ops[2] (op 'act').attrs['inplace']", "'inplace'", "unknown attribute")


def test_eps_as_string():
    msg = base_pb()
    msg.ops[1].attrs["eps"].s = "1e-5"
    assert_names(rejected(msg), "ops[1] (op 'ln').attrs['eps']", "'eps'", "float", "got s")


def test_has_bias_as_int():
    msg = base_pb()
    msg.ops[0].attrs["has_bias"].i = 1
    assert_names(rejected(msg), "ops[0] (op 'fc').attrs['has_bias']", "'has_bias'", "bool")


def test_eps_as_int_is_accepted_as_float():
    msg = base_pb()
    msg.ops[1].attrs["eps"].i = 1
    ln = next(op for op in graph_from_pb(msg).ops if op.name == "ln")
    assert ln.attrs.eps == 1.0 and isinstance(ln.attrs.eps, float)


@pytest.mark.parametrize("eps", [0.0, -1e-5, float("nan")])
def test_eps_must_be_positive(eps):
    msg = base_pb()
    msg.ops[1].attrs["eps"].f = eps
    assert_names(rejected(msg), "ops[1] (op 'ln', type 'layernorm')", "eps")


def test_epilogue_has_no_wire_form():
    msg = base_pb()
    msg.ops[0].attrs["epilogue"].ints.values.extend([0])
    assert_names(rejected(msg), "ops[0] (op 'fc').attrs['epilogue']", "'epilogue'")


# --- dims and sizes ----------------------------------------------------------------------------

def test_oversized_tensor():
    msg = base_pb()
    x = msg.inputs[0].type
    set_static(x.shape[0], 1 << 20)
    set_static(x.shape[1], 1 << 15)                 # 2^35 float32 = 128 GiB
    assert_names(rejected(msg), "inputs[0] (tensor 'x').type", str(1 << 37), "exceeds")


def test_oversized_tensor_through_symbolic_max():
    msg = base_pb()
    msg.inputs[0].type.shape[0].symbolic.max = 1 << 30
    msg.inputs[1].type.shape[0].symbolic.max = 1 << 30
    set_static(msg.inputs[0].type.shape[1], 1 << 13)   # 2^30 * 2^13 * 4 = 32 TiB
    assert_names(rejected(msg), "inputs[0] (tensor 'x').type", "exceeds")


def test_tensor_at_the_limit_passes_and_one_over_fails():
    b = GraphBuilder("edge")
    x = b.input("x", (1 << 17, 1 << 17))            # 2^34 float32: exactly 64 GiB
    msg = graph_to_pb(b.build(relu(x, name="act")))
    assert MAX_TENSOR_BYTES == 64 << 30
    graph_from_pb(msg)
    set_static(msg.inputs[0].type.shape[1], (1 << 17) + 1)
    assert_names(rejected(msg), "inputs[0] (tensor 'x').type", "exceeds")


def test_oversized_intermediate_tensor():
    b = GraphBuilder("big")
    col = b.input("col", (1 << 18, 1))
    row = b.input("row", (1, 1 << 20))
    msg = graph_to_pb(b.build(b.op("add", [col, row], name="outer")))   # 2^38 float32 = 1 TiB
    assert_names(rejected(msg), "tensor 'outer.out'", str(1 << 40), "limit")


@pytest.mark.parametrize("value", [0, -3])
def test_dim_must_be_positive(value):
    msg = base_pb()
    set_static(msg.inputs[0].type.shape[1], value)
    assert_names(rejected(msg), "inputs[0] (tensor 'x').type.shape[1]", f"dim {value}")


def test_constant_dim_must_be_positive():
    msg = base_pb()
    set_static(constant(msg, "beta").type.shape[0], 0)
    assert_names(rejected(msg), "constants[3] (tensor 'beta').type.shape[0]", "dim 0")


def test_symbolic_min_greater_than_max():
    msg = base_pb()
    d = msg.inputs[0].type.shape[0].symbolic
    d.min, d.max = 9, 2
    msg.inputs[1].type.shape[0].symbolic.min = 9
    msg.inputs[1].type.shape[0].symbolic.max = 2
    assert_names(rejected(msg), "inputs[0] (tensor 'x').type.shape[0]", "'B'", "[9, 2]")


def test_symbolic_min_zero():
    msg = base_pb()
    msg.inputs[0].type.shape[0].symbolic.min = 0
    assert_names(rejected(msg), "inputs[0] (tensor 'x').type.shape[0]", "'B'", "[0, 8]")


def test_same_symbol_with_two_ranges():
    msg = base_pb()
    msg.inputs[1].type.shape[0].symbolic.max = 16
    assert_names(rejected(msg), "inputs[1] (tensor 'r').type.shape[0]", "'B'", "two ranges", "B[1..8]", "B[1..16]")


@pytest.mark.parametrize("name", ["", "1B", "B-2", "B\n", "batch size"])
def test_symbolic_dim_name_must_be_an_identifier(name):
    msg = base_pb()
    msg.inputs[0].type.shape[0].symbolic.name = name
    assert_names(rejected(msg), "inputs[0] (tensor 'x').type.shape[0]", "identifier")


def test_symbolic_dim_in_a_constant():
    msg = base_pb()
    c = constant(msg, "bias")
    c.type.shape[0].symbolic.name = "B"
    c.type.shape[0].symbolic.min = 1
    c.type.shape[0].symbolic.max = 8
    assert_names(rejected(msg), "constants[1] (tensor 'bias').type", "static")


def test_rank_limit():
    msg = base_pb()
    for _ in range(8):
        msg.inputs[1].type.shape.add(static=1)
    assert_names(rejected(msg), "inputs[1] (tensor 'r').type.shape", "rank 10")


def test_unsupported_layout():
    msg = base_pb()
    msg.inputs[0].type.layout = "nhwc"
    assert_names(rejected(msg), "inputs[0] (tensor 'x').type.layout", "'nhwc'")


# --- constants ---------------------------------------------------------------------------------

@pytest.mark.parametrize("delta", [-1, 1, -64])
def test_constant_wrong_inline_byte_count(delta):
    msg = base_pb()
    c = constant(msg, "w")
    c.inline = bytes(16 * 8 * 4 + delta)
    assert_names(rejected(msg), "constants[0] (tensor 'w').inline", f"holds {512 + delta} bytes", "needs 512")


@pytest.mark.parametrize("digest", [
    "z" * 64,                                        # not hex
    hashlib.sha256(b"w").hexdigest().upper(),        # not lowercase
    hashlib.sha256(b"w").hexdigest()[:63],           # too short
    hashlib.sha256(b"w").hexdigest() + "0",          # too long
    hashlib.sha256(b"w").hexdigest() + "\n",         # a trailing newline
    "",
])
def test_constant_sha256_not_hex(digest):
    msg = base_pb()
    constant(msg, "w").sha256 = digest
    assert_names(rejected(msg), "constants[0] (tensor 'w').sha256", "sha256")


def test_constant_by_digest_is_accepted():
    msg = base_pb()
    digest = hashlib.sha256(b"weights").hexdigest()
    constant(msg, "w").sha256 = digest
    w = graph_from_pb(msg).constant_map()["w"]
    assert w.sha256 == digest and w.data is None


def test_constant_without_data():
    msg = base_pb()
    constant(msg, "w").ClearField("inline")
    assert_names(rejected(msg), "constants[0] (tensor 'w')", "neither")


# --- names -------------------------------------------------------------------------------------

BAD_NAMES = ["a\nb", "a\n", "\n", "a\tb", "a\x00", "a\x7f", " a", "a ", "caf\u00e9", "a" * 257]


def _rename_input(msg: pb.Graph, new: str) -> None:
    msg.inputs[0].name = new
    msg.ops[0].inputs[0] = new


def test_good_unusual_names_are_accepted():
    msg = base_pb()
    _rename_input(msg, "enc/layer.0:x (copy)")
    assert graph_from_pb(msg).inputs[0].name == "enc/layer.0:x (copy)"


@pytest.mark.parametrize("name", BAD_NAMES)
def test_bad_input_name(name):
    msg = base_pb()
    _rename_input(msg, name)
    assert_names(rejected(msg), f"inputs[0] (tensor {name!r})", "printable ASCII")


def test_empty_input_name():
    msg = base_pb()
    _rename_input(msg, "")
    assert_names(rejected(msg), "inputs[0] (tensor '')", "empty")


@pytest.mark.parametrize("name", ["", *BAD_NAMES])
def test_bad_op_name(name):
    msg = base_pb()
    msg.ops[2].name = name
    err = rejected(msg)
    assert err.field == f"ops[2] (op {name!r}).name"
    assert ("empty" if name == "" else "printable ASCII") in err.message


@pytest.mark.parametrize("name", ["", *BAD_NAMES])
def test_bad_op_output_name(name):
    msg = base_pb()
    msg.ops[2].outputs[0] = name
    msg.ops[3].inputs[0] = name
    err = rejected(msg)
    assert err.field == "ops[2] (op 'act').outputs[0]"
    assert ("empty" if name == "" else "printable ASCII") in err.message


@pytest.mark.parametrize("name", ["", *BAD_NAMES])
def test_bad_constant_name(name):
    msg = base_pb()
    constant(msg, "beta").name = name
    msg.ops[1].inputs[2] = name
    err = rejected(msg)
    assert err.field == f"constants[3] (tensor {name!r})"
    assert ("empty" if name == "" else "printable ASCII") in err.message


@pytest.mark.parametrize("name", ["g\n", "g\nh", "g\x01"])
def test_bad_graph_name(name):
    msg = base_pb()
    msg.name = name
    assert_names(rejected(msg), "graph.name", "printable ASCII")


def test_no_inputs():
    msg = base_pb()
    del msg.inputs[:]
    assert_names(rejected(msg), "graph.inputs", "at least one input")


# --- arity ---------------------------------------------------------------------------------------

def test_wrong_input_count():
    msg = base_pb()
    msg.ops[2].inputs.append("x")
    assert_names(rejected(msg), "ops[2] (op 'act', type 'relu')", "1..1 inputs, got 2")


def test_wrong_output_count():
    msg = base_pb()
    msg.ops[2].outputs.append("act.extra")
    assert_names(rejected(msg), "ops[2] (op 'act', type 'relu')", "1 output(s), got 2")


def test_bias_flag_without_bias_input():
    msg = base_pb()
    del msg.ops[0].inputs[2]
    assert_names(rejected(msg), "ops[0] (op 'fc', type 'linear')", "has_bias")


def test_linear_extra_inputs_without_epilogue():
    msg = base_pb()
    msg.ops[0].inputs.append("r")                  # x, w, bias, r: r has no epilogue to feed
    assert_names(rejected(msg), "ops[0] (op 'fc', type 'linear')", "extra inputs")


def test_a_symbolic_slice_end_and_a_moved_symbolic_dim_cross_the_wire():
    from kiln.ops import PermuteAttrs, ReshapeAttrs, SliceAttrs

    s = symbol("S", 2, 6)
    b = GraphBuilder("seq")
    ids = b.input("ids", (B, s))
    table = b.constant("pos", np.arange(8 * 4, dtype=np.float64).reshape(8, 4))
    pos = b.op("slice", [table], SliceAttrs((0, 0), (s, 4), (1, 1)), name="positions")
    moved = b.op("reshape", [ids], ReshapeAttrs((0, 1, 0), sources=(0, -1, 1)), name="unsqueeze")
    graph = b.build(relu(pos, name="act"), b.op("permute", [moved], PermuteAttrs((2, 1, 0)), name="perm"))
    back = graph_from_pb(graph_to_pb(graph))
    assert back.ops == graph.ops
    types = infer_types(back)
    assert types[pos.name].shape == (s, 4) and types[moved.name].shape == (B, 1, s)
    out = reference.run(back, {"ids": np.ones((3, 5), np.float32)})
    assert out[back.outputs[0]].shape == (5, 4) and out[back.outputs[1]].shape == (5, 1, 3)


def test_a_symbolic_slice_end_past_the_axis_is_rejected():
    from kiln.ops import SliceAttrs

    s = symbol("S", 2, 8)
    b = GraphBuilder("seq")
    b.input("ids", (B, s))
    table = b.constant("pos", np.zeros((8, 4)))
    msg = graph_to_pb(b.build(relu(b.op("slice", [table], SliceAttrs((0, 0), (s, 4), (1, 1)), name="positions"),
                                   name="act")))
    msg.inputs[0].type.shape[1].symbolic.max = 9   # S may now exceed the table's 8 rows
    msg.ops[0].attrs["ends"].dims.values[0].symbolic.max = 9
    assert_names(rejected(msg), "ops[0] (op 'positions', type 'slice')", "S[2..9]", "at most 8")


def test_a_slice_end_no_input_binds_is_rejected():
    from kiln.ops import SliceAttrs

    b = GraphBuilder("seq")
    s = symbol("S", 2, 6)
    b.input("ids", (B, s))
    table = b.constant("pos", np.zeros((8, 4)))
    msg = graph_to_pb(b.build(relu(b.op("slice", [table], SliceAttrs((0, 0), (s, 4), (1, 1)), name="positions"),
                                   name="act")))
    set_static(msg.inputs[0].type.shape[1], 4)  # no input carries S now: nothing could tell the runtime its value
    assert_names(rejected(msg), "ops[0] (op 'positions', type 'slice')", "S[2..6]", "graph input")
