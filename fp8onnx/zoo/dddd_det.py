"""ddddocr's click-captcha character detector (``ddddocr/common_det.onnx``, what
``DdddOcr(det=True)`` runs) on real photos with characters drawn on them.

The model is a YOLOX-style detector: 83 Conv layers with SiLU (as Sigmoid and Mul), an
input of [1, 3, 416, 416] BGR pixels in 0-255, letterboxed with grey 114, and one output
[1, 3549, 6] of (cx, cy, w, h, objectness, class score) on strides 8, 16 and 32.

The pipeline is ddddocr's ``DetectionEngine.get_bbox`` in numpy (a test checks it against
ddddocr itself): decode the grid, score = objectness x class score, keep scores above 0.1,
greedy NMS at IoU 0.45, clip to the image. Images are drawn at 416 x 416, so the letterbox
is the identity and no resampling differs between the two.

Real input: 416 x 416 crops of the photos in the scikit-image wheel (calibration and
evaluation photos disjoint), each with 3-6 letters or digits drawn on it the way click
captchas draw them: DejaVu faces from matplotlib's fonts, 30-60 px, a random colour, an
outline of the opposite brightness on most, rotated up to 30 degrees. The truth of an
image is the drawn box of each character.

Metric: box F1 against the drawn truth (a detection counts if its IoU with an unmatched
truth box is at least 0.5); ``last_details`` adds the F1 against FP32's boxes, recall and
precision::

    >>> fp8onnx.zoo.get("ddddocr_det").evaluate()      # doctest: +SKIP
    0.9...
"""
from __future__ import annotations

import importlib.util
import zlib
from functools import lru_cache
from pathlib import Path
from typing import Iterator, List, Tuple

import numpy as np

from . import yolo
from .base import Feeds, ZooEntry, check_split
from .photos import SKIMAGE_HINT, skimage_photo

__all__ = ["DdddDetEntry", "detect", "image", "preprocess", "box_f1"]

HINT = "ddddocr (pip install ddddocr)"
SIZE = 416
INPUT = "images"
SCORE_THR, NMS_THR = 0.1, 0.45          # get_bbox's
STRIDES = (8, 16, 32)
EVAL_PHOTOS = ("astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "motorcycle_right.png", "horse.png")
CALIB_PHOTOS = ("motorcycle_left.png", "hubble_deep_field.jpg", "retina.jpg", "ihc.png", "brick.png",
                "grass.png", "gravel.png", "color.png")
GLYPHS = "ABCDEFGHJKLMNPQRSTUVWXYZabdefghkmnpqrty2345678"
FONTS = ("DejaVuSans-Bold.ttf", "DejaVuSans.ttf", "DejaVuSerif-Bold.ttf", "DejaVuSansMono-Bold.ttf",
         "DejaVuSerif.ttf", "DejaVuSans-BoldOblique.ttf")

Box = Tuple[int, int, int, int]          # x1, y1, x2, y2


def _font(name: str, size: int):
    from PIL import ImageFont

    spec = importlib.util.find_spec("matplotlib")
    if spec is not None and spec.submodule_search_locations:
        ttf = Path(list(spec.submodule_search_locations)[0], "mpl-data", "fonts", "ttf", name)
        if ttf.exists():
            return ImageFont.truetype(str(ttf), size)
    return ImageFont.load_default(size=size)  # Pillow >= 10.1 ships a scalable font


def _background(split: str, i: int, rng: np.random.Generator) -> np.ndarray:
    """A 416 x 416 RGB crop of photo ``i % len(photos)`` of the split, at a random scale."""
    from PIL import Image

    photos = EVAL_PHOTOS if split == "eval" else CALIB_PHOTOS
    photo = Image.fromarray(skimage_photo(photos[i % len(photos)]))
    scale = max(SIZE / min(photo.size), 1.0) * rng.uniform(1.0, 1.6)
    photo = photo.resize((int(np.ceil(photo.width * scale)), int(np.ceil(photo.height * scale))), Image.BILINEAR)
    x = int(rng.integers(0, photo.width - SIZE + 1))
    y = int(rng.integers(0, photo.height - SIZE + 1))
    return np.asarray(photo.crop((x, y, x + SIZE, y + SIZE)).convert("RGB")).copy()


def _glyph(rng: np.random.Generator):
    """One character as an RGBA tile (rotated, tight) and its opaque mask."""
    from PIL import Image, ImageDraw

    size = int(rng.integers(30, 61))
    font = _font(FONTS[int(rng.integers(len(FONTS)))], size)
    ch = GLYPHS[int(rng.integers(len(GLYPHS)))]
    colour = tuple(int(c) for c in rng.integers(0, 256, 3))
    outline = rng.random() < 0.7
    stroke = int(rng.integers(1, 4)) if outline else 0
    edge = (0, 0, 0) if sum(colour) > 384 else (255, 255, 255)
    tile = Image.new("RGBA", (2 * size, 2 * size), (0, 0, 0, 0))
    ImageDraw.Draw(tile).text((size // 3, size // 4), ch, font=font, fill=colour + (255,),
                              stroke_width=stroke, stroke_fill=edge + (255,))
    tile = tile.rotate(float(rng.uniform(-30, 30)), resample=Image.BICUBIC, expand=True)
    return tile.crop(tile.getbbox())


@lru_cache(maxsize=None)
def image(split: str, i: int) -> Tuple[np.ndarray, Tuple[Box, ...]]:
    """Image ``i`` of ``split``: (RGB uint8 416 x 416 x 3, truth boxes of its characters)."""
    from PIL import Image

    check_split(split)
    rng = np.random.default_rng(zlib.crc32(f"ddddocr_det/{split}/{i}".encode()))
    canvas = Image.fromarray(_background(split, i, rng))
    boxes: List[Box] = []
    for _ in range(int(rng.integers(3, 7))):
        tile = _glyph(rng)
        for _attempt in range(50):   # place without overlapping earlier characters
            x = int(rng.integers(4, SIZE - tile.width - 4))
            y = int(rng.integers(4, SIZE - tile.height - 4))
            box = (x, y, x + tile.width, y + tile.height)
            if all(box[2] + 6 <= b[0] or b[2] + 6 <= box[0] or box[3] + 6 <= b[1] or b[3] + 6 <= box[1]
                   for b in boxes):
                canvas.paste(tile, (x, y), tile)
                boxes.append(box)
                break
    return np.asarray(canvas.convert("RGB")), tuple(boxes)


def preprocess(rgb: np.ndarray) -> np.ndarray:
    """get_bbox's input for a 416 x 416 RGB image: BGR, CHW, float32 0-255, batch of one."""
    if rgb.shape[:2] != (SIZE, SIZE):
        raise ValueError(f"images are drawn at {SIZE}x{SIZE}, got {rgb.shape[:2]}")
    return np.ascontiguousarray(rgb[:, :, ::-1].transpose(2, 0, 1)[None], dtype=np.float32)


@lru_cache(maxsize=1)
def _grid() -> Tuple[np.ndarray, np.ndarray]:
    grids, strides = [], []
    for s in STRIDES:
        n = SIZE // s
        xv, yv = np.meshgrid(np.arange(n), np.arange(n))
        grids.append(np.stack((xv, yv), 2).reshape(-1, 2))
        strides.append(np.full((n * n, 1), s))
    return np.concatenate(grids).astype(np.float64), np.concatenate(strides).astype(np.float64)


def _area(b: np.ndarray) -> np.ndarray:
    return (b[..., 2] - b[..., 0] + 1) * (b[..., 3] - b[..., 1] + 1)


def _iou_one(box: np.ndarray, others: np.ndarray) -> np.ndarray:
    """get_bbox's NMS overlap (its +1 pixel areas)."""
    w = np.maximum(0.0, np.minimum(box[2], others[:, 2]) - np.maximum(box[0], others[:, 0]) + 1)
    h = np.maximum(0.0, np.minimum(box[3], others[:, 3]) - np.maximum(box[1], others[:, 1]) + 1)
    inter = w * h
    return inter / (_area(box) + _area(others) - inter)


def detect(output: np.ndarray) -> List[Box]:
    """get_bbox's post-processing of the model's [1, 3549, 6] output for a 416 x 416 image."""
    grid, stride = _grid()
    pred = output[0].astype(np.float32).copy()
    pred[:, :2] = (pred[:, :2] + grid) * stride
    pred[:, 2:4] = np.exp(pred[:, 2:4]) * stride
    scores = pred[:, 4] * pred[:, 5]
    xyxy = np.stack([pred[:, 0] - pred[:, 2] / 2, pred[:, 1] - pred[:, 3] / 2,
                     pred[:, 0] + pred[:, 2] / 2, pred[:, 1] + pred[:, 3] / 2], 1)
    keep = scores > SCORE_THR
    xyxy, scores = xyxy[keep], scores[keep]
    order = scores.argsort()[::-1]
    out: List[Box] = []
    while order.size:
        i = order[0]
        b = xyxy[i]
        out.append((max(int(b[0]), 0), max(int(b[1]), 0), min(int(b[2]), SIZE), min(int(b[3]), SIZE)))
        rest = order[1:]
        order = rest[_iou_one(b, xyxy[rest]) <= NMS_THR]
    return out


def box_f1(preds: List[List[Box]], refs: List[List[Box]], iou: float = 0.5) -> Tuple[float, float, float]:
    """(F1, recall, precision) of per-image detections (in the detector's score order)
    against reference boxes: ``yolo.box_f1``'s greedy one-to-one matching at IoU >= iou."""
    def as_dets(boxes: List[Box]) -> List[dict]:
        return [{"class": 0, "score": -k, "box": [x1, y1, x2 - x1, y2 - y1]}
                for k, (x1, y1, x2, y2) in enumerate(boxes)]

    f1 = yolo.box_f1([as_dets(p) for p in preds], [as_dets(r) for r in refs], iou)
    n_pred, n_ref = sum(map(len, preds)), sum(map(len, refs))
    tp = f1 * (n_pred + n_ref) / 2
    return f1, (tp / n_ref if n_ref else 1.0), (tp / n_pred if n_pred else 1.0)


class DdddDetEntry(ZooEntry):
    """ddddocr's YOLOX click-captcha detector; metric: box F1 against the drawn characters."""

    name = "ddddocr_det"
    domain, family = "cv", "cnn"
    source = "ddddocr (package file ddddocr/common_det.onnx)"
    install_hint = "pip install ddddocr scikit-image"
    metric_name = "character box F1 vs drawn truth (IoU >= 0.5)"
    default_eval_n = 48
    package_model, package_hint = ("ddddocr", "common_det.onnx"), HINT
    requires = (("skimage", SKIMAGE_HINT), ("PIL", "pillow (pip install pillow)"))

    def images(self, split: str, n: int):
        self.check_available()
        return [image(split, i) for i in range(n)]

    def calib_feeds(self, n: int) -> Iterator[Feeds]:
        for rgb, _ in self.images("calib", n):
            yield {INPUT: preprocess(rgb)}

    def eval_feeds(self, n: int) -> Iterator[Feeds]:
        for rgb, _ in self.images("eval", n):
            yield {INPUT: preprocess(rgb)}

    def detections(self, session, split: str, n: int) -> List[List[Box]]:
        return [detect(session.run(None, {INPUT: preprocess(rgb)})[0]) for rgb, _ in self.images(split, n)]

    def _evaluate(self, session, n: int) -> float:
        split = getattr(self, "split", "eval")
        truth = [list(boxes) for _, boxes in self.images(split, n)]
        ref = self._fp32_reference(("boxes", n), lambda s: self.detections(s, split, n))
        got = self.detections(session, split, n)
        f1, recall, precision = box_f1(got, truth)
        self.last_details = {"f1_vs_fp32": box_f1(got, ref)[0], "recall": recall, "precision": precision,
                             "boxes": sum(map(len, got)), "truth_boxes": sum(map(len, truth))}
        return f1


def dddd_det_entries():
    return [DdddDetEntry()]
