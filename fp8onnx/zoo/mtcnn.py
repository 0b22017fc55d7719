"""MTCNN face detector (Zhang et al., 2016) from ``facenet-pytorch`` 2.6.0: its O-Net is
the model quantized; its P-Net and R-Net propose the O-Net's 48 x 48 crops in FP32.

The wheel ships the three trained state dicts (``facenet_pytorch/data/{p,r,o}net.pt``),
but the package imports torchvision at import time, which cannot import beside this CPU
torch, so it is never imported: the files are found with ``find_spec``, the networks
rebuilt in plain torch with facenet_pytorch's module names (each state dict loads
strictly) and exported once to ONNX (opset 17) in ``cache_dir("mtcnn_onet")``; later
loads need no torch. O-Net holds 390k of the 495k weights: Conv 3x3 (32, 64, 64) and
2x2 (128), each followed by PReLU, max pools, then Linear 1152 -> 256, PReLU and three
heads. Input ``input`` float32 [batch, 3, 48, 48] (RGB, ``(x - 127.5) / 128``);
outputs ``box_regression`` [batch, 4], ``landmarks`` [batch, 10] (five x, then five y,
relative to the crop) and ``face_prob`` [batch, 2] (softmax; column 1 is the face).

The cascade (``mtcnn_cascade.py``) is facenet_pytorch's ``detect_face`` re-written in numpy, step for step and
in float32 as torch computes it (its defaults: min face 20 px, pyramid factor 0.709,
thresholds 0.6 / 0.7 / 0.7): P-Net over the image pyramid (``interpolate(mode="area")``,
i.e. adaptive average pooling, done here from an integral image), candidates at >= 0.6,
NMS 0.5 per scale and 0.7 over all scales (torchvision's IoU, without the +1), box
regression, squaring, integer padding, 24 x 24 area-resized crops for R-Net (> 0.7,
NMS 0.7, regression with the +1 widths, squaring), 48 x 48 crops for O-Net (> 0.7),
landmarks, regression and NMS 0.7 by intersection over the smaller area. One
difference: ``detect_face`` raises on a box whose crop would be empty (lying wholly
outside the image), which this version drops.

Real input, offline: photos in the scikit-image wheel (``photos.py``), matplotlib's
``grace_hopper.jpg``, and 4 x 4 mosaics of the 25 x 25 crops of ``lfw_subset.npy``
(its first 100 are faces, the rest not), each crop resized to 24, 32, 48 or 72 px and
centred in a 128 x 128 grey tile, so that MTCNN sees faces of several sizes (its pyramid
starts at 20 px) with a margin around them, as in a photo.
Calibration and evaluation read different photos and different crops. A calibration
sample is one 48 x 48 crop that the FP32 P-Net/R-Net propose on a calibration image
(a feed holds up to 16); an eval sample is one image, run through the whole cascade
with the O-Net under test (the FP32 proposals are computed once and kept: they do not
depend on the O-Net).

Metric: detection agreement with the FP32 cascade, the micro F1 of boxes matched at
IoU >= 0.5 (the nudenet_yolov8n entry's ``box_f1``); ``last_details`` adds the F1 at
IoU >= 0.75 and the landmark error of the faces both find (mean distance of the five
points in units of the FP32 box's side; mean and max, NaN when none is matched)::

    >>> fp8onnx.zoo.get("mtcnn_onet").evaluate()      # doctest: +SKIP
    1.0
"""
from __future__ import annotations

import os
import warnings
from functools import lru_cache
from pathlib import Path
from typing import Dict, Iterator, List, Sequence, Tuple

import numpy as np

from .base import (EXPORT_HINT, ExportedEntry, Feeds, ZooEntry, cache_dir, check_split, keep_export,
                   ort_session, package_file, package_version, require)
from .photos import SKIMAGE_HINT, interleave, lfw_crop, skimage_photo
from .mtcnn_cascade import INPUT, OUTPUTS, Cascade
from .yolo import box_f1, box_iou

__all__ = ["MtcnnONetEntry", "build_nets", "load_torch_model", "export_net", "onnx_path", "images",
           "tile_faces", "detections"]

PIP = "pip install --no-deps facenet-pytorch==2.6.0"
HINT = f"facenet-pytorch ({PIP})"   # --no-deps: its torchvision pin cannot install beside CPU torch
MPL_HINT = "matplotlib (pip install matplotlib)"
NETS = ("pnet", "rnet", "onet")
ONNX_NAME = "mtcnn_{net}.{version}.opset17.v1.onnx"   # bump v1 when the export changes
BATCH = 16

EVAL_PHOTOS = ("astronaut.png", "camera.png", "coffee.png", "rocket.jpg", "chelsea.png", "moon.png")
CALIB_PHOTOS = ("grace_hopper.jpg", "motorcycle_left.png", "hubble_deep_field.jpg", "coins.png",
                "page.png", "brick.png", "clock_motion.png")
# lfw_subset.npy: crops 0-99 are faces, 100-199 are not. First index of each 16-crop mosaic:
MOSAICS = {"calib": (0, 16, 32, 100), "eval": (48, 64, 80, 148)}
TILE, FACES = 128, (24, 32, 48, 72)


# --- the networks ---------------------------------------------------------------

def build_nets(torch) -> Dict[str, type]:
    """facenet_pytorch's PNet, RNet and ONet classes, module for module, without weights."""
    nn = torch.nn

    class PNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1, self.prelu1 = nn.Conv2d(3, 10, 3), nn.PReLU(10)
            self.pool1 = nn.MaxPool2d(2, 2, ceil_mode=True)
            self.conv2, self.prelu2 = nn.Conv2d(10, 16, 3), nn.PReLU(16)
            self.conv3, self.prelu3 = nn.Conv2d(16, 32, 3), nn.PReLU(32)
            self.conv4_1, self.softmax4_1 = nn.Conv2d(32, 2, 1), nn.Softmax(dim=1)
            self.conv4_2 = nn.Conv2d(32, 4, 1)

        def forward(self, x):
            x = self.pool1(self.prelu1(self.conv1(x)))
            x = self.prelu3(self.conv3(self.prelu2(self.conv2(x))))
            return self.conv4_2(x), self.softmax4_1(self.conv4_1(x))

    class RNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1, self.prelu1 = nn.Conv2d(3, 28, 3), nn.PReLU(28)
            self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
            self.conv2, self.prelu2 = nn.Conv2d(28, 48, 3), nn.PReLU(48)
            self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
            self.conv3, self.prelu3 = nn.Conv2d(48, 64, 2), nn.PReLU(64)
            self.dense4, self.prelu4 = nn.Linear(576, 128), nn.PReLU(128)
            self.dense5_1, self.softmax5_1 = nn.Linear(128, 2), nn.Softmax(dim=1)
            self.dense5_2 = nn.Linear(128, 4)

        def forward(self, x):
            x = self.pool1(self.prelu1(self.conv1(x)))
            x = self.pool2(self.prelu2(self.conv2(x)))
            x = self.prelu3(self.conv3(x))
            # The weights were converted from TensorFlow: Linear reads W x H x C order.
            x = self.prelu4(self.dense4(x.permute(0, 3, 2, 1).flatten(1)))
            return self.dense5_2(x), self.softmax5_1(self.dense5_1(x))

    class ONet(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1, self.prelu1 = nn.Conv2d(3, 32, 3), nn.PReLU(32)
            self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
            self.conv2, self.prelu2 = nn.Conv2d(32, 64, 3), nn.PReLU(64)
            self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
            self.conv3, self.prelu3 = nn.Conv2d(64, 64, 3), nn.PReLU(64)
            self.pool3 = nn.MaxPool2d(2, 2, ceil_mode=True)
            self.conv4, self.prelu4 = nn.Conv2d(64, 128, 2), nn.PReLU(128)
            self.dense5, self.prelu5 = nn.Linear(1152, 256), nn.PReLU(256)
            self.dense6_1, self.softmax6_1 = nn.Linear(256, 2), nn.Softmax(dim=1)
            self.dense6_2, self.dense6_3 = nn.Linear(256, 4), nn.Linear(256, 10)

        def forward(self, x):
            x = self.pool1(self.prelu1(self.conv1(x)))
            x = self.pool2(self.prelu2(self.conv2(x)))
            x = self.pool3(self.prelu3(self.conv3(x)))
            x = self.prelu4(self.conv4(x))
            x = self.prelu5(self.dense5(x.permute(0, 3, 2, 1).flatten(1)))
            return self.dense6_2(x), self.dense6_3(x), self.softmax6_1(self.dense6_1(x))

    return {"pnet": PNet, "rnet": RNet, "onet": ONet}


def _weights_path(net: str) -> Path:
    return package_file("facenet_pytorch", "data", f"{net}.pt", hint=HINT)


def load_torch_model(torch, net: str):
    """``net`` ("pnet", "rnet" or "onet") with the wheel's weights, strictly, in eval mode."""
    model = build_nets(torch)[net]()
    model.load_state_dict(torch.load(_weights_path(net), map_location="cpu", weights_only=True))
    return model.eval()


def onnx_path(net: str) -> Path:
    """Where the export of ``net`` is cached, named after the facenet-pytorch version."""
    return cache_dir("mtcnn_onet") / ONNX_NAME.format(net=net, version=package_version("facenet-pytorch"))


def export_net(net: str, path: Path) -> Path:
    """Export ``net`` to ONNX at ``path`` (needs torch; facenet_pytorch is not imported).
    P-Net is fully convolutional: its height and width stay dynamic."""
    torch = require("torch", EXPORT_HINT)
    model = load_torch_model(torch, net)
    side = {"pnet": 40, "rnet": 24, "onet": 48}[net]
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.uniform(-1, 1, (2, 3, side, side)).astype(np.float32))
    check = rng.uniform(-1, 1, (5, 3, side + 7, side + 3) if net == "pnet" else (5, 3, side, side))
    check = torch.from_numpy(check.astype(np.float32))
    axes = {0: "batch", 2: "height", 3: "width"} if net == "pnet" else {0: "batch"}
    dynamic = {INPUT: axes, **{o: axes for o in OUTPUTS[net]}}
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")   # the legacy exporter's deprecation notice
        torch.onnx.export(model, (x,), str(tmp), input_names=[INPUT], output_names=list(OUTPUTS[net]),
                          dynamic_axes=dynamic, opset_version=17, dynamo=False)
        want = np.concatenate([y.reshape(len(y), -1).numpy() for y in model(check)], axis=1)
    got = ort_session(tmp.read_bytes()).run(list(OUTPUTS[net]), {INPUT: check.numpy()})
    got = np.concatenate([y.reshape(len(y), -1) for y in got], axis=1)
    return keep_export(tmp, path, got, want, atol=1e-5, what=f"MTCNN {net}")


def _net_session(net: str):
    path = onnx_path(net)
    if not path.exists():
        export_net(net, path)
    return ort_session(path.read_bytes())


# --- data and metric -----------------------------------------------------------

def _photo(name: str) -> np.ndarray:
    if name == "grace_hopper.jpg":
        from PIL import Image

        path = package_file("matplotlib", "mpl-data", "sample_data", name, hint=MPL_HINT)
        return np.asarray(Image.open(path).convert("RGB"))
    return skimage_photo(name)


def tile_faces(start: int) -> List[Tuple[int, int, int]]:
    """(x, y, side) of the 16 crops pasted in the mosaic of ``start`` (see ``_mosaic``)."""
    out = []
    for i in range(16):
        r, c = divmod(i, 4)
        side = FACES[(r + c) % len(FACES)]   # every row and column holds every size
        out.append((c * TILE + (TILE - side) // 2, r * TILE + (TILE - side) // 2, side))
    return out


def _mosaic(start: int) -> np.ndarray:
    """16 LFW crops from ``start``, resized to 24-72 px, centred in 128 px mid-grey tiles, 4 x 4."""
    grid = np.full((4 * TILE, 4 * TILE), 128, np.uint8)
    for i, (x, y, side) in enumerate(tile_faces(start)):
        grid[y:y + side, x:x + side] = lfw_crop(start + i, side)
    return np.repeat(grid[:, :, None], 3, axis=2)


@lru_cache(maxsize=2)
def images(split: str) -> Tuple[np.ndarray, ...]:
    """The split's RGB uint8 images: LFW mosaics and photos interleaved, so that a small
    ``n`` sees both (read-only arrays, shared)."""
    check_split(split)
    photos = EVAL_PHOTOS if split == "eval" else CALIB_PHOTOS
    out = interleave([_mosaic(s) for s in MOSAICS[split]], [_photo(p) for p in photos])
    for img in out:
        img.flags.writeable = False
    return tuple(out)


def detections(boxes: np.ndarray) -> List[dict]:
    """Boxes [n, 5] as the detections ``yolo.box_f1`` reads ({class, score, box: x y w h})."""
    return [{"class": "face", "score": float(b[4]), "box": [float(b[0]), float(b[1]),
                                                           float(b[2] - b[0]), float(b[3] - b[1])]}
            for b in boxes]


def _landmark_errors(got: Sequence, ref: Sequence, iou: float = 0.5) -> List[float]:
    """Mean distance of the five points, in units of the FP32 box's side, for every FP32
    face matched (best IoU >= ``iou``) by a face of ``got``."""
    errors = []
    for (g_boxes, g_points), (r_boxes, r_points) in zip(got, ref):
        g_dets = detections(g_boxes)
        for r_det, r_pts in zip(detections(r_boxes), r_points):
            overlaps = [box_iou(r_det["box"], g["box"]) for g in g_dets]
            if overlaps and max(overlaps) >= iou:
                g_pts = g_points[int(np.argmax(overlaps))]
                side = np.sqrt(r_det["box"][2] * r_det["box"][3])
                errors.append(float(np.linalg.norm(g_pts - r_pts, axis=1).mean() / side))
    return errors


class MtcnnONetEntry(ExportedEntry):
    """MTCNN's O-Net (PReLU CNN, 48 x 48 crops) in the FP32 P-Net/R-Net cascade;
    metric: box F1 agreement with the FP32 cascade."""

    name = "mtcnn_onet"
    domain, family = "cv", "cnn"
    source = "facenet-pytorch 2.6.0 (package file facenet_pytorch/data/onet.pt, exported with torch)"
    install_hint = PIP
    metric_name = "box F1 agreement with FP32 cascade (IoU 0.5)"
    default_eval_n = 10
    package_model, package_hint = ("facenet_pytorch", "data", "onet.pt"), HINT
    requires = (("skimage", SKIMAGE_HINT), ("matplotlib", MPL_HINT),
                ("cv2", "opencv-python-headless (pip install opencv-python-headless)"),
                ("PIL", "pillow (pip install pillow)"))

    def __init__(self):
        super().__init__()
        self._cascade = None
        self._proposals: Dict[str, list] = {"eval": [], "calib": []}

    def check_available(self) -> None:
        """ZooSkip unless the three checkpoints and the packages are there and the ONNX
        files are cached or torch can build them."""
        super().check_available()
        for net in NETS:
            _weights_path(net)
            if not onnx_path(net).exists():
                require("torch", EXPORT_HINT)

    def onnx_path(self) -> Path:
        return onnx_path("onet")   # the module's path for all three nets, O-Net's included

    def export(self, path: Path) -> None:
        export_net("onet", path)

    def cascade(self) -> Cascade:
        self.check_available()
        if self._cascade is None:
            self._cascade = Cascade(_net_session("pnet"), _net_session("rnet"))
        return self._cascade

    def proposals(self, split: str, n: int) -> List[Tuple[np.ndarray, np.ndarray]]:
        """(boxes, 48 x 48 crops) the FP32 P-Net/R-Net propose on the split's first ``n``
        images; computed once (they do not depend on the O-Net)."""
        done, todo = self._proposals[split], images(split)[:n]
        for img in todo[len(done):]:
            done.append(self.cascade().propose(img))
        return done[:len(todo)]

    def calib_feeds(self, n: int) -> Iterator[Feeds]:
        """Up to ``n`` O-Net inputs proposed on the calibration images, 16 to a feed,
        taken from the images in turn so that a small ``n`` still sees every image."""
        per_image = [c for _, c in self.proposals("calib", len(images("calib")))]
        turns = [(k, i) for i, c in enumerate(per_image) for k in range(len(c))]
        crops = np.stack([per_image[i][k] for k, i in sorted(turns)[:n]])
        for i in range(0, len(crops), BATCH):
            yield {INPUT: crops[i:i + BATCH].copy()}

    def eval_feeds(self, n: int) -> Iterator[Feeds]:
        """One feed per eval image with proposals: every crop its FP32 P-Net/R-Net propose
        (the photos without faces may have none, and an empty batch is no input)."""
        for _, crops in self.proposals("eval", n):
            if len(crops):
                yield {INPUT: crops.copy()}

    def detect(self, session, n: int) -> List[Tuple[np.ndarray, np.ndarray]]:
        """(boxes, points) the cascade with O-Net ``session`` finds on the scored split's
        first ``n`` images."""
        cascade = self.cascade()
        return [cascade.detect_proposed(b, c, session) for b, c in self.proposals(self.split, n)]

    def _evaluate(self, session, n: int) -> float:
        ref = self._fp32_reference(("dets", n), lambda s: self.detect(s, n))
        got = self.detect(session, n)
        preds, refs = [detections(b) for b, _ in got], [detections(b) for b, _ in ref]
        errors = _landmark_errors(got, ref)
        self.last_details = {"f1_iou75": box_f1(preds, refs, iou=0.75),
                             "landmark_error_mean": float(np.mean(errors)) if errors else float("nan"),
                             "landmark_error_max": float(np.max(errors)) if errors else float("nan"),
                             "faces_fp32": sum(len(r) for r in refs), "faces": sum(len(p) for p in preds)}
        return box_f1(preds, refs)


def mtcnn_entries() -> List[ZooEntry]:
    return [MtcnnONetEntry()]
