"""fp8onnx: post-training FP8 quantization compiler for ONNX models.

>>> import fp8onnx
>>> q = fp8onnx.compile("model.onnx", calibration="calib.npz", format="e4m3")   # doctest: +SKIP

The pieces for tool authors: :mod:`fp8onnx.formats` (the format table and kernels),
:class:`Pass`, :class:`PassResult` and :class:`PassManager` (write your own passes),
:mod:`fp8onnx.passes` (the pass library), :mod:`fp8onnx.schemes` and :class:`Recipe`.
"""
import importlib.abc
import importlib.util
import os
import sys


def _map_source_tree_passes() -> None:
    # pyproject installs passes/ as fp8onnx.passes. Run from a source checkout (the
    # README's `python -m fp8onnx.compile` in the repository root), Python imports this
    # fp8onnx/ folder instead of the installed one, and passes/ sits beside it: map it.
    here = os.path.dirname(os.path.abspath(__file__))
    src = os.path.join(os.path.dirname(here), "passes")
    if os.path.isdir(os.path.join(here, "passes")) or not os.path.isfile(os.path.join(src, "__init__.py")):
        return

    class _SourceTreePasses(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name != "fp8onnx.passes":
                return None
            return importlib.util.spec_from_file_location(
                name, os.path.join(src, "__init__.py"), submodule_search_locations=[src])

    if not any(type(f).__name__ == "_SourceTreePasses" for f in sys.meta_path):
        sys.meta_path.insert(0, _SourceTreePasses())


_map_source_tree_passes()

from . import formats, schemes  # noqa: E402
from .api import compile_model, prepare  # noqa: E402
from .errors import Fp8OnnxError, PassError, PreconditionError, UserError
from .evaluation import EvalResult
from .passinfra import Pass, PassManager, PassResult
from .planner import plan_quantization
from .recipe import Recipe
from .surgeon import GraphSurgeonPass


def __getattr__(name):
    # compile, evaluate and tune are CLI modules and API calls at once: the modules are
    # callable (forwarding to the functions). Imported on first use rather than here, so
    # `python -m fp8onnx.compile` does not find its own module already imported (runpy
    # warns then); TuneResult lives in fp8onnx.tune, so it comes the same way.
    if name in ("compile", "evaluate", "tune"):
        import importlib

        return importlib.import_module(f".{name}", __name__)
    if name == "TuneResult":
        from .tune import TuneResult

        return TuneResult
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
