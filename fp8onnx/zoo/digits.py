"""Zoo entries for the bundled digits models (models/, sklearn handwritten digits).

Metric: top-1 accuracy against the true labels of the held-out test split::

    >>> from fp8onnx import zoo
    >>> round(zoo.get("digits_cnn").evaluate(n=450), 3)
    0.996
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

import numpy as np
import onnx

from .base import Feeds, ZooEntry, ZooSkip

__all__ = ["DigitsEntry", "models_dir"]


def models_dir() -> Path:
    """The bundled models/ folder: $FP8ONNX_MODELS, else the source checkout's, else ./models."""
    if os.environ.get("FP8ONNX_MODELS"):
        return Path(os.environ["FP8ONNX_MODELS"])
    here = Path(__file__).resolve().parents[2] / "models"
    return here if here.is_dir() else Path.cwd() / "models"


class DigitsEntry(ZooEntry):
    """A bundled digits model; calib = models/data/digits_calib.npz (training split),
    eval = models/data/digits_test.npz (test split, with labels)."""

    domain = "cv"
    source = "bundled: models/ (trained by models/make_models.py on sklearn digits)"
    metric_name = "top-1 accuracy"
    default_eval_n = 450
    batch = 64

    def __init__(self, name: str, family: str):
        super().__init__()
        self.name, self.family = name, family

    def _path(self, rel: str) -> Path:
        path = models_dir() / rel
        if not path.exists():
            raise ZooSkip(f"skipped: {path} is missing; run `python models/make_models.py` "
                          "from a source checkout")
        return path

    def check_available(self) -> None:
        self._path(f"{self.name}.onnx")

    def _load(self) -> onnx.ModelProto:
        return onnx.load(self._path(f"{self.name}.onnx"))

    def _arrays(self, split: str):
        with np.load(self._path(f"data/digits_{split}.npz")) as z:
            return {k: z[k] for k in z.files}

    def _batches(self, x: np.ndarray, n: int) -> Iterator[Feeds]:
        x = x[:n]
        for i in range(0, len(x), self.batch):
            yield {"input": x[i:i + self.batch]}

    def calib_feeds(self, n: int) -> Iterator[Feeds]:
        """Batches of 64 training-split images, ``n`` images in all (at most 256)."""
        return self._batches(self._arrays("calib")["input"], n)

    def eval_feeds(self, n: int) -> Iterator[Feeds]:
        """Batches of 64 test-split images, ``n`` images in all (at most 450)."""
        return self._batches(self._arrays("test")["input"], n)

    def eval_labels(self, n: int) -> np.ndarray:
        return self._arrays("test")["label"][:n]

    def _predict(self, session, n: int) -> np.ndarray:
        return np.concatenate([session.run(["logits"], f)[0].argmax(axis=1) for f in self.split_feeds(n)])

    def _evaluate(self, session, n: int) -> float:
        preds = self._predict(session, n)
        if self.split == "calib":  # the training split is stored without labels: agreement with FP32
            return float((preds == self._fp32_reference(("top1", n), lambda s: self._predict(s, n))).mean())
        return float((preds == self.eval_labels(n)).mean())


def digits_entries():
    return [DigitsEntry("digits_cnn", "cnn"), DigitsEntry("digits_cnn_bnfold", "cnn"),
            DigitsEntry("digits_mlp", "mlp")]
