"""A stats cache on disk, so recompiling with another format or method skips the model run.

The cache is one ``.npz``: a JSON header (format version, model fingerprint, per-tensor
scalars) plus one histogram array per tensor. The fingerprint is a sha256 of the graph
(nodes, initializers, inputs, outputs) with doc strings and value_info left out, so
re-saving or re-annotating a model keeps its cache while any change to structure or
weights invalidates it.

A cache written for another model raises :class:`~fp8onnx.errors.CalibrationError`.
Missing tensors: :func:`load_stats` returns what the file has (``require=`` makes it
raise naming the missing ones); :func:`collect_or_load` collects only the tensors the
cache lacks and writes the merged cache back.

>>> import numpy as np, tempfile, os
>>> from onnx import helper, TensorProto as T
>>> g = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
...     [helper.make_tensor_value_info("x", T.FLOAT, [2])], [helper.make_tensor_value_info("y", T.FLOAT, [2])])
>>> m = helper.make_model(g)
>>> s = TensorStats.empty("y"); s.update(np.array([1.0, 3.0], np.float32))
>>> path = os.path.join(tempfile.mkdtemp(), "c.npz")
>>> save_stats(path, {"y": s}, m); load_stats(path, m)["y"].amax
3.0
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import zipfile
from typing import Optional

import numpy as np
import onnx

from ..errors import CalibrationError
from .stats import TensorStats

__all__ = ["save_stats", "load_stats", "collect_or_load", "model_fingerprint", "CACHE_VERSION"]

log = logging.getLogger(__name__)

CACHE_VERSION = 2  # 2: per-binade counts beside the histogram
_SCALARS = ("amax", "min", "max", "count", "nan_count", "inf_count", "hist_range", "missing")


def _strip(graph: onnx.GraphProto) -> None:
    graph.doc_string = ""
    del graph.value_info[:]
    for node in graph.node:
        node.doc_string = ""
        for attr in node.attribute:
            attr.doc_string = ""
            if attr.HasField("g"):
                _strip(attr.g)
            for sub in attr.graphs:
                _strip(sub)


def model_fingerprint(model: onnx.ModelProto) -> str:
    """sha256 hex digest of ``model``'s graph and opsets, without doc strings or value_info."""
    g = onnx.GraphProto()
    g.CopyFrom(model.graph)
    _strip(g)
    h = hashlib.sha256()
    h.update(g.SerializeToString(deterministic=True))
    for op in sorted((o.domain, o.version) for o in model.opset_import):
        h.update(repr(op).encode())
    return h.hexdigest()


def save_stats(path, stats: dict, model: onnx.ModelProto) -> None:
    """Write ``stats`` ({name: TensorStats}) for ``model`` to the ``.npz`` at ``path``."""
    path = os.fspath(path)
    header = {
        "version": CACHE_VERSION,
        "fingerprint": model_fingerprint(model),
        "tensors": [{"name": s.name, **{k: _jsonable(getattr(s, k)) for k in _SCALARS}}
                    for s in stats.values()],
    }
    arrays = {f"hist_{i}": s.hist for i, s in enumerate(stats.values())}
    arrays.update({f"binades_{i}": s.binades for i, s in enumerate(stats.values())})
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:  # a file object: np.savez would append .npz to a bare name
        np.savez(f, header=np.array(json.dumps(header)), **arrays)
    os.replace(tmp, path)  # never leave a half-written cache behind


def _jsonable(v):
    if isinstance(v, float) and not np.isfinite(v):
        return repr(v)  # "inf", "-inf", "nan": JSON has no literal for them
    return v


def _scalar(v):
    return float(v) if isinstance(v, str) and v in ("inf", "-inf", "nan") else v


def load_stats(path, model: onnx.ModelProto, *, require=None) -> dict:
    """The stats saved at ``path``, checked to belong to ``model``.

    ``require``: tensor names that must be present (CalibrationError lists any missing).
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise CalibrationError(f"calibration cache {path} not found: check the path")
    try:
        with np.load(path, allow_pickle=False) as z:
            header = json.loads(str(z["header"]))
            hists = {k: z[k] for k in z.files if k.startswith(("hist_", "binades_"))}
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError, TypeError) as e:
        raise CalibrationError(
            f"{path} is not an fp8onnx calibration cache ({e}): delete it or pass a "
            "different --calib-cache path") from e
    if header.get("version") != CACHE_VERSION:
        raise CalibrationError(
            f"calibration cache {path} has version {header.get('version')}, this fp8onnx "
            f"writes {CACHE_VERSION}: delete the file to recollect")
    if header.get("fingerprint") != model_fingerprint(model):
        raise CalibrationError(
            f"calibration cache {path} was written for a different model (fingerprint "
            "mismatch): delete the file or pass a different --calib-cache path")
    stats = {}
    for i, t in enumerate(header["tensors"]):
        s = TensorStats(name=t["name"], hist=hists[f"hist_{i}"].astype(np.int64),
                        binades=hists[f"binades_{i}"].astype(np.int64),
                        **{k: _scalar(t[k]) for k in _SCALARS})
        stats[s.name] = s
    if require is not None:
        missing = [n for n in require if n not in stats]
        if missing:
            raise CalibrationError(
                f"calibration cache {path} lacks stats for tensors {missing}: delete it to "
                "recollect, or use collect_or_load() to collect just those")
    return stats


def collect_or_load(model: onnx.ModelProto, tensor_names: list, source, *,
                    cache: Optional[str] = None, known: Optional[dict] = None, **collect_kwargs) -> dict:
    """Stats of ``tensor_names``: from ``cache`` where present, then from ``known``
    (stats already measured on this model, e.g. by BatchNorm calibration's staged run),
    collected otherwise.

    Only the tensors the cache and ``known`` lack are collected (the source is not
    touched when they have them all); the merged stats are written back to ``cache``.
    Non-float tensors are absent from the result, as with ``collect_stats``.
    """
    from .collect import collect_stats

    have = load_stats(cache, model) if cache and os.path.exists(cache) else {}
    fresh = {n: st for n, st in (known or {}).items() if n in tensor_names and n not in have}
    have.update(fresh)
    need = [n for n in dict.fromkeys(tensor_names) if n not in have]
    if fresh and not need and cache:
        save_stats(cache, have, model)
    if need:
        log.info("calibration: collecting %d tensors (%d from cache %s)", len(need),
                 len(tensor_names) - len(need), cache)
        have.update(collect_stats(model, need, source, **collect_kwargs))
        if cache:
            save_stats(cache, have, model)
    return {n: have[n] for n in tensor_names if n in have}
