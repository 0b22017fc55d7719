"""fp8onnx: post-training FP8 quantization compiler for ONNX models.

>>> import fp8onnx
>>> q = fp8onnx.compile("model.onnx", calibration="calib.npz", format="e4m3")   # doctest: +SKIP

The pieces for tool authors: :mod:`fp8onnx.formats` (the format table and kernels),
:class:`Pass`, :class:`PassResult` and :class:`PassManager` (write your own passes),
:mod:`fp8onnx.passes` (the pass library), :mod:`fp8onnx.schemes` and :class:`Recipe`.
"""
from . import formats, schemes
from .api import compile_model, prepare
from .errors import Fp8OnnxError, PassError, PreconditionError, UserError
from .evaluation import EvalResult
from .passinfra import Pass, PassManager, PassResult
from .planner import plan_quantization
from .recipe import Recipe
from .surgeon import GraphSurgeonPass
from .tune import TuneResult


def __getattr__(name):
    # compile, evaluate and tune are CLI modules and API calls at once: the modules are
    # callable (forwarding to the functions). Imported on first use rather than here, so
    # `python -m fp8onnx.compile` does not find its own module already imported.
    if name in ("compile", "evaluate", "tune"):
        import importlib

        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

__version__ = "0.1.0"

__all__ = [
    "compile",
    "compile_model",
    "prepare",
    "plan_quantization",
    "evaluate",
    "EvalResult",
    "tune",
    "TuneResult",
    "formats",
    "schemes",
    "Recipe",
    "Pass",
    "PassResult",
    "PassManager",
    "GraphSurgeonPass",
    "Fp8OnnxError",
    "UserError",
    "PreconditionError",
    "PassError",
    "__version__",
]
