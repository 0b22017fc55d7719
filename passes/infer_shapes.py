"""InferShapes: fills ``value_info`` with the types and shapes ONNX shape inference finds.

    value_info: []   ->   value_info: [h: float[1,64], y: float[1,64], ...]

Runs ``onnx.shape_inference.infer_shapes(strict_mode=False, data_prop=True)`` on the
whole model, subgraphs included. Existing value_info is kept where inference has nothing
better; nothing else in the model changes. ``modified`` compares every graph's
value_info, inputs and outputs before and after.

Models above ``detach_bytes`` of tensor data (protobuf cannot serialise 2 GB) are
inferred with their large weights detached: inference needs only their types and dims,
and small tensors (Reshape shapes...) stay for data propagation. This avoids both the
2 GB limit and a temporary file holding every weight again.

Requires nothing. Example::

    InferShapes()(model)
    GraphIndex(model.graph).shape("conv1_out")   # (1, 64, 112, 112)
"""
from __future__ import annotations

import logging

import onnx
from onnx import shape_inference

from fp8onnx import graph as G
from fp8onnx import modelio
from fp8onnx.passinfra import Pass, PassResult

__all__ = ["InferShapes"]

log = logging.getLogger("fp8onnx.passes")


class InferShapes(Pass):
    """Adds inferred tensor types and shapes to every graph's ``value_info``."""

    def __init__(self, *, data_prop: bool = True, detach_bytes: int = 1_000_000_000) -> None:
        super().__init__()
        self.data_prop = data_prop
        self.detach_bytes = detach_bytes

    def call(self, model):
        before = _signature(model)
        stash = {}
        if modelio.tensor_bytes(model) > self.detach_bytes:
            stash = G.detach_tensor_data(model, 1 << 20)
        try:
            inferred = shape_inference.infer_shapes(model, strict_mode=False, data_prop=self.data_prop)
            model.CopyFrom(inferred)
            del inferred
        finally:
            if stash:
                G.attach_tensor_data(model, stash)
        after = _signature(model)
        return PassResult(model, after != before)


def _signature(model: onnx.ModelProto):
    """What inference may change: value_info, inputs and outputs of every graph."""
    return [
        tuple(v.SerializeToString(deterministic=True) for v in list(g.value_info) + list(g.input) + list(g.output))
        for g in G.iter_graphs(model.graph)
    ]
