"""NameNodes: every node gets a non-empty name, unique across the model and its subgraphs.

Reports, recipes and per-node overrides refer to nodes by name, so

    Conv(name="")          -> Conv(name="Conv_conv1_out")        (op type + first output)
    Relu(name="r"), Relu(name="r")  -> "r" kept for the first, "Relu_<output>" for the second

Existing unique names are kept. New names are derived from the op type and the first
output name (sanitised), with ``_1``, ``_2``... on a clash, visiting graphs parents first
and nodes in order, so repeated runs give the same names. Model-local function bodies are
a separate scope and are not touched.

Also checks single assignment of tensors: two nodes producing the same tensor in one
graph, or a node output that redefines a graph input, an initializer or a name from an
enclosing graph, make the model invalid; this raises UserError naming the tensor and
both producers. (Sibling subgraphs, e.g. If branches, may reuse names: they are separate
scopes.)

Requires nothing. Example::

    NameNodes()(model).modified   # True when any node was (re)named
"""
from __future__ import annotations

import re
from typing import Dict, Set

import onnx

from fp8onnx import graph as G
from fp8onnx.errors import UserError
from fp8onnx.passinfra import Pass, PassResult

__all__ = ["NameNodes"]

_UNSAFE = re.compile(r"[^0-9A-Za-z_.\-]+")
_MAX_LEN = 80


class NameNodes(Pass):
    """Gives nameless and duplicate-named nodes deterministic unique names."""

    def call(self, model):
        _check_single_assignment(model.graph, {}, "main graph")
        nodes = [n for g in G.iter_graphs(model.graph) for n in g.node]
        counts: Dict[str, int] = {}
        for n in nodes:
            if n.name:
                counts[n.name] = counts.get(n.name, 0) + 1
        taken: Set[str] = set(counts)
        seen: Set[str] = set()
        renamed = 0
        for n in nodes:
            if n.name and n.name not in seen:
                seen.add(n.name)
                continue
            n.name = _fresh(_base(n), taken)
            seen.add(n.name)
            renamed += 1
        return PassResult(model, renamed > 0)


def _base(node: onnx.NodeProto) -> str:
    first = next((o for o in node.output if o), "")
    stem = _UNSAFE.sub("_", first).strip("_")
    base = f"{node.op_type}_{stem}" if stem else node.op_type or "node"
    return base[:_MAX_LEN]


def _fresh(base: str, taken: Set[str]) -> str:
    name, k = base, 1
    while name in taken:
        name = f"{base}_{k}"
        k += 1
    taken.add(name)
    return name


def _describe(node: onnx.NodeProto) -> str:
    return f"{node.op_type} node {node.name!r}" if node.name else f"a nameless {node.op_type} node"


def _check_single_assignment(graph: onnx.GraphProto, outer: Dict[str, str], where: str) -> None:
    """Raises UserError when a tensor name is defined twice in ``graph``'s scope chain.

    ``outer`` maps names visible from enclosing graphs to a description of their origin.
    """
    defined: Dict[str, str] = dict(outer)
    for v in graph.input:
        defined.setdefault(v.name, f"an input of the {where}")
    for t in graph.initializer:
        defined.setdefault(t.name, f"an initializer of the {where}")
    for node in graph.node:
        for out in node.output:
            if not out:
                continue
            if out in defined:
                raise UserError(
                    f"model is invalid: tensor {out!r} is produced by {_describe(node)} in the {where} "
                    f"but is already {defined[out]}; every tensor must be produced once, fix the exporter "
                    "or rename one of them"
                )
            defined[out] = f"produced by {_describe(node)}"
    for node in graph.node:
        for sub in G.subgraphs(node):
            _check_single_assignment(sub, defined, f"subgraph {sub.name!r} of {_describe(node)}")
