"""The peer: onnxruntime's own static FP8 quantizer, run the way its users run it.

``quantize_static`` with ``QuantType.QFLOAT8E4M3FN`` for weights and activations,
``QuantFormat.QDQ`` and ``CalibrationMethod.Distribution`` (the only range method
onnxruntime accepts for float types: MinMax/Entropy/Percentile raise). Two variants:

- ``default``: no ``extra_options``, what the documentation's example does. onnxruntime's
  QDQ quantizer then removes every Relu/Clip whose input is quantized
  (``QDQRemovableActivation``: "the Q of the output clips anyway"), which only holds
  for asymmetric unsigned types; FP8 is symmetric, so negative values pass through.
- ``sym``: ``extra_options={"ActivationSymmetric": True}``, which keeps those
  activations (the informed user's setting).

Each quantized model is scored twice: in a default onnxruntime session (what a user
gets) and with onnxruntime's FP8-unsafe CPU rewrites disabled (``zoo.ORT_FP8_UNSAFE``).

    >>> q = quantize_peer(entry.load(), list(entry.calib_feeds(32)), variant="sym")  # doctest: +SKIP
    >>> entry.evaluate(q, session_factory=default_session)                        # doctest: +SKIP
"""
from __future__ import annotations

import os
import tempfile
from typing import Dict, Iterable, List

import numpy as np
import onnx

__all__ = ["VARIANTS", "quantize_peer", "default_session", "safe_session", "peer_options"]

VARIANTS = ("default", "sym")


def peer_options(variant: str) -> Dict:
    """The keyword arguments given to ``quantize_static`` for ``variant``."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType

    if variant not in VARIANTS:
        raise ValueError(f"peer variant must be one of {VARIANTS}, got {variant!r}")
    opts = dict(quant_format=QuantFormat.QDQ, activation_type=QuantType.QFLOAT8E4M3FN,
                weight_type=QuantType.QFLOAT8E4M3FN, calibrate_method=CalibrationMethod.Distribution)
    if variant == "sym":
        opts["extra_options"] = {"ActivationSymmetric": True}
    return opts


class _Reader:
    """An onnxruntime CalibrationDataReader over a list of feed dicts."""

    def __init__(self, feeds: List[Dict[str, np.ndarray]]):
        self._feeds = feeds
        self._it = iter(feeds)

    def get_next(self):
        return next(self._it, None)

    def rewind(self):
        self._it = iter(self._feeds)


def quantize_peer(model: onnx.ModelProto, calib: Iterable[Dict[str, np.ndarray]], *,
                  variant: str = "default") -> bytes:
    """onnxruntime's static FP8 E4M3 quantization of ``model``; returns the model bytes.

    The model goes through files (quantize_static's interface) in a temporary folder,
    removed afterwards; models over 2 GB use external data.
    """
    from onnxruntime.quantization import CalibrationDataReader, quantize_static

    reader = type("PeerReader", (_Reader, CalibrationDataReader), {})(list(calib))
    big = model.ByteSize() > 1_800_000_000
    with tempfile.TemporaryDirectory(prefix="peer_ort_") as tmp:
        src, dst = os.path.join(tmp, "fp32.onnx"), os.path.join(tmp, "peer.onnx")
        onnx.save(model, src, save_as_external_data=big)
        quantize_static(src, dst, reader, use_external_data_format=big, **peer_options(variant))
        if big:
            q = onnx.load(dst)
            return q.SerializeToString()
        with open(dst, "rb") as f:
            return f.read()


def default_session(model: bytes):
    """onnxruntime on CPU with its default options: what a user runs."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    return ort.InferenceSession(model, sess_options=opts, providers=["CPUExecutionProvider"])


def safe_session(model: bytes):
    """onnxruntime on CPU without its FP8-unsafe rewrites (the zoo's default session)."""
    from fp8onnx.zoo import ort_session

    return ort_session(model)
