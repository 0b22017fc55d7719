"""Structural facts about a model that a quantizer cares about, as a plain dict.

    >>> describe(onnx.load("models/digits_cnn.onnx"))["ops"]["Conv"]    # doctest: +SKIP
    3

Reports the opsets, node counts by op type, where weights live (initializers or
``Constant`` nodes), dynamic input dimensions, non-float inputs and control-flow
subgraphs (If/Loop/Scan attributes).
"""
from __future__ import annotations

from collections import Counter
from typing import Any, Dict

import numpy as np
import onnx

__all__ = ["describe"]

_GRAPH_ATTRS = (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)


def _dims(vi: onnx.ValueInfoProto):
    return [d.dim_param or (d.dim_value if d.HasField("dim_value") else "?")
            for d in vi.type.tensor_type.shape.dim]


def describe(model: onnx.ModelProto) -> Dict[str, Any]:
    """Opsets, op counts, weight storage, dynamic dims, input dtypes and subgraphs of ``model``."""
    g = model.graph
    inits = {i.name for i in g.initializer}
    inputs = [i for i in g.input if i.name not in inits]
    const_tensors = [a.t for n in g.node if n.op_type == "Constant" for a in n.attribute if a.name == "value"]
    big_consts = [t for t in const_tensors if int(np.prod(t.dims)) > 16]
    return {
        "ir_version": model.ir_version,
        "opsets": {o.domain or "ai.onnx": o.version for o in model.opset_import},
        "nodes": len(g.node),
        "ops": dict(Counter(n.op_type for n in g.node).most_common()),
        "initializers": len(g.initializer),
        "initializer_params": int(sum(np.prod(i.dims) for i in g.initializer)),
        "constant_nodes": sum(n.op_type == "Constant" for n in g.node),
        "constant_weight_tensors": len(big_consts),   # Constant nodes holding > 16 values
        "constant_params": int(sum(np.prod(t.dims) for t in big_consts)),
        "inputs": {i.name: {"dtype": onnx.helper.tensor_dtype_to_np_dtype(
            i.type.tensor_type.elem_type).name, "shape": _dims(i)} for i in inputs},
        "outputs": {o.name: _dims(o) for o in g.output},
        "subgraph_nodes": sorted({n.op_type for n in g.node
                                  if any(a.type in _GRAPH_ATTRS for a in n.attribute)}),
        "metadata_keys": [p.key for p in model.metadata_props],
    }
