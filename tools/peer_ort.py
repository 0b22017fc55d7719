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
from typing import Dict, Iterable, List, Optional, Tuple

import numpy as np
import onnx

__all__ = ["VARIANTS", "quantize_peer", "uniform_feeds", "default_session", "safe_session", "peer_options"]

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


def uniform_feeds(feeds: List[Dict[str, np.ndarray]]) -> Tuple[List[Dict[str, np.ndarray]], str]:
    """Feeds of one shape, as onnxruntime's calibrator needs (it stacks every intermediate
    output of every feed with ``np.array``, which fails on ragged shapes).

    Batches of different sizes are split into single samples; inputs whose other dims
    still differ (token sequences, text-line widths) are zero-padded at the end to the
    largest shape (for token inputs that is padding with ``attention_mask`` 0). Returns
    the feeds and a note saying what was changed ("" if nothing).
    """
    shapes = {tuple((k, v.shape) for k, v in sorted(f.items())) for f in feeds}
    if len(shapes) <= 1:
        return feeds, ""
    notes = []
    if len({tuple(v.shape[:1] for v in f.values()) for f in feeds}) > 1:
        feeds = [single for f in feeds for single in _split_batch(f)]
        notes.append("batches split into single samples")
    if len({tuple((k, v.shape) for k, v in sorted(f.items())) for f in feeds}) > 1:
        top = {k: np.max([f[k].shape for f in feeds], axis=0) for k in feeds[0]}
        feeds = [{k: np.pad(v, [(0, int(t) - d) for t, d in zip(top[k], v.shape)]) for k, v in f.items()}
                 for f in feeds]
        notes.append("zero-padded to one shape " + ", ".join(f"{k} {tuple(int(x) for x in t)}" for k, t in top.items()))
    return feeds, "; ".join(notes)


def _split_batch(feed: Dict[str, np.ndarray]) -> List[Dict[str, np.ndarray]]:
    """One feed per sample. The batch size is the first dim of the first input that has
    dims; each input is cut along its first axis of that size (a recurrent state laid out
    [layers, batch, hidden] is cut on axis 1); scalars and inputs without such an axis
    (a sample rate) go to every sample unchanged."""
    batch = next(v.shape[0] for v in feed.values() if v.ndim)
    axes = {k: next((a for a, d in enumerate(v.shape) if d == batch), None) for k, v in feed.items()}
    return [{k: v if axes[k] is None else np.take(v, [i], axis=axes[k]) for k, v in feed.items()}
            for i in range(batch)]


def quantize_peer(model: onnx.ModelProto, calib: Iterable[Dict[str, np.ndarray]], *,
                  variant: str = "default", notes: Optional[list] = None) -> bytes:
    """onnxruntime's static FP8 E4M3 quantization of ``model``; returns the model bytes.

    The calibration feeds are made uniform first (:func:`uniform_feeds`; what was done is
    appended to ``notes``). The model goes through files (quantize_static's interface) in
    a temporary folder, removed afterwards; models over 2 GB use external data.
    """
    from onnxruntime.quantization import CalibrationDataReader, quantize_static

    feeds, note = uniform_feeds(list(calib))
    if note and notes is not None:
        notes.append(note)
    reader = type("PeerReader", (_Reader, CalibrationDataReader), {})(feeds)
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
    """onnxruntime on CPU without its FP8-unsafe rewrites, on its own Q/DQ kernels: the
    peer's model as deployed (the zoo's default session would run fp8onnx's fused ones)."""
    from fp8onnx.zoo import ort_session

    return ort_session(model, ort_qdq=True)
