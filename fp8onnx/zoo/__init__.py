"""A registry of real pretrained models with real data and task metrics.

Every entry loads an FP32 ``onnx.ModelProto`` from an installed package (never a
download), gives calibration and evaluation feeds from disjoint splits of real data and
computes its task metric (higher is better) for any model run by any session::

    >>> from fp8onnx import zoo
    >>> [e.name for e in zoo.entries()][:3]
    ['digits_cnn', 'digits_cnn_bnfold', 'digits_mlp']
    >>> e = zoo.get("digits_mlp")
    >>> m32 = e.evaluate()
    >>> zoo.relative_loss(m32, e.evaluate(e.load()))
    0.0

An entry whose optional package is missing raises ``ZooSkip("skipped: install X ...")``
from ``load``/``evaluate``/feeds; ``entry.install_hint`` says the same up front.
"""
from __future__ import annotations

from typing import Dict, List

from .base import (ORT_FP8_UNSAFE, Feeds, ModelLike, SessionFactory, ZooEntry, ZooSkip,
                   cache_dir, model_bytes, ort_session, relative_loss)
from .digits import digits_entries
from .ocr import ocr_entries
from .minilm import minilm_entries
from .mobilenet import mobilenet_entries
from .yolo import yolo_entries

__all__ = ["ZooEntry", "ZooSkip", "Feeds", "ModelLike", "SessionFactory", "entries", "get",
           "names", "cache_dir", "model_bytes", "ort_session", "relative_loss", "ORT_FP8_UNSAFE"]


def _registry() -> Dict[str, ZooEntry]:
    # Built on each call: entries hold caches (models, FP32 references), none is module state.
    out: Dict[str, ZooEntry] = {}
    for entry in (digits_entries() + ocr_entries() + yolo_entries() + minilm_entries()
                  + mobilenet_entries()):
        out[entry.name] = entry
    return out


def entries() -> List[ZooEntry]:
    """All entries, available or not (``check_available()`` raises ZooSkip for the latter)."""
    return list(_registry().values())


def names() -> List[str]:
    return list(_registry())


def get(name: str) -> ZooEntry:
    """The entry called ``name``; ValueError listing the known names otherwise."""
    reg = _registry()
    if name not in reg:
        raise ValueError(f"unknown zoo entry {name!r}; known: {', '.join(reg)}")
    return reg[name]
