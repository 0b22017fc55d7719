"""Fold ``ai.fp8onnx`` ops whose inputs are all initializers (fake-quantized weights).

ONNX Runtime never constant-folds custom ops, so ``FakeQuant(W, s)`` on a weight would
run on every inference, and worse, the weight it feeds is no longer a constant to
ONNX Runtime, which then cannot pre-pack it (MatMul/Gemm) or pre-reorder it (NCHWc
Conv). Folding replaces each such node by an initializer holding its output, computed
with the same Numba loops the kernel runs, so results are bit-identical. Nodes whose
attributes or scales are invalid are left alone: the session then reports the error
with the node's name.

>>> import numpy as np
>>> from onnx import helper, numpy_helper, TensorProto as T
>>> from fp8onnx.runtime import ops
>>> w = numpy_helper.from_array(np.array([0.3, 600.0], np.float32), "w")
>>> s = numpy_helper.from_array(np.array(1.0, np.float32), "s")
>>> g = helper.make_graph([ops.make_fake_quant_node("w", "s", "wq", format="e4m3")], "g", [],
...     [helper.make_tensor_value_info("wq", T.FLOAT, [2])], [w, s])
>>> folded, n = fold_constant_ops(helper.make_model(g))
>>> n, numpy_helper.to_array(folded.graph.initializer[-1]).tolist()
(1, [0.3125, 448.0])
"""
from __future__ import annotations

import logging

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .. import formats
from .ops import ATTRIBUTE_DEFAULTS, DEQUANTIZE, DOMAIN, FAKE_QUANT

__all__ = ["fold_constant_ops"]

log = logging.getLogger(__name__)


def _compute(op, attrs, x, scale):
    """The node's output with the kernels' loops, or None where the kernel would fail."""
    from .. import kernels

    try:
        fmt = formats.get(attrs.get("format", b"").decode())
    except ValueError:
        return None
    axis, saturate = int(attrs.get("axis", 1)), bool(attrs.get("saturate", 1))
    in_dtype = np.uint8 if op == DEQUANTIZE else np.float32
    if x.dtype != in_dtype or scale.dtype != np.float32 or scale.ndim > 1 or x.ndim > 16:
        return None
    # The op reads a 1-element scale as per tensor, whatever its rank.
    per_tensor = scale.size == 1
    s, ax = (scale.reshape(()), None) if per_tensor else (scale, axis)
    try:  # the wrapper's ValueErrors are the cases the kernel would refuse
        if op == FAKE_QUANT:
            return kernels.fake_quant(fmt, x, s, axis=ax, saturate=saturate)
        if op == DEQUANTIZE:
            return kernels.dequantize(fmt, x, s, axis=ax)
        return kernels.quantize(fmt, x, s, axis=ax, saturate=saturate).view(np.uint8)
    except ValueError:
        return None


def _names_read(graph) -> set:
    """Every tensor name a node of ``graph`` or of its subgraphs reads."""
    names = set()
    for node in graph.node:
        names.update(node.input)
        for attr in node.attribute:
            for sub in list(attr.graphs) + ([attr.g] if attr.HasField("g") else []):
                names |= _names_read(sub)
    return names


def fold_constant_ops(model: onnx.ModelProto):
    """A copy of ``model`` with constant ai.fp8onnx nodes folded, and how many were folded.

    Only the main graph is folded (subgraphs of If/Loop are left as they are), and only
    initializers stored inside the model (not external data).
    """
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    graph_inputs = {i.name for i in graph.input}
    folded = []
    for node in graph.node:
        if node.domain != DOMAIN or len(node.input) != 2 or len(node.output) != 1:
            continue
        names = list(node.input)
        if any(n not in inits or n in graph_inputs or inits[n].data_location == onnx.TensorProto.EXTERNAL
               for n in names):
            continue
        arrays = [numpy_helper.to_array(inits[n]) for n in names]
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        for key, default in ATTRIBUTE_DEFAULTS.items():
            attrs.setdefault(key, default)
        value = _compute(node.op_type, attrs, *arrays)
        if value is None:
            continue
        folded.append((node, numpy_helper.from_array(value, node.output[0])))
    if not folded:
        return model, 0
    out = onnx.ModelProto()
    out.CopyFrom(model)
    drop = {id(n) for n, _ in folded}
    keep = [n for n in model.graph.node if id(n) not in drop]
    del out.graph.node[:]
    out.graph.node.extend(keep)
    out.graph.initializer.extend(t for _, t in folded)
    # Drop the folded nodes' inputs that nothing else reads (subgraphs included).
    inputs_of_folded = {i for n, _ in folded for i in n.input}
    used = _names_read(out.graph) | {o.name for o in out.graph.output} | graph_inputs
    still = [t for t in out.graph.initializer if t.name not in inputs_of_folded or t.name in used]
    del out.graph.initializer[:]
    out.graph.initializer.extend(still)
    log.debug("folded %d constant %s nodes", len(folded), DOMAIN)
    return out, len(folded)
