"""Write each quantized tensor's evaluation figures into its nodes' doc strings (for Netron).

Netron shows a node's doc string in its sidebar, so opening the annotated FP8 model shows
next to every inserted Q, DQ or FakeQuant node its SQNR, saturation and amax.

>>> annotated = annotate_model(fp8_model, result)   # doctest: +SKIP
"""
from __future__ import annotations

import onnx

__all__ = ["annotate_model", "MARK"]

MARK = "fp8onnx eval:"


def annotate_model(model: onnx.ModelProto, result) -> onnx.ModelProto:
    """A copy of ``model`` with ``MARK`` lines appended to the inserted nodes' doc strings.

    A previous annotation is replaced, so annotating twice gives the same model.
    """
    m = onnx.ModelProto()
    m.CopyFrom(model)
    producer = {o: n for n in m.graph.node for o in n.output}
    for layer in result.layers:
        node = producer.get(layer.name)
        if node is None:
            continue
        nodes = [node]
        if node.op_type == "DequantizeLinear" and layer.kind == "activation":
            q = producer.get(node.input[0])
            if q is not None and q.op_type == "QuantizeLinear":
                nodes.append(q)
        line = f"{MARK} {layer.summary()}" + (f" ({layer.note})" if layer.note else "")
        for n in nodes:
            kept = [x for x in n.doc_string.split("\n") if x and not x.startswith(MARK)]
            n.doc_string = "\n".join(kept + [line])
    return m
