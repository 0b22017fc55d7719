"""InferShapes: fills ``value_info`` with the types and shapes ONNX shape inference finds.

    value_info: []   ->   value_info: [h: float[1,64], y: float[1,64], ...]

Runs ``onnx.shape_inference.infer_shapes(strict_mode=False, data_prop=True)`` on the
whole model, subgraphs included. Existing value_info is kept where inference has nothing
better; nothing else in the model changes. ``modified`` compares every graph's
value_info, inputs and outputs before and after.

Models above ``detach_bytes`` of tensor data are inferred on a copy whose weights of
1 MiB or more are stubs (type and dims only; small tensors such as Reshape shapes stay
for data propagation): no second copy of the weights in memory, no temporary file, and
no trouble with protobuf's 2 GB limit. Only value_info, inputs and outputs are copied
back into the model.

Data propagation treats every 1-D tensor as a possible shape and builds one dimension
object per element: on a 1-D tensor of 25 M elements onnx 1.23 took 3.4 GB and 7 s for a
single Add (``Add(x, x)``, x float[25000000]). So inference first runs without it, and
data propagation follows only when no 1-D tensor is longer than ``data_prop_max_len``
(logged otherwise).

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
from fp8onnx.errors import UserError
from fp8onnx.passinfra import Pass, PassResult

__all__ = ["InferShapes"]

log = logging.getLogger("fp8onnx.passes")


class InferShapes(Pass):
    """Adds inferred tensor types and shapes to every graph's ``value_info``."""

    def __init__(self, *, data_prop: bool = True, detach_bytes: int = 64 << 20,
                 data_prop_max_len: int = 65536) -> None:
        super().__init__()
        self.data_prop = data_prop
        self.detach_bytes = detach_bytes
        self.data_prop_max_len = data_prop_max_len

    def call(self, model):
        before = _signature(model)
        # Inference needs only types and dims: above detach_bytes it runs on a copy without
        # the large weights; only the shape information is copied back.
        source = G.weightless_copy(model) if modelio.tensor_bytes(model) > self.detach_bytes else model
        # Not strict, inference keeps a declared output shape that contradicts the graph
        # (ddddocr declares [1, seqlen] for a [steps, 1, 8210] output), and the compiled
        # model would then fail the full check. So outputs are inferred free of their
        # declarations and reconciled below.
        declared = [onnx.TypeProto.FromString(o.type.SerializeToString()) for o in source.graph.output]
        for o in source.graph.output:
            if o.type.HasField("tensor_type"):
                o.type.tensor_type.ClearField("shape")
        try:
            inferred = shape_inference.infer_shapes(source, strict_mode=False, data_prop=False)
            if self.data_prop:
                length, name = _longest_vector(inferred)
                if length <= self.data_prop_max_len:
                    inferred = shape_inference.infer_shapes(source, strict_mode=False, data_prop=True)
                else:
                    log.info("shape inference without data propagation: 1-D tensor %r has %d elements", name, length)
        except (shape_inference.InferenceError, onnx.checker.ValidationError, RuntimeError) as e:
            reason = " ".join(str(e).split())[:200]
            raise UserError(
                f"ONNX shape inference failed on the model ({reason}); the model is inconsistent: "
                "check it with onnx.checker.check_model(model, full_check=True) and re-export it"
            ) from e
        finally:
            for o, t in zip(source.graph.output, declared):
                o.type.CopyFrom(t)
        for o, t in zip(inferred.graph.output, declared):
            _reconcile(o, t)
        del source
        G.copy_shape_info(model, inferred)
        del inferred
        after = _signature(model)
        return PassResult(model, after != before)


def _reconcile(out: onnx.ValueInfoProto, declared: onnx.TypeProto) -> None:
    """The output's declared type, its unknown dims filled from inference; what inference
    computed instead where the declaration contradicts it (a different rank or size)."""
    if not (declared.HasField("tensor_type") and declared.tensor_type.HasField("shape")):
        return  # nothing declared: inference fills it in, as it always did
    got = out.type.tensor_type
    want = declared.tensor_type.shape.dim
    if got.HasField("shape") and (len(got.shape.dim) != len(want) or any(
            a.dim_value and b.dim_value and a.dim_value != b.dim_value
            for a, b in zip(want, got.shape.dim))):
        log.warning("output %r is declared %s but the graph computes %s: the compiled model "
                    "declares what the graph computes", out.name, _dims(want), _dims(got.shape.dim))
        return
    inferred = list(got.shape.dim) if got.HasField("shape") else []
    out.type.CopyFrom(declared)
    for d, i in zip(out.type.tensor_type.shape.dim, inferred):
        if not d.dim_value and not d.dim_param:
            d.CopyFrom(i)


def _dims(dims) -> str:
    return "[" + ", ".join(str(d.dim_value) if d.dim_value else (d.dim_param or "?") for d in dims) + "]"


def _longest_vector(model: onnx.ModelProto):
    """(length, name) of the longest 1-D tensor of known length, in any graph."""
    best = (0, "")
    for g in G.iter_graphs(model.graph):
        for t in g.initializer:
            if len(t.dims) == 1 and t.dims[0] > best[0]:
                best = (t.dims[0], t.name)
        for v in list(g.input) + list(g.value_info) + list(g.output):
            dims = v.type.tensor_type.shape.dim if v.type.HasField("tensor_type") else ()
            if len(dims) == 1 and dims[0].dim_value > best[0]:
                best = (dims[0].dim_value, v.name)
    return best


def _signature(model: onnx.ModelProto):
    """What inference may change: value_info, inputs and outputs of every graph."""
    return [
        tuple(v.SerializeToString(deterministic=True) for v in list(g.value_info) + list(g.input) + list(g.output))
        for g in G.iter_graphs(model.graph)
    ]
