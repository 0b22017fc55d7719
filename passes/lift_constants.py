"""LiftConstants: weights held in ``Constant`` nodes become initializers.

Exporters (torch, paddle2onnx for PaddleOCR) often emit every weight as a ``Constant``
node; the quantization passes look for weights among initializers, so this pass turns

    Constant(value=W) -> w ; Conv(x, w)   ->   initializer w ; Conv(x, w)

keeping the tensor name. All ``value*`` attribute kinds are handled (``value``,
``value_float(s)``, ``value_int(s)``, ``value_string(s)``); ``sparse_value`` stays a node
(logged). Subgraphs (If/Loop/Scan bodies) lift into their own initializers. A Constant
whose output is an output of its graph stays a node: an initializer is not a value a
graph computes, and ONNX Runtime does not accept it as a subgraph output.

Requires nothing. Before IR version 4 every initializer must also be a graph input, so
on such models the lifted tensors are listed as inputs too (UpgradeOpset drops those
inputs when it raises the IR version), and subgraphs are left alone (their inputs are a
fixed signature). Running this before UpgradeOpset keeps large weights out of the nodes
the version converter copies. Model-local functions have no initializers: left alone.

Example::

    LiftConstants()(model).modified   # True when any Constant was lifted
"""
from __future__ import annotations

import logging

import numpy as np
import onnx
from onnx import numpy_helper

from fp8onnx import graph as G
from fp8onnx.passinfra import Pass, PassResult

__all__ = ["LiftConstants", "lift_graph_constants"]

log = logging.getLogger("fp8onnx.passes")

_VALUE_ATTRS = {"value", "value_float", "value_floats", "value_int", "value_ints", "value_string", "value_strings"}


class LiftConstants(Pass):
    """Turns default-domain ``Constant`` nodes into initializers of their graph."""

    def call(self, model):
        lifted = 0
        if model.ir_version < 4:
            lifted = _lift(model.graph, as_inputs=True)
        else:
            # iter_graphs yields a graph before descending into it, so subgraphs are read
            # from the parent's rewritten node list (not from stale copies).
            for g in G.iter_graphs(model.graph):
                lifted += _lift(g)
        if lifted:
            log.info("lifted %d Constant nodes to initializers", lifted)
        return PassResult(model, lifted > 0)


def lift_graph_constants(g: onnx.GraphProto, *, only=None) -> int:
    """Lifts the liftable Constant nodes of one graph (not its subgraphs); returns how many.

    ``only``: a set of output names to restrict to (UpgradeOpset lifts just the Constants
    the version converter created).
    """
    return _lift(g, only=only)


def _lift(g: onnx.GraphProto, as_inputs: bool = False, only=None) -> int:
    outputs = {v.name for v in g.output}
    taken = {t.name for t in g.initializer} | {v.name for v in g.input}
    keep, new_inits = [], []
    for node in g.node:
        tensor = _tensor_of(node) if node.op_type == "Constant" and node.domain in ("", "ai.onnx") else None
        name = node.output[0] if len(node.output) == 1 else ""
        if tensor is None or not name or name in outputs or name in taken or (only is not None and name not in only):
            keep.append(node)
            continue
        tensor.name = name
        new_inits.append(tensor)
        taken.add(name)
    if not new_inits:
        return 0
    del g.node[:]
    g.node.extend(keep)
    g.initializer.extend(new_inits)
    if as_inputs:
        g.input.extend(onnx.helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)) for t in new_inits)
    return len(new_inits)


def _tensor_of(node: onnx.NodeProto):
    """The node's value as a TensorProto, or None when it has no liftable value."""
    attrs = [a for a in node.attribute if a.name in _VALUE_ATTRS or a.name == "sparse_value"]
    if len(attrs) != 1:
        return None
    a = attrs[0]
    if a.name == "sparse_value":
        log.debug("Constant %r holds a sparse_value: left as a node", node.name or node.output[0])
        return None
    if a.name == "value":
        t = onnx.TensorProto()
        t.CopyFrom(a.t)  # keeps raw/typed/external storage exactly as exported
        return t
    if a.name == "value_string":
        return numpy_helper.from_array(np.array(a.s, dtype=object))
    if a.name == "value_strings":
        return numpy_helper.from_array(np.array(list(a.strings), dtype=object))
    return numpy_helper.from_array(G.constant_array(node))
