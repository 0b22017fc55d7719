"""ddddocr's text recogniser (``common.onnx``, its ``beta=True`` model) on rendered words.

The ``ddddocr`` wheel ships two recognisers trained on captchas: ``common_old.onnx`` (the
default), which is already INT8 (ConvInteger, DynamicQuantizeLSTM, MatMulInteger: not an
FP32 model to quantize), and ``common.onnx``, the same CRNN in float32: 21 Convs (a
CNN with SiLU activations as Sigmoid + Mul) -> a bidirectional LSTM (hidden 512) -> Gemm
to 8210 classes (CTC; index 0 is blank), exported by PyTorch 1.9 at opset 12. Input
``input1`` float32 [1, 1, 64, width]: the image resized to height 64 keeping its aspect
ratio (Pillow's LANCZOS), grey, scaled to [0, 1]; output ``387`` float32 [steps, 1, 8210].
Our pre/post-processing follows ddddocr's ``OCREngine`` (resize, grey, greedy CTC
decoding with the charset of ``CharsetManager.load_default_charset(beta=True)``); a test
checks our FP32 text against ``DdddOcr(beta=True).classification``.

Real input: the words of CPython's documentation prose (``prose.py``), their letters and
digits (the captcha model reads no spaces and little punctuation), each distinct word
once, in order of appearance, rendered by PIL as the PP-OCR entries render lines
(``ocr.render_line``: DejaVu Sans, black on white). A word goes to ``calib`` or
``eval`` by a CRC of the word itself, so no word is in both splits.

Metric: character accuracy against the rendered word over the whole split, 1 - (sum of
edit distances) / (sum of max(len(read), len(word))); ``last_details`` holds
``word_accuracy`` (words read exactly) and ``fp32_agreement`` (words read as FP32 reads
them)::

    >>> fp8onnx.zoo.get("ddddocr_rec").evaluate()      # doctest: +SKIP
    0.97...
"""
from __future__ import annotations

import re
import zlib
from functools import lru_cache
from typing import Iterator, List, Sequence, Tuple

import numpy as np
import onnx

from . import prose
from .base import Feeds, ZooEntry, check_split, package_file, require
from .ocr import edit_distance, render_line

__all__ = ["DdddOcrEntry", "words", "preprocess", "ctc_decode", "dddd_entries"]

HINT = "ddddocr (pip install ddddocr)"
HEIGHT = 64
CLASSES = 8210
_TOKEN = re.compile(r"[A-Za-z0-9]+")


def split_of(word: str) -> str:
    return "eval" if zlib.crc32(word.encode()) % 2 else "calib"


@lru_cache(maxsize=2)
def _words(split: str) -> Tuple[str, ...]:
    seen = dict()
    for s in ("calib", "eval"):         # all prose; the word's own CRC picks its split
        for para in prose.paragraphs(s):
            for w in _TOKEN.findall(para):
                seen.setdefault(w, None)
    return tuple(w for w in seen if split_of(w) == split)


def words(split: str, n: int) -> List[str]:
    """The first ``n`` distinct words (letters and digits) of ``split``."""
    check_split(split)
    return list(_words(split)[:n])


def preprocess(image: np.ndarray) -> np.ndarray:
    """RGB uint8 H x W x 3 -> float32 [1, 1, 64, W'] as ddddocr's OCREngine prepares it."""
    from PIL import Image

    img = Image.fromarray(image)
    width = int(img.size[0] * (HEIGHT / img.size[1]))
    grey = img.resize((width, HEIGHT), Image.LANCZOS).convert("L")
    return (np.asarray(grey, np.float32) / 255.0)[None, None]


def ctc_decode(scores: np.ndarray, charset: Sequence[str]) -> str:
    """Greedy CTC: argmax per step, repeats collapsed, blank (0) dropped; scores [T, 1, C]."""
    best = scores.reshape(scores.shape[0], -1).argmax(axis=1)
    keep = (best != 0) & np.concatenate([[True], best[1:] != best[:-1]])
    return "".join(charset[i] for i in best[keep] if i < len(charset))


class DdddOcrEntry(ZooEntry):
    """ddddocr's float CRNN (common.onnx); metric: character accuracy on rendered words."""

    name = "ddddocr_rec"
    domain, family = "cv", "rnn"     # CNN feature extractor feeding a BiLSTM
    source = "ddddocr (package file ddddocr/common.onnx, the beta model)"
    install_hint = "pip install ddddocr"
    metric_name = "character accuracy vs rendered words"
    default_eval_n = 300             # words: ~1900 characters
    requires = (("PIL", HINT),)

    def check_available(self) -> None:
        super().check_available()
        package_file("ddddocr", "common.onnx", hint=HINT)

    def _load(self) -> onnx.ModelProto:
        model = onnx.load(package_file("ddddocr", "common.onnx", hint=HINT))
        # The export declares the output [1, seqlen]; it is [steps, 1, classes], and a
        # full shape check (which every compile runs) rejects the mismatch.
        out = model.graph.output[0].type.tensor_type.shape
        del out.dim[:]
        for dim in ("steps", 1, CLASSES):
            d = out.dim.add()
            if isinstance(dim, str):
                d.dim_param = dim
            else:
                d.dim_value = dim
        onnx.checker.check_model(model, full_check=True)
        return model

    def charset(self) -> List[str]:
        if "charset" not in self._ref_cache:
            manager = require("ddddocr.models.charset_manager", HINT).CharsetManager()
            manager.load_default_charset(beta=True)
            self._ref_cache["charset"] = list(manager.get_charset())
        return self._ref_cache["charset"]

    def _feeds(self, split: str, n: int) -> Iterator[Feeds]:
        self.check_available()
        for w in words(split, n):
            yield {"input1": preprocess(render_line(w))}   # widths differ: one word per feed

    def calib_feeds(self, n: int) -> Iterator[Feeds]:
        """``n`` calibration words, one per feed (1 x 1 x 64 x W)."""
        return self._feeds("calib", n)

    def eval_feeds(self, n: int) -> Iterator[Feeds]:
        return self._feeds("eval", n)

    def read(self, session, split: str, n: int) -> List[str]:
        """The text ``session``'s model reads in each of the first ``n`` words of ``split``."""
        charset = self.charset()
        return [ctc_decode(session.run(None, f)[0], charset) for f in self._feeds(split, n)]

    def _evaluate(self, session, n: int) -> float:
        truth = words(self.split, n)
        ref = self._fp32_reference(("text", n), lambda s: self.read(s, self.split, n))
        got = self.read(session, self.split, n)
        errors = sum(edit_distance(g, t) for g, t in zip(got, truth))
        total = sum(max(len(g), len(t)) for g, t in zip(got, truth))
        self.last_details = {"word_accuracy": float(np.mean([g == t for g, t in zip(got, truth)])),
                             "fp32_agreement": float(np.mean([g == r for g, r in zip(got, ref)]))}
        return 1.0 - errors / total


def dddd_entries():
    return [DdddOcrEntry()]
