"""MTCNN's detection cascade: facenet_pytorch's ``detect_face`` re-written in numpy, step for
step and in float32 as torch computes it (see ``mtcnn.py`` for the model and the data).

Its defaults: min face 20 px, pyramid factor 0.709, thresholds 0.6 / 0.7 / 0.7. P-Net
runs over the image pyramid (``interpolate(mode="area")``, i.e. adaptive average
pooling, done here from an integral image), then R-Net on 24 x 24 crops and O-Net on
48 x 48 crops; the networks are sessions the caller gives (``.run(names, feeds)``).
"""
from __future__ import annotations

from typing import Tuple

import numpy as np

__all__ = ["Cascade", "area_resize", "integral_image", "nms", "normalize", "INPUT", "OUTPUTS"]

INPUT = "input"
OUTPUTS = {"pnet": ("box_regression", "face_prob"), "rnet": ("box_regression", "face_prob"),
           "onet": ("box_regression", "landmarks", "face_prob")}
# detect_face's arguments as facenet_pytorch.MTCNN passes them by default.
MIN_FACE, FACTOR, THRESHOLDS = 20, 0.709, (0.6, 0.7, 0.7)


def area_resize(integral: np.ndarray, y0: int, y1: int, x0: int, x1: int, size: Tuple[int, int]) -> np.ndarray:
    """torch's ``interpolate(mode="area")`` (adaptive average pooling) of the image region
    [y0:y1, x0:x1] to ``size`` (h, w), from ``integral``, the image's zero-padded integral
    image (int64, (H+1) x (W+1) x 3): float32 NCHW [1, 3, h, w] in the 0-255 range."""
    def bounds(n_in, n_out, offset):
        i = np.arange(n_out)
        return offset + i * n_in // n_out, offset + -(-(i + 1) * n_in // n_out)   # floor, ceil

    (ys, ye), (xs, xe) = bounds(y1 - y0, size[0], y0), bounds(x1 - x0, size[1], x0)
    sums = (integral[ye][:, xe] - integral[ys][:, xe] - integral[ye][:, xs] + integral[ys][:, xs])
    # Integer sums are exact in float32 here, as in torch; one division by the cell area as
    # its channels-last kernel (the permuted uint8 image is channels-last) does.
    count = ((ye - ys)[:, None] * (xe - xs)[None, :]).astype(np.float32)
    return (sums.astype(np.float32) / count[:, :, None]).transpose(2, 0, 1)[None]


def integral_image(rgb: np.ndarray) -> np.ndarray:
    """Sums of ``rgb`` over [0:y, 0:x] at [y, x], exact in int64: what ``area_resize`` reads."""
    out = np.zeros((rgb.shape[0] + 1, rgb.shape[1] + 1, 3), np.int64)
    out[1:, 1:] = rgb.astype(np.int64).cumsum(0).cumsum(1)
    return out


def normalize(x: np.ndarray) -> np.ndarray:
    return (x - np.float32(127.5)) * np.float32(0.0078125)


def nms(boxes: np.ndarray, scores: np.ndarray, threshold: float, method: str = "union") -> np.ndarray:
    """Greedy NMS, indices kept in order of falling score. ``union``: torchvision's
    ``nms`` (IoU > threshold suppresses, areas without +1, a stable sort); ``min``:
    detect_face's ``nms_numpy`` with ``'Min'`` (intersection over the smaller area, +1
    pixel sizes, numpy's default argsort, as it does)."""
    if len(boxes) == 0:
        return np.zeros(0, np.int64)
    x1, y1, x2, y2 = (boxes[:, k] for k in range(4))
    one = np.float32(1 if method == "min" else 0)
    area = (x2 - x1 + one) * (y2 - y1 + one)
    order = np.argsort(scores)[::-1] if method == "min" else np.argsort(-scores, kind="stable")
    keep = []
    while order.size:
        i, rest = order[0], order[1:]
        keep.append(i)
        w = np.maximum(np.float32(0), np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]) + one)
        h = np.maximum(np.float32(0), np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]) + one)
        inter = w * h
        overlap = inter / (np.minimum(area[i], area[rest]) if method == "min" else area[i] + area[rest] - inter)
        order = rest[overlap <= threshold]
    return np.asarray(keep, np.int64)


def _square(boxes: np.ndarray) -> np.ndarray:
    """detect_face's ``rerec``: a square of the longer side, same centre."""
    boxes = boxes.copy()
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    side = np.maximum(w, h)
    boxes[:, 0] = boxes[:, 0] + w * np.float32(0.5) - side * np.float32(0.5)
    boxes[:, 1] = boxes[:, 1] + h * np.float32(0.5) - side * np.float32(0.5)
    boxes[:, 2:4] = boxes[:, :2] + side[:, None]
    return boxes


def _regress(boxes: np.ndarray, reg: np.ndarray) -> np.ndarray:
    """detect_face's ``bbreg``: offsets in units of the box size with +1 pixel sizes."""
    boxes = boxes.copy()
    w = boxes[:, 2] - boxes[:, 0] + np.float32(1)
    h = boxes[:, 3] - boxes[:, 1] + np.float32(1)
    boxes[:, :4] = boxes[:, :4] + reg * np.stack([w, h, w, h], axis=1)
    return boxes


def _pad(boxes: np.ndarray, w: int, h: int) -> np.ndarray:
    """detect_face's ``pad``: 1-based integer (x, y, ex, ey) clipped to the image."""
    x, y, ex, ey = boxes[:, :4].astype(np.int32).T   # truncation, as torch's trunc().int()
    return np.stack([np.maximum(x, 1), np.maximum(y, 1), np.minimum(ex, w), np.minimum(ey, h)], axis=1)


class Cascade:
    """MTCNN with the given P-Net and R-Net sessions (the zoo entry's run FP32 in
    onnxruntime); the O-Net is given per call."""

    def __init__(self, pnet, rnet):
        self.pnet, self.rnet = pnet, rnet

    def _stage1(self, integral: np.ndarray) -> np.ndarray:
        h, w = integral.shape[0] - 1, integral.shape[1] - 1
        m = 12.0 / MIN_FACE
        minl, scale, scales = min(h, w) * m, m, []
        while minl >= 12:   # python floats, as detect_face builds its pyramid
            scales.append(scale)
            scale, minl = scale * FACTOR, minl * FACTOR
        found = []
        for scale in scales:
            x = normalize(area_resize(integral, 0, h, 0, w, (int(h * scale + 1), int(w * scale + 1))))
            reg, prob = self.pnet.run(list(OUTPUTS["pnet"]), {INPUT: x})
            ys, xs = np.nonzero(prob[0, 1] >= np.float32(THRESHOLDS[0]))   # generateBoundingBox
            cell = np.stack([xs, ys], axis=1).astype(np.float32)
            q1 = np.floor((np.float32(2) * cell + np.float32(1)) / np.float32(scale))
            q2 = np.floor((np.float32(2) * cell + np.float32(12)) / np.float32(scale))
            boxes = np.concatenate([q1, q2, prob[0, 1, ys, xs, None], reg[0][:, ys, xs].T], axis=1)
            found.append(boxes[nms(boxes[:, :4], boxes[:, 4], 0.5)])
        boxes = np.concatenate(found) if found else np.zeros((0, 9), np.float32)
        boxes = boxes[nms(boxes[:, :4], boxes[:, 4], 0.7)]
        size = np.concatenate([boxes[:, 2:4] - boxes[:, 0:2]] * 2, axis=1)
        moved = boxes[:, :4] + boxes[:, 5:9] * size   # stage 1 regresses without the +1
        return _square(np.concatenate([moved, boxes[:, 4:5]], axis=1))

    @staticmethod
    def _crops(integral: np.ndarray, boxes: np.ndarray, side: int) -> Tuple[np.ndarray, np.ndarray]:
        """Normalized area-resized crops of the padded boxes, and which boxes gave one."""
        h, w = integral.shape[0] - 1, integral.shape[1] - 1
        pads = _pad(boxes, w, h)
        ok = (pads[:, 3] > pads[:, 1] - 1) & (pads[:, 2] > pads[:, 0] - 1)
        crops = [area_resize(integral, y - 1, ey, x - 1, ex, (side, side)) for x, y, ex, ey in pads[ok]]
        crops = np.concatenate(crops) if crops else np.zeros((0, 3, side, side), np.float32)
        return normalize(crops), ok

    def propose(self, rgb: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        """(boxes [n, 5] after R-Net, O-Net input [n, 3, 48, 48]) for an RGB uint8 image."""
        integral = integral_image(rgb)
        boxes = self._stage1(integral)
        crops, ok = self._crops(integral, boxes, 24)
        boxes = boxes[ok]
        if len(boxes):
            reg, prob = self.rnet.run(list(OUTPUTS["rnet"]), {INPUT: crops})
            keep = prob[:, 1] > np.float32(THRESHOLDS[1])
            boxes = np.concatenate([boxes[keep, :4], prob[keep, 1:2]], axis=1)
            pick = nms(boxes[:, :4], boxes[:, 4], 0.7)
            boxes = _square(_regress(boxes[pick], reg[keep][pick]))
        crops, ok = self._crops(integral, boxes, 48)
        return boxes[ok], crops

    @staticmethod
    def finish(boxes: np.ndarray, reg: np.ndarray, landmarks: np.ndarray, prob: np.ndarray):
        """Final (boxes [n, 5]: x1 y1 x2 y2 score, points [n, 5, 2]) from the O-Net's outputs."""
        keep = prob[:, 1] > np.float32(THRESHOLDS[2])
        boxes = np.concatenate([boxes[keep, :4], prob[keep, 1:2]], axis=1)
        w = boxes[:, 2:3] - boxes[:, 0:1] + np.float32(1)
        h = boxes[:, 3:4] - boxes[:, 1:2] + np.float32(1)
        points = np.stack([w * landmarks[keep, :5] + boxes[:, 0:1] - np.float32(1),
                           h * landmarks[keep, 5:] + boxes[:, 1:2] - np.float32(1)], axis=2)
        boxes = _regress(boxes, reg[keep])
        pick = nms(boxes[:, :4], boxes[:, 4], 0.7, "min")
        return boxes[pick], points[pick]

    def detect(self, rgb: np.ndarray, onet) -> Tuple[np.ndarray, np.ndarray]:
        """detect_face on one RGB uint8 image with ``onet`` (a session) as its O-Net."""
        boxes, crops = self.propose(rgb)
        return self.detect_proposed(boxes, crops, onet)

    def detect_proposed(self, boxes: np.ndarray, crops: np.ndarray, onet):
        if not len(boxes):
            return np.zeros((0, 5), np.float32), np.zeros((0, 5, 2), np.float32)
        return self.finish(boxes, *onet.run(list(OUTPUTS["onet"]), {INPUT: crops}))
