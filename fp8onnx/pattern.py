"""Graph patterns as data, and the matcher that finds them.

A :class:`Pattern` is a small DAG of :class:`PNode` written in topological order; the
last one is the root, where matching starts and walks backwards through producers.
Each entry of ``PNode.inputs`` says what feeds that input:

- ``"%conv"``: the first output of the pattern node named ``conv``;
- ``"$x"``: any tensor, bound to the variable ``x`` (the same variable twice must be the
  same tensor);
- ``"#w"``: like ``$w`` but the tensor must be constant (an initializer or a Constant);
- ``"*"``: anything, not bound; trailing inputs not listed are not checked.

Commutative nodes (Add, Mul) are tried in both input orders. A match's internal tensors
(outputs of non-root pattern nodes) may not be read outside the match, so a match is a
unit that can be treated as one operator.

Example, Conv followed by SiLU written as Sigmoid and Mul (YOLOv8 does this)::

    Pattern("conv_silu", anchor="conv", nodes=(
        PNode("conv", ("Conv",), ("$x", "#w")),
        PNode("sig", ("Sigmoid",), ("%conv",)),
        PNode("mul", ("Mul",), ("%conv", "%sig"), commutative=True),
    ))

Conditions are separate small functions ``(Match) -> Optional[str]`` that return the
reason a match is rejected (onnxscript's MatchResult.fail, as data).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Dict, Iterator, Optional, Tuple

import onnx

from .graph import GraphIndex

__all__ = ["PNode", "Pattern", "Match", "match_at", "Condition"]


@dataclass(frozen=True)
class PNode:
    name: str
    ops: Tuple[str, ...]
    inputs: Tuple[str, ...] = ()
    commutative: bool = False


@dataclass(frozen=True)
class Match:
    """The graph nodes and tensors a pattern bound. ``nodes`` maps PNode name -> NodeProto."""

    pattern: "Pattern"
    nodes: Dict[str, onnx.NodeProto]
    vars: Dict[str, str]
    index: GraphIndex

    @property
    def anchor(self) -> onnx.NodeProto:
        return self.nodes[self.pattern.anchor]

    @property
    def root(self) -> onnx.NodeProto:
        return self.nodes[self.pattern.nodes[-1].name]

    def node_ids(self) -> set:
        return {id(n) for n in self.nodes.values()}


#: A condition returns None to accept a match, or the reason it is rejected.
Condition = Callable[[Match], Optional[str]]


@dataclass(frozen=True)
class Pattern:
    name: str
    anchor: str
    nodes: Tuple[PNode, ...]
    conditions: Tuple[Condition, ...] = field(default=())
    description: str = ""

    def __post_init__(self):
        names = [p.name for p in self.nodes]
        if len(set(names)) != len(names) or self.anchor not in names:
            raise ValueError(f"pattern {self.name!r}: node names must be unique and include the anchor")
        for p in self.nodes:
            for ref in p.inputs:
                if ref.startswith("%") and ref[1:] not in names:
                    raise ValueError(f"pattern {self.name!r}: {p.name} reads unknown node {ref}")

    @property
    def root_ops(self) -> Tuple[str, ...]:
        return self.nodes[-1].ops

    def check(self, m: Match) -> Optional[str]:
        """The first reason a condition rejects ``m``, or None."""
        for cond in self.conditions:
            reason = cond(m)
            if reason:
                return reason
        return None


def match_at(pattern: Pattern, node: onnx.NodeProto, index: GraphIndex) -> Iterator[Match]:
    """Every way ``pattern`` matches with its root at ``node`` (structure only, no conditions)."""
    spec = {p.name: p for p in pattern.nodes}
    root = pattern.nodes[-1]
    for nodes, vars_ in _match_node(root, node, spec, index, {}, {}):
        m = Match(pattern, nodes, vars_, index)
        if _is_closed(m, root.name):
            yield m


def _match_node(p: PNode, node, spec, index, nodes, vars_):
    if node.op_type not in p.ops:
        return
    bound = nodes.get(p.name)
    if bound is not None:
        if bound is node:
            yield nodes, vars_
        return
    if any(n is node for n in nodes.values()):
        return
    nodes = {**nodes, p.name: node}
    orders = [list(range(len(p.inputs)))]
    if p.commutative and len(p.inputs) == 2:
        orders.append([1, 0])
    for order in orders:
        if len(node.input) < len(p.inputs):
            continue
        yield from _match_inputs(p, [node.input[i] for i in order], 0, spec, index, nodes, vars_)


def _match_inputs(p, tensors, k, spec, index, nodes, vars_):
    if k == len(p.inputs):
        yield nodes, vars_
        return
    ref, tensor = p.inputs[k], tensors[k]
    if ref == "*":
        yield from _match_inputs(p, tensors, k + 1, spec, index, nodes, vars_)
    elif ref[0] in "$#":
        var = ref[1:]
        if ref[0] == "#" and not index.is_constant(tensor):
            return
        if var in vars_ and vars_[var] != tensor:
            return
        yield from _match_inputs(p, tensors, k + 1, spec, index, nodes, {**vars_, var: tensor})
    elif ref[0] == "%":
        producer = index.producer.get(tensor)
        if producer is None or producer.output[0] != tensor:
            return
        for nodes2, vars2 in _match_node(spec[ref[1:]], producer, spec, index, nodes, vars_):
            yield from _match_inputs(p, tensors, k + 1, spec, index, nodes2, vars2)
    else:
        raise ValueError(f"bad input reference {ref!r} in pattern node {p.name!r}")


def _is_closed(m: Match, root_name: str) -> bool:
    """Internal outputs are read only inside the match and are not graph outputs."""
    ids = m.node_ids()
    for name, node in m.nodes.items():
        if name == root_name:
            continue
        for out in node.output:
            if out in m.index.graph_outputs:
                return False
            if any(id(c) not in ids for c in m.index.consumers.get(out, ())):
                return False
    return True
