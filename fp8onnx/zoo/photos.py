"""Real photos shipped inside the scikit-image wheel (``skimage/data``), read locally.

Only files present in the wheel are used: ``skimage.data`` fetches the others with pooch,
which needs the network, so they are never asked for::

    >>> skimage_photo("chelsea.png").shape          # doctest: +SKIP
    (300, 451, 3)
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

from .base import ZooSkip

__all__ = ["SKIMAGE_HINT", "skimage_data_dir", "skimage_photo"]

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
