"""FP32-vs-FP8 evaluation: output fidelity, the task metric and per-layer sensitivity.

:func:`evaluate` is the entry point (also ``fp8onnx.evaluate``); :mod:`.stats` holds
the streaming accumulators, :mod:`.data` the session factory and data handling,
:mod:`.result` the result records, :mod:`.html` and :mod:`.annotate` the reports.
"""
from .core import PerSample, evaluate, node_pattern, tensor_map
from .data import ORT_FP8_UNSAFE, session_for
from .result import TOP1_RULE, EvalResult, LayerFigures, OutputFidelity, within_loss
from .stats import ErrorStats, cosine, sqnr_db

__all__ = ["evaluate", "EvalResult", "LayerFigures", "OutputFidelity", "PerSample", "session_for",
           "tensor_map", "node_pattern", "sqnr_db", "cosine", "ErrorStats", "TOP1_RULE", "ORT_FP8_UNSAFE",
           "within_loss"]
