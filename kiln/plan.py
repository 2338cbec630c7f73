"""ExecutionPlan and KernelSpec: what the planner hands to the codegen workers.

A KernelSpec says everything that shapes one kernel's code except its tuning
config; its symbolic dims are renamed s0, s1, ... in order of appearance so
that two graphs naming their batch dim differently share the same kernel.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from kiln import keys
from kiln.codec import from_json, to_json
from kiln.ir import Dim, IntVar, TensorType
from kiln.ops import get_op


@dataclass(frozen=True)
class KernelSpec:
    op: str
    attrs: Any
    inputs: tuple[TensorType, ...]
    outputs: tuple[TensorType, ...]

    @property
    def symbols(self) -> tuple[IntVar, ...]:
        seen: dict[str, IntVar] = {}
        for t in self.inputs + self.outputs:
            for d in t.symbols():
                seen.setdefault(d.name, d)
        return tuple(seen.values())

    def to_json(self) -> dict[str, Any]:
        return {"op": self.op, "attrs": to_json(self.attrs), "inputs": to_json(self.inputs),
                "outputs": to_json(self.outputs)}

    @staticmethod
    def from_json(data: dict[str, Any]) -> KernelSpec:
        return KernelSpec(
            data["op"], from_json(get_op(data["op"]).Attrs, data["attrs"]),
            from_json(tuple[TensorType, ...], data["inputs"]), from_json(tuple[TensorType, ...], data["outputs"]))

    def key(self) -> str:
        return keys.digest(keys.SPEC_SALT, self.to_json())


def canonical_spec(op: str, attrs: Any, inputs: list[TensorType], outputs: list[TensorType]
                   ) -> tuple[KernelSpec, tuple[str, ...]]:
    """A spec with symbols renamed s0.., and the graph symbol names bound to them."""
    rename: dict[str, IntVar] = {}

    def canon(t: TensorType) -> TensorType:
        dims: list[Dim] = []
        for d in t.shape:
            if isinstance(d, IntVar):
                d = rename.setdefault(d.name, IntVar(f"s{len(rename)}", d.min, d.max))
            dims.append(d)
        return TensorType(t.dtype, tuple(dims))

    spec = KernelSpec(op, attrs, tuple(canon(t) for t in inputs), tuple(canon(t) for t in outputs))
    return spec, tuple(rename)


@dataclass(frozen=True)
class Buffer:
    """Where a tensor lives at run time."""

    name: str
    type: TensorType
    kind: str        # input | output | constant | activation
    index: int       # input/output/constant position, or arena offset for activations
    # A view (a reshape, a contiguous slice, a concat input written in place)
    # owns no bytes: it names the buffer that does, and where in it it starts;
    # kind and index are the owner's. Both default so older plans still load.
    alias_of: str = ""
    alias_offset: int = 0  # bytes into alias_of


@dataclass(frozen=True)
class KernelCall:
    kernel: str                 # the kernel's id within the plan: k0, k1, ...
    spec: KernelSpec
    args: tuple[str, ...]       # buffer names: spec inputs then outputs
    symbols: tuple[str, ...]    # graph symbol bound to each spec symbol s0, s1, ...
    source_ops: tuple[str, ...]  # the graph ops this kernel computes (for --explain)


@dataclass(frozen=True)
class ExecutionPlan:
    graph_name: str
    target: str
    symbols: tuple[IntVar, ...]
    buffers: tuple[Buffer, ...]
    calls: tuple[KernelCall, ...]
    arena_bytes: int
    activation_bytes_total: int

    def buffer(self, name: str) -> Buffer:
        return next(b for b in self.buffers if b.name == name)

    def of_kind(self, kind: str) -> list[Buffer]:
        """The buffers that own bytes of this kind (views excluded)."""
        return sorted((b for b in self.buffers if b.kind == kind and not b.alias_of), key=lambda b: b.index)

    def to_json(self) -> dict[str, Any]:
        return {
            "graph_name": self.graph_name, "target": self.target, "symbols": to_json(self.symbols),
            "buffers": to_json(self.buffers), "arena_bytes": self.arena_bytes,
            "activation_bytes_total": self.activation_bytes_total,
            "calls": [{"kernel": c.kernel, "spec": c.spec.to_json(), "args": list(c.args),
                       "symbols": list(c.symbols), "source_ops": list(c.source_ops)} for c in self.calls],
        }

    def dumps(self) -> bytes:
        return json.dumps(self.to_json(), sort_keys=True).encode()

    @staticmethod
    def loads(data: bytes) -> ExecutionPlan:
        d = json.loads(data)
        return ExecutionPlan(
            d["graph_name"], d["target"], from_json(tuple[IntVar, ...], d["symbols"]),
            from_json(tuple[Buffer, ...], d["buffers"]),
            tuple(KernelCall(c["kernel"], KernelSpec.from_json(c["spec"]), tuple(c["args"]), tuple(c["symbols"]),
                             tuple(c["source_ops"])) for c in d["calls"]),
            d["arena_bytes"], d["activation_bytes_total"])


