"""InsertQDQ: put the plan's FP8 Q/DQ pairs into the graph.

    Conv(x, W)  ->  Conv(DQ(Q(x, s_x)), DQ(W_fp8, s_W[c]))
    MatMul(a, b) -> MatMul(DQ(Q(a)), DQ(Q(b)))                  activation x activation
    Gather(T, ids) -> Gather(DQ(T_fp8, s_T[row]), ids)          embedding, weights only

Requires a :class:`~fp8onnx.planner.Plan` made on this very model and the calibrated
``amax`` of every activation tensor, keyed by ``(tensor, format name)``, unless
``dynamic``: then each activation's scale is computed at run time from its amax
(``Abs -> ReduceMax -> Div(fmt.max) -> Max(floor)`` feeding the Q/DQ pair). One Q/DQ pair
per tensor and format, shared by every consumer of that format; weights become FP8
initializers (uint8 codes behind the custom Dequantize op when emulating); biases stay
float. New nodes are named after the tensor they quantize (``<tensor>_q``,
``<tensor>_dq``) and placed just before their first reader, so the order stays
topological and repeated runs give the same bytes.
"""
from __future__ import annotations

import logging
from typing import Dict, List, Optional, Tuple

import onnx
from onnx import numpy_helper

from fp8onnx import formats as _formats
from fp8onnx import qdq
from fp8onnx.errors import PreconditionError
from fp8onnx.graph import GraphIndex, NameAllocator
from fp8onnx.passinfra import Pass, PassResult
from fp8onnx.planner import Plan
from fp8onnx.runtime import ops

__all__ = ["InsertQDQ"]

log = logging.getLogger("fp8onnx.passes")


class InsertQDQ(Pass):
    """Inserts the Q/DQ pairs of ``plan``; ``amax[(tensor, fmt)]`` gives activation ranges."""

    name = "insert_qdq"

    def __init__(self, plan: Plan, amax: Dict[Tuple[str, str], float], *, emit: str = "auto",
                 saturate: bool = True, dynamic: bool = False, pow2_scales: bool = False,
                 notes: Optional[Dict[Tuple[str, str], str]] = None) -> None:
        super().__init__()
        self.plan, self.amax, self.emit, self.saturate = plan, amax, emit, saturate
        self.dynamic, self.pow2 = dynamic, pow2_scales
        #: (activation tensor, format) -> a sentence appended to its nodes' doc strings (why
        #: that format, e.g. the underflow guard's rates), for Netron and the tensor map.
        self.notes = notes or {}
        self.inserted: Dict[str, dict] = {}

    def requires(self, model):
        if self.dynamic:
            return
        missing = sorted({
            (u.tensor, d.activation_format) for d in self.plan.units for u in d.activation_uses
            if (u.tensor, d.activation_format) not in self.amax
        })
        if missing:
            raise PreconditionError(f"no calibrated amax for {missing[:5]} (and {max(0, len(missing) - 5)} more)")

    def call(self, model):
        self.inserted = {}
        names = NameAllocator(model)
        by_graph: Dict[int, List] = {}
        graphs: Dict[int, onnx.GraphProto] = {}
        for d in self.plan.units:
            if d.activation_uses or d.weight_uses:
                by_graph.setdefault(id(d.graph), []).append(d)
                graphs[id(d.graph)] = d.graph
        zero_points: Dict[str, str] = {}
        used_custom = False
        # Subgraphs first: rewriting a parent's node list copies its If/Loop nodes, which
        # would leave the plan's handles on their bodies pointing at stale copies.
        depth = {gid: units[0].graph_path.count("/") for gid, units in by_graph.items()}
        for gid in sorted(by_graph, key=lambda g: -depth[g]):
            units = by_graph[gid]
            used_custom |= self._rewrite_graph(model, graphs[gid], units, names, zero_points)
        if not self.inserted:
            return PassResult(model, False)
        for fmt_name, zp in sorted(zero_points.items()):
            model.graph.initializer.append(qdq.zero_point(_formats.get(fmt_name), zp))
        if used_custom and not any(o.domain == ops.DOMAIN for o in model.opset_import):
            model.opset_import.append(ops.opset_import())
        log.info("inserted %d Q/DQ groups", len(self.inserted))
        return PassResult(model, True)

    def _rewrite_graph(self, model, graph, units, names, zero_points) -> bool:
        index = GraphIndex(graph)
        by_name = {n.name: n for n in graph.node}
        built: Dict[tuple, qdq.Built] = {}
        readers: Dict[tuple, List[onnx.NodeProto]] = {}
        replaced_weights = set()
        used_custom = False
        for d in units:
            for use in d.weight_uses:
                node = by_name[use.node]
                if node.input[use.index] != use.tensor:
                    continue  # already rewired by an earlier run
                fmt = _formats.get(d.weight_format)
                key = ("w", use.tensor, fmt.name, use.axis)
                if key not in built:
                    w = numpy_helper.to_array(index.initializers[use.tensor])
                    b = qdq.build_weight(names, use.tensor, w, fmt, use.axis, self.emit, self.saturate, self.pow2)
                    built[key] = b
                    self.inserted[b.output] = {"kind": "weight", "tensor": use.tensor, "format": fmt.name, **b.info}
                node.input[use.index] = built[key].output
                readers.setdefault(key, []).append(node)
                replaced_weights.add(use.tensor)
            for use in d.activation_uses:
                node = by_name[use.node]
                if node.input[use.index] != use.tensor:
                    continue
                fmt = _formats.get(d.activation_format)
                key = ("a", use.tensor, fmt.name)
                if key not in built:
                    native = qdq.emits_native(fmt, self.emit)
                    zp = zero_points.setdefault(fmt.name, names.tensor(f"fp8onnx_zero_{fmt.name}")) if native else ""
                    if self.dynamic:
                        b = qdq.build_activation_dynamic(names, use.tensor, fmt, self.emit, zp, self.saturate, self.pow2)
                    else:
                        b = qdq.build_activation(names, use.tensor, fmt, self.amax[(use.tensor, fmt.name)],
                                                 self.emit, zp, self.saturate, self.pow2)
                    note = self.notes.get((use.tensor, fmt.name))
                    if note:
                        for n in b.nodes:
                            n.doc_string += f"; {note}"
                    built[key] = b
                    self.inserted[b.output] = {"kind": "activation", "tensor": use.tensor, "format": fmt.name, **b.info,
                                               **({"note": note} if note else {})}
                node.input[use.index] = built[key].output
                readers.setdefault(key, []).append(node)
        # Each group goes just before its earliest reader, keeping the order topological.
        position = {id(n): i for i, n in enumerate(graph.node)}
        before: Dict[int, List[qdq.Built]] = {}
        for key, b in built.items():
            first = min(readers[key], key=lambda n: position[id(n)])
            before.setdefault(id(first), []).append(b)
        for b in built.values():
            graph.initializer.extend(b.initializers)
            used_custom |= not b.info["native"]
        new_nodes = []
        for node in graph.node:
            for b in before.get(id(node), ()):
                new_nodes.extend(b.nodes)
            new_nodes.append(node)
        del graph.node[:]
        graph.node.extend(new_nodes)
        self._drop_replaced(graph, replaced_weights)
        return used_custom

    @staticmethod
    def _drop_replaced(graph, tensors) -> None:
        """Float copies of weights nobody reads any more leave the file (the 4x shrink)."""
        index = GraphIndex(graph)
        dead = {t for t in tensors if not index.consumers.get(t) and t not in index.graph_outputs}
        if dead:
            kept = [t for t in graph.initializer if t.name not in dead]
            del graph.initializer[:]
            graph.initializer.extend(kept)
