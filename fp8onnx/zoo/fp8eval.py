"""Compile a zoo entry with fp8onnx and measure the relative loss of its task metric.

    >>> from fp8onnx import zoo
    >>> r = fp8_vs_fp32(zoo.get("digits_cnn"), format="e4m3")
    >>> round(r["fp32"], 4), round(r["fp8"], 4), round(r["relative_loss"], 4)
    (0.9956, 0.9933, 0.0022)

Calibration uses the entry's ``calib_feeds`` and evaluation its ``eval_feeds`` (disjoint
real data). A model holding ``ai.fp8onnx`` custom ops runs in fp8onnx's runtime
session; a plain Q/DQ model runs in onnxruntime without its FP8-unsafe rewrites.
"""
from __future__ import annotations

import time
from typing import Any, Dict, Optional

import onnx

from .base import ZooEntry, relative_loss

__all__ = ["fp8_vs_fp32", "session_for"]


def session_for(model: onnx.ModelProto):
    """Session factory fit for ``model``: :func:`fp8onnx.evaluation.data.session_for`, which
    picks fp8onnx's runtime for ai.fp8onnx ops anywhere (If/Loop subgraphs included:
    silero_vad's ops all sit in If branches), runs native FP8 Q/DQ on the fused kernels
    (mixed models too) and onnxruntime otherwise; ``model`` is not needed to choose."""
    from ..evaluation.data import session_for as evaluation_session

    return evaluation_session


def fp8_vs_fp32(entry: ZooEntry, *, calib_n: int = 32, eval_n: Optional[int] = None,
                **compile_options: Any) -> Dict[str, Any]:
    """FP32 and FP8 metric of ``entry``, relative loss and timings (``compile_options``
    go to ``fp8onnx.compile``, e.g. ``format="e3m4"``, ``scheme="extended"``)."""
    from ..api import compile as fp8_compile

    fp32 = entry.evaluate(n=eval_n)
    t0 = time.perf_counter()
    quantized = fp8_compile(entry.load(), calibration=list(entry.calib_feeds(calib_n)),
                            **{**entry.compile_options, **compile_options})
    t_compile = time.perf_counter() - t0
    t0 = time.perf_counter()
    fp8 = entry.evaluate(quantized, n=eval_n, session_factory=session_for(quantized))
    return {"entry": entry.name, "fp32": fp32, "fp8": fp8,
            "relative_loss": relative_loss(fp32, fp8) if fp32 else float("nan"),
            "compile_s": t_compile, "eval_s": time.perf_counter() - t0,
            "details": dict(entry.last_details), "options": compile_options}
