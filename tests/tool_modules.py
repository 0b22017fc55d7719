"""Import a script of tools/ by file path, as the tools import each other.

tools/ never goes on sys.path: a script there must not shadow an installed package
(Numba imports ``coverage``, for one).
"""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

TOOLS = Path(__file__).resolve().parents[1] / "tools"


def load(name: str):
    """tools/<name>.py as the module ``fp8onnx_tools_<name>`` (loaded once)."""
    key = f"fp8onnx_tools_{name}"
    if key not in sys.modules:
        spec = importlib.util.spec_from_file_location(key, TOOLS / f"{name}.py")
        sys.modules[key] = module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    return sys.modules[key]
