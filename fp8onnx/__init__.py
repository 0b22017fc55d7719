"""fp8onnx: post-training FP8 quantization compiler for ONNX models."""
from . import formats
from .errors import Fp8OnnxError, PassError, PreconditionError, UserError

__version__ = "0.1.0"

__all__ = ["formats", "Fp8OnnxError", "UserError", "PreconditionError", "PassError", "__version__"]
