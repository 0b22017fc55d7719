"""Real photos shipped inside the scikit-image wheel (``skimage/data``), read locally.

Only files present in the wheel are used: ``skimage.data`` fetches the others with pooch,
which needs the network, so they are never asked for::

    >>> skimage_photo("chelsea.png").shape          # doctest: +SKIP
    (300, 451, 3)
"""
from __future__ import annotations

import importlib.util
from functools import lru_cache
from pathlib import Path

import numpy as np

from .base import ZooSkip

__all__ = ["SKIMAGE_HINT", "skimage_data_dir", "skimage_photo", "lfw_crop", "interleave"]

SKIMAGE_HINT = "scikit-image (pip install scikit-image)"


def skimage_data_dir() -> Path:
    spec = importlib.util.find_spec("skimage")
    if spec is None or not spec.submodule_search_locations:
        raise ZooSkip(f"skipped: install {SKIMAGE_HINT}")
    return Path(list(spec.submodule_search_locations)[0], "data")


def skimage_photo(filename: str) -> np.ndarray:
    """A photo from the scikit-image wheel as RGB uint8 H x W x 3 (grey ones replicated)."""
    from PIL import Image

    path = skimage_data_dir() / filename
    if not path.exists():
        raise ZooSkip(f"skipped: {path} missing; reinstall {SKIMAGE_HINT}")
    return np.asarray(Image.open(path).convert("RGB"))


def lfw_crop(i: int, side: int) -> np.ndarray:
    """Crop ``i`` of the wheel's ``lfw_subset.npy`` (25 x 25 grey in [0, 1]; crops 0-99 are
    faces, 100-199 are not) as uint8, resized bicubically to ``side`` x ``side``."""
    import cv2

    crops = _lfw_subset()
    return cv2.resize((crops[i] * 255).astype(np.uint8), (side, side), interpolation=cv2.INTER_CUBIC)


@lru_cache(maxsize=1)
def _lfw_subset() -> np.ndarray:
    crops = np.load(skimage_data_dir() / "lfw_subset.npy")
    crops.flags.writeable = False   # shared by every caller
    return crops


def interleave(first: list, second: list) -> list:
    """first[0], second[0], first[1], ... then the longer one's rest: a small ``n`` of a
    split built from both sees both kinds."""
    out = []
    for i in range(max(len(first), len(second))):
        out += first[i:i + 1] + second[i:i + 1]
    return out
