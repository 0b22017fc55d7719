"""Run fp8onnx models: the ``ai.fp8onnx`` custom ops inside ONNX Runtime, at native speed.

:class:`InferenceSession` is an ONNX Runtime session (through ONNX Runtime's C API) with
the ``FakeQuant``, ``Dequantize`` and ``Quantize`` ops of :mod:`fp8onnx.runtime.ops`
registered; their kernels are Numba ``@cfunc``s compiled on first use. ``import
fp8onnx.runtime`` loads and compiles nothing.

>>> from fp8onnx.runtime import InferenceSession, ops
>>> ops.DOMAIN
'ai.fp8onnx'
"""
from . import ops
from ._capi import ORT_API_VERSION, OrtError, OrtUnavailableError, OrtUserError
from .ops import (DEQUANTIZE, DOMAIN, FAKE_QUANT, QUANTIZE, make_dequantize_node,
                  make_fake_quant_node, make_quantize_node, opset_import, register_onnx_schemas)
from .fold import fold_constant_ops
from .session import FP8_UNSAFE_OPTIMIZERS, InferenceSession, ModelMetadata, NodeArg

__all__ = ["InferenceSession", "NodeArg", "ModelMetadata", "OrtError", "OrtUserError",
           "OrtUnavailableError", "ORT_API_VERSION", "ops", "DOMAIN", "FAKE_QUANT", "DEQUANTIZE",
           "QUANTIZE", "make_fake_quant_node", "make_dequantize_node", "make_quantize_node",
           "opset_import", "register_onnx_schemas", "fold_constant_ops", "FP8_UNSAFE_OPTIMIZERS"]
