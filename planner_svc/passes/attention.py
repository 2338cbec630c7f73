"""Recognise softmax(q @ k^T * scale + mask) @ v and replace it by the fused attention op.

The pattern is written against what exports produce:

  * PyTorch (torch.export, core ATen) and ONNX both spell heads as
    linear -> reshape [B, S, H, D] -> permute (0, 2, 1, 3); k^T is a second
    permute (0, 1, 3, 2) on top, or one permute (0, 2, 3, 1) straight from
    [B, S, H, D] (ONNX's Transpose);
  * the scale is a mul by a one-element constant, a div by sqrt(d), or (as
    PyTorch's SDPA decomposition does) a mul on q and on k^T before the matmul;
  * the mask is an add of any tensor broadcastable to the scores, after the scale;
  * the context goes back through permute (0, 2, 1, 3) and a reshape to [B, S, H*D].

Layout: the pass picks bshd or bhsd by how many permute kernels each leaves.
With bshd the head permutes compose to identities and the output permute is
absorbed, so q, k, v are views of the linears' outputs and no permute kernel
remains; any permute it does need is emitted explicitly (remove_noops then
collapses permute chains).
"""
from __future__ import annotations

from dataclasses import dataclass, field

from kiln.ir import Constant, Graph, Op, TensorType
from kiln.ops import AttentionAttrs, PermuteAttrs, ShapeError, get_op
from kiln.shapes import infer_types
from planner_svc.passes.rewrite import IDENTITY4, Names, compose, is_identity, scalar_value

BHSD_TO_BSHD = (0, 2, 1, 3)
SWAP_LAST = (0, 1, 3, 2)


@dataclass
class _Match:
    scores: Op                     # matmul(q, k^T)
    context: Op                    # matmul(p, v)
    q: str
    kt: str
    v: str
    scale: float = 1.0
    mask: str | None = None
    ops: list[Op] = field(default_factory=list)   # every op the attention op replaces


class _Finder:
    def __init__(self, graph: Graph):
        self.graph = graph
        self.types: dict[str, TensorType] = infer_types(graph)
        self.cmap: dict[str, Constant] = graph.constant_map()
        self.users = graph.consumers()
        self.producers = graph.producers()
        self.outputs = set(graph.outputs)
        self.position = {o.name: i for i, o in enumerate(graph.ops)}

    def private(self, name: str) -> Op | None:
        """The producer of a tensor that only one op reads and the graph does not output."""
        if name in self.outputs or len(self.users.get(name, [])) != 1:
            return None
        return self.producers.get(name)

    def scalar_operand(self, op: Op) -> tuple[str, float] | None:
        """(other operand, factor) when op multiplies or divides by a one-element constant
        without broadcasting the other operand."""
        if op.kind not in ("mul", "div") or len(op.inputs) != 2:
            return None
        sides = ((1, 0), (0, 1)) if op.kind == "mul" else ((1, 0),)
        for c_at, x_at in sides:
            value = scalar_value(self.cmap, op.inputs[c_at])
            x = op.inputs[x_at]
            if value not in (None, 0.0) and self.types[x].shape == self.types[op.outputs[0]].shape:
                return x, (value if op.kind == "mul" else 1.0 / value)
        return None

    def fold_input_scale(self, m: _Match, name: str) -> str:
        """A scalar mul feeding the scores matmul (SDPA's sqrt(scale) on q and k) joins the scale."""
        p = self.private(name)
        found = self.scalar_operand(p) if p is not None else None
        if found is None:
            return name
        m.scale *= found[1]
        m.ops.append(p)
        return found[0]

    def walk_back(self, name: str, m: _Match, scale_seen: bool) -> bool:
        """From the softmax's input back to the scores matmul, collecting scales and the mask."""
        p = self.private(name)
        if p is None:
            return False
        if p.kind == "matmul":
            a, bt = p.inputs
            ta, tb = self.types[a], self.types[bt]
            if ta.rank != 4 or tb.rank != 4 or ta.shape[:2] != tb.shape[:2] or a == bt:
                return False
            m.scores = p
            m.ops.append(p)
            m.q, m.kt = self.fold_input_scale(m, a), self.fold_input_scale(m, bt)
            return True
        found = self.scalar_operand(p)
        if found is not None:
            m.scale *= found[1]
            m.ops.append(p)
            return self.walk_back(found[0], m, True)
        if p.kind == "add" and m.mask is None and not scale_seen:
            # A mask after the scale only: softmax((s + m) * c) would need the mask scaled too.
            for chain, mask in ((p.inputs[0], p.inputs[1]), (p.inputs[1], p.inputs[0])):
                if chain == mask or self.types[chain].shape != self.types[p.outputs[0]].shape:
                    continue
                trial = _Match(m.scores, m.context, "", "", m.v, m.scale, mask, [*m.ops, p])
                if self.walk_back(chain, trial, False):
                    m.__dict__.update(trial.__dict__)
                    return True
        return False

    def match(self, softmax: Op) -> _Match | None:
        probs = softmax.outputs[0]
        consumers = self.users.get(probs, [])
        if probs in self.outputs or len(consumers) != 1 or consumers[0].kind != "matmul":
            return None
        context = consumers[0]
        if context.inputs[0] != probs or context.inputs[1] == probs or self.types[context.inputs[1]].rank != 4:
            return None
        m = _Match(softmax, context, "", "", context.inputs[1], ops=[softmax])
        if not self.walk_back(softmax.inputs[0], m, False):
            return None
        m.ops.append(context)
        return m

    def source(self, name: str) -> tuple[str, tuple[int, ...]]:
        """(t, P) with name == permute(t, P), looking through one permute op."""
        p = self.producers.get(name)
        if p is not None and p.kind == "permute":
            return p.inputs[0], p.attrs.perm
        return name, IDENTITY4


@dataclass
class _Plan:
    layout: str
    inputs: list[tuple[str, tuple[int, ...]]]  # (tensor, permute still to apply) for q, k, v
    out_permute: Op | None                      # the consumer permute the op's output replaces


def _plan(f: _Finder, m: _Match) -> _Plan:
    # q, k and v in bhsd, each as permute(source tensor, P).
    wanted = [(t, perm) for t, perm in (f.source(m.q), f.source(m.kt), f.source(m.v))]
    wanted[1] = (wanted[1][0], compose(wanted[1][1], SWAP_LAST))
    out = m.context.outputs[0]
    consumers = f.users.get(out, [])
    out_perm = consumers[0] if (len(consumers) == 1 and out not in f.outputs and consumers[0].kind == "permute"
                                and consumers[0].attrs.perm == BHSD_TO_BSHD) else None
    bshd = [(t, compose(perm, BHSD_TO_BSHD)) for t, perm in wanted]
    cost_bhsd = sum(not is_identity(p) for _, p in wanted) + (out_perm is not None)
    cost_bshd = sum(not is_identity(p) for _, p in bshd) + (out_perm is None)
    if cost_bshd <= cost_bhsd:
        return _Plan("bshd", bshd, out_perm)
    return _Plan("bhsd", wanted, None)


def _emit(f: _Finder, m: _Match, plan: _Plan, names: Names) -> tuple[list[Op], set[str]] | None:
    """The ops replacing the match (placed where the context matmul was), and the ops they remove."""
    name = "+".join(o.name for o in sorted(m.ops, key=lambda o: f.position[o.name]))
    new: list[Op] = []
    args: list[str] = []
    for role, (tensor, perm) in zip("qkv", plan.inputs, strict=True):
        if is_identity(perm):
            args.append(tensor)
            continue
        t = names.fresh(f"{name}.{role}")
        new.append(Op(names.fresh(f"{m.scores.name}.{role}_permute"), "permute", (tensor,), (t,), PermuteAttrs(perm)))
        args.append(t)
    removed = {o.name for o in m.ops}
    out = m.context.outputs[0]
    attrs = AttentionAttrs(scale=m.scale, has_mask=m.mask is not None, layout=plan.layout)
    inputs = tuple(args) + ((m.mask,) if m.mask is not None else ())
    if plan.out_permute is not None:
        removed.add(plan.out_permute.name)
        name = f"{name}+{plan.out_permute.name}"
        attn = Op(name, "attention", inputs, plan.out_permute.outputs, attrs)
        new.append(attn)
    elif plan.layout == "bshd":
        own = names.fresh(f"{name}.bshd")
        new.append(Op(name, "attention", inputs, (own,), attrs))
        new.append(Op(names.fresh(f"{name}.to_bhsd"), "permute", (own,), (out,), PermuteAttrs(BHSD_TO_BSHD)))
    else:
        new.append(Op(name, "attention", inputs, (out,), attrs))
    try:
        types = dict(f.types)
        for op in new:
            outs = get_op(op.kind).infer([types[n] for n in op.inputs], op.attrs)
            types.update(zip(op.outputs, outs, strict=True))
    except ShapeError:
        return None  # e.g. head dims over the op's limit, or k/v lengths that differ
    replaced = plan.out_permute.outputs[0] if plan.out_permute is not None else out
    if types[replaced] != f.types[replaced]:
        return None
    return new, removed


def fuse_attention(graph: Graph) -> Graph:
    if not any(op.kind == "softmax" for op in graph.ops):
        return graph
    f = _Finder(graph)
    names = Names(graph)
    at: dict[str, list[Op]] = {}
    removed: set[str] = set()
    for op in graph.ops:
        if op.kind != "softmax":
            continue
        m = f.match(op)
        if m is None or removed.intersection(o.name for o in m.ops):
            continue
        emitted = _emit(f, m, _plan(f, m), names)
        if emitted is None:
            continue
        new, gone = emitted
        at[m.context.name] = new
        removed |= gone
    if not at:
        return graph
    ops: list[Op] = []
    for op in graph.ops:
        ops.extend(at.get(op.name, []))
        if op.name not in removed:
            ops.append(op)
    return graph.replace(ops=tuple(ops))
