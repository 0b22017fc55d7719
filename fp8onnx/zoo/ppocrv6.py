"""PP-OCRv6 small text-line recogniser from the ``rapidocr`` wheel (3.x), on rendered prose.

``rapidocr`` 3.10 ships ``models/PP-OCRv6_rec_small.onnx`` (PaddleOCR's PP-OCRv6 small
rec, exported at opset 11, about 5.3 M weights): 57 Convs (a PP-LCNet-style CNN with
HardSigmoid squeeze-excitation) followed by two SVTR attention blocks (LayerNorm as
ReduceMean/Pow/Sqrt, MatMul + Softmax attention, Erf GELU) and a MatMul head to 18710 CTC
classes. Input ``x`` float32 [N, 3, 48, W]; output [N, W/8, 18710] softmax scores. The
character list is the ``character`` entry of the model's metadata (18708 lines); as in
rapidocr's ``CTCLabelDecode``, index 0 is the CTC blank and the last class is the space.

Everything but the model file follows the ``ppocr_rec`` entry (``ocr.py``): the same
rendered lines of CPython's documentation prose, the same calibration/evaluation
paragraphs, the same metric (character accuracy against the rendered string) and the
same CTC greedy decoder, which equals rapidocr 3.10's (argmax, merge repeats, drop the
blank), and the same input rule (``ocr.rec_input``: rapidocr's ``resize_norm_img`` for a
batch of one, the floored width for lines wider than 320 columns). A test checks our feeds
equal ``resize_norm_img``'s and our text equals ``TextRecognizer``'s.

Example::

    >>> from fp8onnx.zoo.ppocrv6 import PpOcrV6RecEntry
    >>> PpOcrV6RecEntry().evaluate(n=4) > 0.9           # doctest: +SKIP
    True
"""
from __future__ import annotations

from typing import Iterator

import numpy as np
import onnx

from . import prose
from .base import Feeds, package_file
from .ocr import LINE_WIDTH, OcrRecEntry, rec_input, render_line

__all__ = ["PpOcrV6RecEntry", "preprocess", "ppocrv6_entries"]

HINT = "rapidocr (pip install rapidocr)"
# cv2 and PIL: rapidocr depends on opencv-python-headless and Pillow, so its hint covers them.
REQUIRES = (("rapidocr", HINT), ("cv2", HINT), ("PIL", HINT))
FILENAME = "PP-OCRv6_rec_small.onnx"
HEIGHT = 48
MIN_WIDTH = 320          # rapidocr's default rec_img_shape (3, 48, 320)


def preprocess(img: np.ndarray) -> np.ndarray:
    """One RGB uint8 line crop -> float32 [1, 3, 48, W], as rapidocr 3.10 prepares a batch
    of one (:func:`fp8onnx.zoo.ocr.rec_input`: its rule is rapidocr-onnxruntime's too)."""
    return rec_input(img, HEIGHT, MIN_WIDTH)


class PpOcrV6RecEntry(OcrRecEntry):
    """PP-OCRv6 small text-line recogniser (CNN + SVTR attention, 18710 classes);
    metric: character accuracy against the rendered line."""

    name = "ppocrv6_rec"
    domain, family = "cv", "transformer"  # CNN backbone with two SVTR attention blocks
    source = "rapidocr (PaddleOCR PP-OCRv6 small rec ONNX export, package folder models/)"
    install_hint = "pip install rapidocr"
    requires = REQUIRES
    filename = FILENAME
    default_eval_n = 24

    def _load(self) -> onnx.ModelProto:
        return onnx.load(package_file("rapidocr", "models", self.filename, hint=HINT))

    def _feeds(self, split: str, n: int) -> Iterator[Feeds]:
        # calib_feeds / eval_feeds / _evaluate are ppocr_rec's: they call this.
        inp, _ = self.io_names()
        for text in prose.lines(split, n, LINE_WIDTH):
            yield {inp: preprocess(render_line(text))}


def ppocrv6_entries():
    return [PpOcrV6RecEntry()]
