"""Vertical fusion of a GEMM (linear or conv2d) with the elementwise kernel that consumes it.

The elementwise program becomes the GEMM's epilogue, applied to the
accumulator in registers, so the GEMM's output never goes to memory.
"""
from __future__ import annotations

import dataclasses

from kiln.ir import Graph, Op
from kiln.ops import OPS, EwInstr
from kiln.shapes import infer_types

# Both take the same epilogue program: value 0 is the accumulator with its bias added.
EPILOGUE_GEMMS = ("linear", "conv2d")


def _absorb(gemm: Op, ew: Op) -> Op:
    acc = gemm.outputs[0]
    extras = [n for n in ew.inputs if n != acc]
    n_old, n_new = len(ew.inputs), 1 + len(extras)

    def remap(a: int) -> int:
        if a >= n_old:
            return a - n_old + n_new
        name = ew.inputs[a]
        return 0 if name == acc else 1 + extras.index(name)

    program = tuple(EwInstr(i.op, tuple(remap(a) for a in i.args)) for i in ew.attrs.program)
    attrs = dataclasses.replace(gemm.attrs, epilogue=program)
    return Op(f"{gemm.name}+{ew.name}", gemm.kind, gemm.inputs + tuple(extras), ew.outputs, attrs)


def fuse_gemm_epilogues(graph: Graph) -> Graph:
    types = infer_types(graph)
    users = graph.consumers()
    outputs = set(graph.outputs)
    replaced: dict[str, Op] = {}
    absorbed: set[str] = set()
    for op in graph.ops:
        if op.kind not in EPILOGUE_GEMMS or op.attrs.epilogue:
            continue
        out = op.outputs[0]
        consumers = users.get(out, [])
        if out in outputs or len(consumers) != 1 or consumers[0].kind != "fused_elementwise":
            continue
        ew = consumers[0]
        if types[ew.outputs[0]].shape != types[out].shape:
            continue
        # The extra inputs must exist before the GEMM runs: it takes the
        # GEMM's place in the order, so none may be made in between.
        position = {o.name: i for i, o in enumerate(graph.ops)}
        producers = graph.producers()
        extras_ready = all(n == out or n not in producers or position[producers[n].name] < position[op.name]
                           for n in ew.inputs)
        extras = {n for n in ew.inputs if n != out}
        if not extras_ready or len(op.inputs) + len(extras) > OPS[op.kind].max_inputs:
            continue
        replaced[op.name] = _absorb(op, ew)
        absorbed.add(ew.name)
    new_ops = tuple(replaced.get(o.name, o) for o in graph.ops if o.name not in absorbed)
    return graph.replace(ops=new_ops)
