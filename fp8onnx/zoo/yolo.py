"""NudeNet's YOLOv8n body-part detector (320n.onnx from the ``nudenet`` package).

Real input: photos shipped inside the scikit-image wheel (only files present in
``skimage/data``, nothing fetched), and 4 x 4 mosaics of the real photos in its
``lfw_subset.npy`` (Labeled Faces in the Wild, 25 x 25 grey, upscaled to 80 x 80; its
first 100 are faces, the last 100 non-faces), so that faces, which the detector finds,
are plentiful and non-faces test false positives. Calibration and evaluation use
different photos and different LFW crops. Pre-processing is nudenet's (pad to a square,
resize to 320, scale to [0, 1]) but feeds RGB, as the YOLOv8 export expects (nudenet's
own ``detect`` converts RGBA2BGR and then swaps R/B again, feeding BGR from a BGR file);
post-processing is nudenet's own ``_postprocess`` (score >= 0.2, NMS 0.45).

Metric: detection agreement with FP32, the F1 score of boxes matched greedily at
IoU >= 0.5 with the same class, pooled over all eval images (micro F1: images where
neither model finds anything do not dilute it; 1.0 when none finds anything).
``last_details["confident_f1"]`` is the same agreement with hysteresis (boxes scoring
>= 0.4 must be found by the other model at nudenet's own 0.2 cut-off), which does not
count boxes that merely flicker across the threshold::

    >>> fp8onnx.zoo.get("nudenet_yolov8n").evaluate()      # doctest: +SKIP
    1.0
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Iterator, List

import numpy as np
import onnx

from .base import Feeds, ZooEntry, ZooSkip, require
from .photos import SKIMAGE_HINT, interleave, lfw_crop, skimage_photo

__all__ = ["NudenetEntry", "box_f1", "confident_box_f1", "box_iou"]

HINT = "nudenet (pip install nudenet)"
SIZE = 320
# Photos in the scikit-image wheel itself (skimage/data); split disjointly.
EVAL_PHOTOS = ("astronaut.png", "camera.png", "chelsea.png", "coffee.png", "rocket.jpg", "moon.png")
CALIB_PHOTOS = ("motorcycle_left.png", "ihc.png", "retina.jpg", "hubble_deep_field.jpg",
                "coins.png", "page.png", "text.png", "brick.png", "clock_motion.png", "cell.png")
# lfw_subset.npy: crops 0-99 are faces, 100-199 are not. First index of each 16-crop mosaic:
MOSAICS = {"calib": (0, 16, 32, 100, 116, 132), "eval": (48, 64, 80, 148, 164, 180)}


def _mosaics(split: str) -> List[np.ndarray]:
    out = []
    for start in MOSAICS[split]:
        tiles = [lfw_crop(start + i, 80) for i in range(16)]
        grid = np.vstack([np.hstack(tiles[r * 4:(r + 1) * 4]) for r in range(4)])
        out.append(np.repeat(grid[:, :, None], 3, axis=2))
    return out


@lru_cache(maxsize=2)
def _images(split: str) -> tuple:
    photos = EVAL_PHOTOS if split == "eval" else CALIB_PHOTOS
    return tuple(interleave(_mosaics(split), [skimage_photo(p) for p in photos]))


def _preprocess(rgb: np.ndarray) -> np.ndarray:
    """nudenet's _read_image: pad bottom/right to a square, resize to 320, scale to [0, 1]."""
    import cv2

    h, w = rgb.shape[:2]
    side = max(h, w)
    pad = cv2.copyMakeBorder(rgb, 0, side - h, 0, side - w, cv2.BORDER_CONSTANT)
    img = cv2.resize(pad, (SIZE, SIZE)).astype(np.float32) / 255.0
    return img.transpose(2, 0, 1)[None]


def box_iou(a, b) -> float:
    """IoU of two boxes given as (x, y, width, height)."""
    ax, ay, aw, ah = a
    bx, by, bw, bh = b
    iw = max(0.0, min(ax + aw, bx + bw) - max(ax, bx))
    ih = max(0.0, min(ay + ah, by + bh) - max(ay, by))
    inter = iw * ih
    union = aw * ah + bw * bh - inter
    return inter / union if union > 0 else 0.0


def box_f1(preds: List[List[dict]], refs: List[List[dict]], iou: float = 0.5) -> float:
    """Micro F1 of per-image detections ``preds`` against ``refs``.

    A detection is {'class', 'score', 'box': [x, y, w, h]}, nudenet's format. Matching is
    greedy in order of predicted score, same class and IoU >= ``iou``.
    """
    n = sum(len(p) for p in preds) + sum(len(r) for r in refs)
    if n == 0:
        return 1.0
    return 2 * sum(_true_positives(p, r, iou) for p, r in zip(preds, refs)) / n


def _true_positives(pred: List[dict], ref: List[dict], iou: float) -> int:
    used, tp = set(), 0
    for p in sorted(pred, key=lambda d: -d["score"]):
        best, best_j = iou, None
        for j, r in enumerate(ref):
            if j not in used and r["class"] == p["class"]:
                v = box_iou(p["box"], r["box"])
                if v >= best:
                    best, best_j = v, j
        if best_j is not None:
            used.add(best_j)
            tp += 1
    return tp


def confident_box_f1(preds: List[List[dict]], refs: List[List[dict]], iou: float = 0.5,
                     confident: float = 0.4) -> float:
    """F1 with hysteresis: only boxes scoring >= ``confident`` must be found.

    Recall: the share of confident ``refs`` boxes that some ``preds`` box (any score
    nudenet kept) matches; precision: the same with the roles swapped. A box whose score
    merely crosses nudenet's 0.2 cut-off in one model does not count against the other.
    """
    def found(src, dst):
        hits = total = 0
        for a_img, b_img in zip(src, dst):
            for a in a_img:
                if a["score"] >= confident:
                    total += 1
                    hits += any(b["class"] == a["class"] and box_iou(a["box"], b["box"]) >= iou
                                for b in b_img)
        return hits, total

    (rh, rt), (ph, pt) = found(refs, preds), found(preds, refs)
    recall = rh / rt if rt else 1.0
    precision = ph / pt if pt else 1.0
    return 0.0 if recall + precision == 0 else 2 * recall * precision / (recall + precision)


class NudenetEntry(ZooEntry):
    """YOLOv8n (opset 17) body-part detector, 18 classes, 320 x 320 input."""

    name = "nudenet_yolov8n"
    domain, family = "cv", "cnn"
    source = "nudenet (package file nudenet/320n.onnx)"
    install_hint = "pip install nudenet scikit-image"
    metric_name = "box F1 agreement with FP32 (IoU 0.5, same class)"
    default_eval_n = 12
    requires = (("nudenet", HINT), ("cv2", HINT), ("skimage", SKIMAGE_HINT),
                ("PIL", "pillow (pip install pillow)"))

    def _load(self) -> onnx.ModelProto:
        nudenet = require("nudenet", HINT)
        path = Path(nudenet.__file__).parent / "320n.onnx"
        if not path.exists():
            raise ZooSkip(f"skipped: {path} missing; reinstall {HINT}")
        return onnx.load(path)

    def _feeds(self, split: str, n: int) -> Iterator[Feeds]:
        inp, _ = self.io_names()
        for img in _images(split)[:n]:
            yield {inp: _preprocess(img)}

    def calib_feeds(self, n: int) -> Iterator[Feeds]:
        """1 x 3 x 320 x 320 RGB in [0, 1]: 6 LFW mosaics (faces 0-47, non-faces 100-147)
        and 10 skimage photos (16 images)."""
        return self._feeds("calib", n)

    def eval_feeds(self, n: int) -> Iterator[Feeds]:
        """6 LFW mosaics (faces 48-95, non-faces 148-195) and 6 other skimage photos (12 images)."""
        return self._feeds("eval", n)

    def detect(self, session, n: int) -> List[List[dict]]:
        """nudenet's detections on the first ``n`` images of the scored split, run by ``session``."""
        self.check_available()
        from nudenet.nudenet import _postprocess

        _, out = self.io_names()
        dets = []
        for img, feeds in zip(_images(self.split), self.split_feeds(n)):
            h, w = img.shape[:2]
            side = max(h, w)
            raw = session.run([out], feeds)
            dets.append(_postprocess(raw, side - w, side - h, side / w, side / h, w, h, SIZE, SIZE))
        return dets

    def _evaluate(self, session, n: int) -> float:
        ref = self._fp32_reference(("dets", n), lambda s: self.detect(s, n))
        got = self.detect(session, n)
        self.last_details = {"confident_f1": confident_box_f1(got, ref)}
        return box_f1(got, ref)


def yolo_entries():
    return [NudenetEntry()]
