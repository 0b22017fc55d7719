"""Planning: find the quantizable units of a model and decide, per unit, what becomes FP8.

The planner only reads the model. It matches the scheme's patterns in priority order
(a node belongs to at most one unit), applies the recipe's overrides, and records for
every unit which tensors get activation Q/DQ and which weights get per-channel Q/DQ,
and for every node of a quantizable op type that stays float, the reason.

>>> plan = plan_quantization(model, Recipe())          # doctest: +SKIP
>>> plan.activation_tensors()                          # doctest: +SKIP
['input', 'relu1_out', ...]
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional

import onnx
from onnx import TensorProto

from . import schemes as _schemes
from .graph import GraphIndex, subgraphs
from .pattern import match_at
from .recipe import Recipe

__all__ = ["Use", "UnitDecision", "FloatNode", "Plan", "plan_quantization"]

_QUANTIZABLE_ACT_TYPES = (TensorProto.FLOAT,)
_FLOAT_TYPES = (TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.BFLOAT16, TensorProto.DOUBLE)


@dataclass(frozen=True)
class Use:
    """One input slot to rewire: ``node.input[index]`` reads ``tensor``."""

    tensor: str
    node: str
    index: int
    axis: Optional[int] = None  # weights only: the per-channel axis


@dataclass
class UnitDecision:
    graph_path: str
    unit: str
    node: str
    op_type: str
    nodes: List[str]
    weight_format: Optional[str] = None
    activation_format: Optional[str] = None
    activation_uses: List[Use] = field(default_factory=list)
    weight_uses: List[Use] = field(default_factory=list)
    notes: List[str] = field(default_factory=list)
    position: int = 0  # index of the anchor in its graph, for ordering
    #: Element type (e.g. "FLOAT16") of a tensor left float for not being float32, if any.
    precision: Optional[str] = None
    graph: Optional[onnx.GraphProto] = field(default=None, repr=False, compare=False)

    @property
    def status(self) -> str:
        if self.activation_uses and self.weight_uses:
            return "quantized"
        if self.weight_uses:
            return "weights only"
        if self.activation_uses:
            return "quantized" if not self.weight_format else "activations only"
        return "float"

    def to_dict(self) -> dict:
        return {
            "graph": self.graph_path, "unit": self.unit, "node": self.node, "op_type": self.op_type,
            "nodes": self.nodes, "status": self.status,
            "weight_format": self.weight_format if self.weight_uses else None,
            "activation_format": self.activation_format if self.activation_uses else None,
            "activations": sorted({u.tensor for u in self.activation_uses}),
            "weights": sorted({u.tensor for u in self.weight_uses}),
            "notes": self.notes,
        }


@dataclass(frozen=True)
class FloatNode:
    graph_path: str
    node: str
    op_type: str
    reason: str


@dataclass
class Plan:
    scheme: str
    units: List[UnitDecision] = field(default_factory=list)
    float_nodes: List[FloatNode] = field(default_factory=list)

    def activation_tensors(self) -> List[str]:
        """Main-graph tensors that need calibration statistics, in first-use order."""
        seen: Dict[str, None] = {}
        for u in self.units:
            if u.graph_path == "main":
                for use in u.activation_uses:
                    seen.setdefault(use.tensor, None)
        return list(seen)

    def to_dict(self) -> dict:
        return {
            "scheme": self.scheme,
            "units": [u.to_dict() for u in self.units],
            "float": [f.__dict__ for f in self.float_nodes],
        }


def plan_quantization(model: onnx.ModelProto, recipe: Recipe) -> Plan:
    """Decide what to quantize in ``model`` (which is not modified)."""
    scheme = _schemes.get(recipe.scheme)
    plan = Plan(scheme.name)
    _plan_graph(model.graph, "main", scheme, recipe, plan)
    if recipe.keep_first_last or recipe.keep_first:
        _keep_first_last(plan, last=recipe.keep_first_last)
    return plan


def _plan_graph(graph, path, scheme, recipe, plan):
    index = GraphIndex(graph)
    position = {id(n): i for i, n in enumerate(graph.node)}
    first_unit = len(plan.units)
    claimed: set = set()
    rejections: Dict[int, List[str]] = {}
    for spec in scheme.units:
        root_ops = spec.pattern.root_ops
        for node in graph.node:
            if node.op_type not in root_ops or id(node) in claimed:
                continue
            for m in match_at(spec.pattern, node, index):
                if m.node_ids() & claimed:
                    continue
                reason = spec.pattern.check(m)
                if reason:
                    rejections.setdefault(id(m.anchor), []).append(f"{spec.unit}: {reason}")
                    continue
                claimed |= m.node_ids()
                d = _decide(spec, m, path, graph, index, recipe)
                d.position = position[id(m.anchor)]
                plan.units.append(d)
                break
    plan.units[first_unit:] = sorted(plan.units[first_unit:], key=lambda u: u.position)
    for node in graph.node:
        if node.op_type not in scheme.anchor_ops or id(node) in claimed:
            continue
        if node.op_type == "Gather" and index.elem_type(node.input[0]) not in _FLOAT_TYPES:
            continue  # a Gather on shapes or ids is no embedding: not worth a line in the report
        reasons = rejections.get(id(node))
        reason = reasons[-1] if reasons else "no pattern of the scheme matched"
        plan.float_nodes.append(FloatNode(path, node.name, node.op_type, reason))
    for node in graph.node:
        for sub in subgraphs(node):
            _plan_graph(sub, f"{path}/{node.name}.{_attr_name(node, sub)}", scheme, recipe, plan)


def _attr_name(node, sub) -> str:
    for a in node.attribute:
        if a.type == onnx.AttributeProto.GRAPH and a.g is sub:
            return a.name
        if a.type == onnx.AttributeProto.GRAPHS and any(g is sub for g in a.graphs):
            return a.name
    return "body"


def _decide(spec, m, path, graph, index, recipe) -> UnitDecision:
    anchor = m.anchor
    wfmt, afmt, reason = recipe.resolve(anchor.name, anchor.op_type)
    d = UnitDecision(path, spec.unit, anchor.name, anchor.op_type, [n.name for n in m.nodes.values()],
                     wfmt, afmt, graph=graph)
    if reason:
        d.notes.append(reason)
        return d
    if not spec.activations and not spec.weights:
        d.notes.append(f"{spec.unit} is kept float as one unit (an activation function)")
        return d
    if afmt:
        if path != "main":
            d.notes.append("activations kept float: inside a subgraph, which calibration cannot observe")
        else:
            for var in spec.activations:
                tensor = m.vars[var]
                if index.is_constant(tensor):
                    d.notes.append(f"input {tensor!r} is constant: left as it is")
                    continue
                etype = index.elem_type(tensor)
                if etype is not None and etype not in _QUANTIZABLE_ACT_TYPES:
                    d.precision = TensorProto.DataType.Name(etype)
                    d.notes.append(f"activation {tensor!r} is {d.precision}, not float32")
                    continue
                for node in m.nodes.values():
                    for i, name in enumerate(node.input):
                        if name == tensor:
                            d.activation_uses.append(Use(tensor, node.name, i))
    if wfmt:
        for w in spec.weights:
            tensor = m.vars[w.var]
            etype = index.initializers[tensor].data_type
            if etype != TensorProto.FLOAT:
                # Its DequantizeLinear would give float32 beside the node's other inputs.
                d.precision = TensorProto.DataType.Name(etype)
                d.notes.append(f"weight {tensor!r} is {d.precision}, not float32")
                continue
            rank = len(index.initializers[tensor].dims)
            axis = _schemes.weight_axis(w, anchor, rank)
            for i, name in enumerate(anchor.input):
                if name == tensor:
                    d.weight_uses.append(Use(tensor, anchor.name, i, axis))
    return d


def _keep_first_last(plan: Plan, last: bool = True) -> None:
    main = [u for u in plan.units if u.graph_path == "main" and u.weight_uses]
    flag = "--keep-first-last" if last else "--keep-first"
    for u in {id(x): x for x in (main[:1] + (main[-1:] if last else []))}.values():
        u.activation_uses.clear()
        u.weight_uses.clear()
        u.notes.append(f"kept float by {flag}")
