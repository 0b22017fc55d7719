"""Google's Magika file-type classifier (``standard_v3_3`` model from the ``magika`` wheel).

The model reads the first and last 1024 bytes of a file and scores 214 content types.
Structure (inspected): one-hot of each byte (257 values, 256 = padding) -> Dense 128 ->
GELU -> LayerNorm -> Conv1D -> GELU -> global max pool -> LayerNorm -> Dense -> softmax,
exported from JAX by tf2onnx (opset 15). Input ``bytes`` int32 [batch, 2048]; output
``target_label`` float32 [batch, 214] (probabilities).

Features are built as magika 1.0's ``Magika._extract_features_from_seekable`` does (our
own code, so a change of its private functions cannot change the data silently; a test
checks our FP32 prediction against ``Magika().identify_path``): read at most
``block_size`` bytes from the start and from the end, ``lstrip``/``rstrip`` ASCII
whitespace, keep ``beg_size`` bytes padded at the end and ``end_size`` bytes padded at
the front with ``padding_token``. Files magika does not send to the model (shorter than
``min_file_size_for_dl`` bytes after stripping) are skipped.

Real input: files already on disk that have nothing to do with this project: the
Python standard library and the packages of the project's dev extra (numpy, scipy,
matplotlib, scikit-image, scikit-learn, Pillow, onnx), walked in sorted order. The true
label comes from the file extension (``EXTENSIONS``). Up to ``PER_LABEL`` files per
label are picked evenly along each label's sorted list, and each file goes to the
``calib`` or ``eval`` split by a CRC of its path relative to its root, so the splits are
disjoint and stable across machines. Packages or files that are missing are skipped.

Metric: top-1 accuracy against the extension's label (the paper's metric: accuracy
against labels); ``last_details["fp32_agreement"]`` is top-1 agreement with FP32::

    >>> fp8onnx.zoo.get("magika_v3").evaluate()      # doctest: +SKIP
    0.84...
"""
from __future__ import annotations

import importlib.util
import json
import os
import sysconfig
import zlib
from functools import lru_cache
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Tuple

import numpy as np
import onnx

from .base import Feeds, ZooEntry, ZooSkip

__all__ = ["MagikaEntry", "features", "model_dir", "pick_files", "EXTENSIONS"]

HINT = "magika (pip install magika)"
MODEL = "standard_v3_3"
PER_LABEL = 32
BATCH = 64
#: Packages (dev extra) whose installed files are data; missing ones are skipped.
PACKAGES = ("numpy", "scipy", "matplotlib", "skimage", "sklearn", "PIL", "onnx")
#: Folders whose files are malformed on purpose (CPython's test_tomllib/data/invalid): the
#: extension's label is not their true type.
SKIP_DIRS = ("site-packages", "dist-packages", "invalid")

#: File extension -> Magika label, for extensions whose content type the extension settles
#: (as magika's own content_types_kb lists them). ``.h``/``.hpp`` are left out: a header is
#: C or C++ (magika's table gives neither), and these trees hold both kinds.
EXTENSIONS: Dict[str, str] = {
    ".py": "python", ".pyi": "python", ".pyc": "pythonbytecode", ".json": "json",
    ".html": "html", ".htm": "html", ".xml": "xml", ".svg": "svg", ".txt": "txt",
    ".csv": "csv", ".md": "markdown", ".rst": "rst", ".toml": "toml", ".yaml": "yaml",
    ".yml": "yaml", ".ini": "ini", ".css": "css", ".js": "javascript", ".c": "c",
    ".cpp": "cpp", ".cc": "cpp", ".f": "fortran",
    ".f90": "fortran", ".sh": "shell", ".bat": "batch", ".ps1": "powershell",
    ".proto": "proto", ".pem": "pem", ".png": "png", ".gif": "gif", ".jpg": "jpeg",
    ".jpeg": "jpeg", ".bmp": "bmp", ".ico": "ico", ".tif": "tiff", ".tiff": "tiff",
    ".webp": "webp", ".wav": "wav", ".pdf": "pdf", ".ttf": "ttf", ".otf": "otf",
    ".zip": "zip", ".whl": "zip", ".gz": "gzip", ".bz2": "bzip", ".xz": "xz",
    ".tar": "tar", ".so": "elf", ".npy": "npy", ".npz": "npz", ".pkl": "pickle",
    ".pickle": "pickle", ".onnx": "onnx",
}


def model_dir() -> Path:
    """The model folder inside the installed magika wheel (found without importing it)."""
    spec = importlib.util.find_spec("magika")
    if spec is None or not spec.submodule_search_locations:
        raise ZooSkip(f"skipped: install {HINT}")
    path = Path(list(spec.submodule_search_locations)[0], "models", MODEL)
    if not (path / "model.onnx").exists() or not (path / "config.min.json").exists():
        raise ZooSkip(f"skipped: {path} has no model.onnx/config.min.json; install {HINT}")
    return path


@lru_cache(maxsize=1)
def _config() -> dict:
    return json.loads((model_dir() / "config.min.json").read_text())


def features(data: bytes, config: dict) -> Optional[np.ndarray]:
    """The model input for a file's ``data`` (int32 [beg_size + end_size]), or None when
    magika would not run the model on it (too few bytes left after stripping)."""
    beg_size, end_size = config["beg_size"], config["end_size"]
    pad, block = config["padding_token"], config["block_size"]
    if config.get("mid_size", 0) or config.get("use_inputs_at_offsets", False):
        raise ValueError("magika config asks for mid/offset features, which v3 never used")
    n = min(block, len(data))
    beg = data[:n].lstrip()[:beg_size]              # bytes.strip: ASCII whitespace only
    end = data[len(data) - n:].rstrip()
    end = end[max(0, len(end) - end_size):]
    if len(data) < config["min_file_size_for_dl"] or len(beg) < config["min_file_size_for_dl"]:
        return None
    out = np.full(beg_size + end_size, pad, np.int32)
    out[:len(beg)] = np.frombuffer(beg, np.uint8)
    out[beg_size + end_size - len(end):] = np.frombuffer(end, np.uint8)
    return out


def _roots() -> List[Tuple[str, Path]]:
    roots = [("stdlib", Path(sysconfig.get_paths()["stdlib"]))]
    for name in PACKAGES:
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.submodule_search_locations:
            roots.append((name, Path(list(spec.submodule_search_locations)[0])))
    return roots


def _walk(name: str, root: Path) -> Iterator[Tuple[str, Path]]:
    """(key, path) of every file under ``root``, sorted, minus ``SKIP_DIRS`` (the stdlib
    without its site-packages, whose packages are chosen in ``PACKAGES``)."""
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d not in SKIP_DIRS)
        for f in sorted(files):
            path = Path(folder, f)
            yield f"{name}/{path.relative_to(root).as_posix()}", path


@lru_cache(maxsize=1)
def pick_files() -> Tuple[Tuple[str, str, Path], ...]:
    """(key, label, path) of the chosen files, both splits, labels in sorted order."""
    labels = set(_config()["target_labels_space"])
    by_label: Dict[str, List[Tuple[str, Path]]] = {}
    for name, root in _roots():
        for key, path in _walk(name, root):
            label = EXTENSIONS.get(path.suffix.lower())
            if label in labels and not path.is_symlink():
                by_label.setdefault(label, []).append((key, path))
    out = []
    for label in sorted(by_label):
        files = by_label[label]
        step = max(1.0, len(files) / PER_LABEL)  # evenly along the sorted list
        for i in range(min(PER_LABEL, len(files))):
            key, path = files[int(i * step)]
            out.append((key, label, path))
    return tuple(out)


def split_of(key: str) -> str:
    return "eval" if zlib.crc32(key.encode()) % 2 else "calib"


@lru_cache(maxsize=2)
def _samples(split: str) -> Tuple[np.ndarray, Tuple[str, ...], Tuple[Path, ...]]:
    """(features [N, 2048] int32, labels, paths) of one split, labels interleaved so the
    first few samples already span many types."""
    config = _config()
    per_label: Dict[str, List[Tuple[np.ndarray, Path]]] = {}
    for key, label, path in pick_files():
        if split_of(key) != split:
            continue
        try:
            with open(path, "rb") as f:
                data = f.read()   # files here are small; magika reads 2 x 4 KiB at most
        except OSError:
            continue
        x = features(data, config)
        if x is not None:
            per_label.setdefault(label, []).append((x, path))
    rows = []
    for i in range(max(map(len, per_label.values()), default=0)):
        for label in sorted(per_label):
            if i < len(per_label[label]):
                rows.append((per_label[label][i][0], label, per_label[label][i][1]))
    if not rows:
        raise ZooSkip("skipped: no files found for the magika entry")
    return (np.stack([r[0] for r in rows]), tuple(r[1] for r in rows), tuple(r[2] for r in rows))


class MagikaEntry(ZooEntry):
    """Magika standard_v3_3; metric: top-1 accuracy against extension labels."""

    name = "magika_v3"
    domain, family = "bytes", "cnn"
    source = f"magika (package file magika/models/{MODEL}/model.onnx)"
    install_hint = "pip install magika"
    metric_name = "top-1 accuracy vs file-extension labels"
    default_eval_n = 400
    requires = (("magika", HINT),)

    def check_available(self) -> None:
        model_dir()   # find_spec only: importing magika also pulls in click

    def _load(self) -> onnx.ModelProto:
        return onnx.load(model_dir() / "model.onnx")

    def labels(self) -> List[str]:
        return list(_config()["target_labels_space"])

    def samples(self, split: str, n: int):
        """(features, labels, paths) of the first ``n`` files of ``split``."""
        self.check_available()
        x, labels, paths = _samples(split)
        return x[:n], labels[:n], paths[:n]

    def _feeds(self, split: str, n: int) -> Iterator[Feeds]:
        x = self.samples(split, n)[0]
        for i in range(0, len(x), BATCH):
            yield {"bytes": x[i:i + BATCH]}

    def calib_feeds(self, n: int) -> Iterator[Feeds]:
        """``n`` calibration files, batches of 64, int32 [batch, 2048]."""
        return self._feeds("calib", n)

    def eval_feeds(self, n: int) -> Iterator[Feeds]:
        return self._feeds("eval", n)

    def predict(self, session, split: str, n: int) -> np.ndarray:
        """Class probabilities [n, 214] of the first ``n`` files of ``split``."""
        return np.concatenate([session.run(["target_label"], f)[0]
                               for f in self._feeds(split, n)])

    def _evaluate(self, session, n: int) -> float:
        split = getattr(self, "split", "eval")
        names = np.array(self.labels())
        truth = np.array(self.samples(split, n)[1])
        ref = self._fp32_reference(("top1", n), lambda s: self.predict(s, split, n).argmax(1))
        got = self.predict(session, split, n).argmax(1)
        self.last_details = {"fp32_agreement": float((got == ref).mean()),
                             "fp32_accuracy": float((names[ref] == truth).mean())}
        return float((names[got] == truth).mean())


def magika_entries():
    return [MagikaEntry()]
