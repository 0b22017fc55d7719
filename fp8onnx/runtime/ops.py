"""The ``ai.fp8onnx`` custom-op domain: names, attributes, node builders and ONNX schemas.

The compiler emits these ops where ONNX has no type for a format (E3M4) or where a
fused fake-quant is wanted; :class:`fp8onnx.runtime.InferenceSession` runs them.

- ``FakeQuant(x: float32, scale: float32) -> float32``: ``dequantize(quantize(x))``.
  Attributes ``format`` (a name from :mod:`fp8onnx.formats`), ``axis`` (default 1,
  used when ``scale`` is 1-D with more than one element), ``saturate`` (default 1).
- ``Dequantize(codes: uint8, scale: float32) -> float32``; attributes ``format``, ``axis``.
  Codes are the format's bit patterns (INT8 codes as their uint8 view).
- ``Quantize(x: float32, scale: float32) -> uint8``; attributes ``format``, ``axis``,
  ``saturate``.

Semantics are ONNX QuantizeLinear/DequantizeLinear with zero point 0: division by the
scale, round to nearest even. A scalar or 1-element scale is per tensor.

>>> from fp8onnx.runtime import ops
>>> node = ops.make_fake_quant_node("x", "s", "y", format="e3m4")
>>> node.domain, node.op_type
('ai.fp8onnx', 'FakeQuant')
"""
from __future__ import annotations

import onnx
from onnx import helper

from .. import formats

__all__ = ["DOMAIN", "DOMAIN_VERSION", "FAKE_QUANT", "DEQUANTIZE", "QUANTIZE", "OP_TYPES",
           "ATTRIBUTE_DEFAULTS", "opset_import", "make_fake_quant_node", "make_dequantize_node",
           "make_quantize_node", "register_onnx_schemas"]

DOMAIN = "ai.fp8onnx"
DOMAIN_VERSION = 1
FAKE_QUANT = "FakeQuant"
DEQUANTIZE = "Dequantize"
QUANTIZE = "Quantize"
OP_TYPES = (FAKE_QUANT, DEQUANTIZE, QUANTIZE)
ATTRIBUTE_DEFAULTS = {"axis": 1, "saturate": 1}


def opset_import() -> onnx.OperatorSetIdProto:
    """The opset_import entry a model using these ops must list."""
    return helper.make_opsetid(DOMAIN, DOMAIN_VERSION)


def _check(fmt, axis, saturate):
    name = formats.get(fmt).name  # ValueError naming the choices for an unknown format
    if int(saturate) not in (0, 1):
        raise ValueError(f"saturate={saturate!r}: pass 0 or 1 (or a bool)")
    return name, int(axis), int(saturate)


def make_fake_quant_node(x, scale, output, *, format, axis=1, saturate=True, name=None):
    """A ``FakeQuant`` NodeProto ``output = FakeQuant(x, scale)``.

    >>> make_fake_quant_node("w", "w_scale", "w_fq", format="e4m3", axis=0).attribute[1].i
    0
    """
    fmt, axis, saturate = _check(format, axis, saturate)
    return helper.make_node(FAKE_QUANT, [x, scale], [output], name=name, domain=DOMAIN,
                            format=fmt, axis=axis, saturate=saturate)


def make_dequantize_node(codes, scale, output, *, format, axis=1, name=None):
    """A ``Dequantize`` NodeProto ``output = Dequantize(codes, scale)`` (codes uint8)."""
    fmt, axis, _ = _check(format, axis, 1)
    return helper.make_node(DEQUANTIZE, [codes, scale], [output], name=name, domain=DOMAIN,
                            format=fmt, axis=axis)


def make_quantize_node(x, scale, output, *, format, axis=1, saturate=True, name=None):
    """A ``Quantize`` NodeProto ``output = Quantize(x, scale)`` (uint8 codes)."""
    fmt, axis, saturate = _check(format, axis, saturate)
    return helper.make_node(QUANTIZE, [x, scale], [output], name=name, domain=DOMAIN,
                            format=fmt, axis=axis, saturate=saturate)


def _schema(op_type, in_type, out_type, doc, with_saturate):
    S = onnx.defs.OpSchema
    attrs = [S.Attribute("format", S.AttrType.STRING, "format name from fp8onnx.formats"),
             S.Attribute("axis", helper.make_attribute("axis", 1), "channel axis of a 1-D scale")]
    if with_saturate:
        attrs.append(S.Attribute("saturate", helper.make_attribute("saturate", 1),
                                 "clamp overflow to the largest finite value"))
    return S(
        op_type, DOMAIN, DOMAIN_VERSION, doc=doc,
        inputs=[S.FormalParameter("x", "T1"), S.FormalParameter("scale", "tensor(float)")],
        outputs=[S.FormalParameter("y", "T2")],
        type_constraints=[("T1", [in_type], "input type"), ("T2", [out_type], "output type")],
        attributes=attrs,
    )


_REGISTERED = []


def register_onnx_schemas() -> None:
    """Register the ops' schemas with onnx, so ``onnx.checker`` and shape inference check
    their inputs, attributes and types. Idempotent.

    >>> register_onnx_schemas()
    >>> onnx.defs.has(FAKE_QUANT, DOMAIN)
    True
    """
    if _REGISTERED:
        return
    for op_type, in_type, out_type, sat in (
        (FAKE_QUANT, "tensor(float)", "tensor(float)", True),
        (DEQUANTIZE, "tensor(uint8)", "tensor(float)", False),
        (QUANTIZE, "tensor(float)", "tensor(uint8)", True),
    ):
        if not onnx.defs.has(op_type, DOMAIN):
            onnx.defs.register_schema(_schema(op_type, in_type, out_type,
                                              f"fp8onnx {op_type}; see fp8onnx.runtime.ops", sat))
    _REGISTERED.append(True)

