"""The zoo entry interface, the skip exception, the cache folder and the default session.

An entry is one real pretrained model with real data and a task metric::

    entry = fp8onnx.zoo.get("digits_cnn")
    model = entry.load()                         # FP32 onnx.ModelProto
    calib = list(entry.calib_feeds(64))          # feed dicts, training-side split
    m_fp32 = entry.evaluate()                    # metric of the FP32 model, higher is better
    m_q = entry.evaluate(quantized_model, session_factory=my_session)
    loss = fp8onnx.zoo.relative_loss(m_fp32, m_q)

``session_factory(model_bytes) -> session`` builds whatever runs the model (onnxruntime
by default, a custom-op session for FP8 models); the session only needs
``.run(output_names, feeds) -> list[np.ndarray]``, onnxruntime's signature.
"""
from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import logging
import os
from pathlib import Path
from types import MappingProxyType
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Tuple, Union

import numpy as np
import onnx

from ..errors import Fp8OnnxError
from ..runtime.session import FP8_UNSAFE_OPTIMIZERS

__all__ = [
    "ZooSkip", "ZooEntry", "Feeds", "ModelLike", "SessionFactory",
    "SPLITS", "cache_dir", "package_file", "require", "ort_session", "model_bytes", "relative_loss", "ORT_FP8_UNSAFE",
    "ExportedEntry", "EXPORT_HINT", "keep_export", "package_version",
]

Feeds = Dict[str, np.ndarray]
ModelLike = Union[onnx.ModelProto, bytes, str, os.PathLike]
SessionFactory = Callable[[bytes], Any]
#: What a missing torch says where an entry's ONNX file is exported from a checkpoint.
EXPORT_HINT = "torch to build the ONNX file once (pip install torch==2.13.0)"
#: Data splits an entry can be scored on.
SPLITS = ("eval", "calib")


def check_split(split: str) -> None:
    """ValueError unless ``split`` names one of the data splits (SPLITS)."""
    if split not in SPLITS:
        raise ValueError(f"split must be 'calib' or 'eval', got {split!r}")


class ZooSkip(Fp8OnnxError):
    """An entry cannot run here: an optional package or file is missing.

    The message says what to install, e.g. ``skipped: install nudenet (pip install nudenet)``.
    """


def require(module: str, hint: str):
    """Import ``module`` or raise ZooSkip naming the pip command in ``hint``."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise ZooSkip(f"skipped: install {hint}") from e


def package_file(package: str, *parts: str, hint: str) -> Path:
    """A data file inside an installed package, found without importing the package
    (silero_vad's ``__init__`` imports torch); ZooSkip naming ``hint`` if it is missing."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ZooSkip(f"skipped: install {hint}")
    path = Path(list(spec.submodule_search_locations)[0], *parts)
    if not path.exists():
        raise ZooSkip(f"skipped: {path} missing; reinstall {hint}")
    return path


def package_version(dist: str) -> str:
    """The installed version of distribution ``dist`` ("unknown" if its metadata is gone):
    cached exports carry it in their names, so a new release exports anew."""
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def cache_dir(*parts: str) -> Path:
    """Folder for models the zoo builds or extracts: $FP8ONNX_CACHE or ~/.cache/fp8onnx/zoo."""
    root = os.environ.get("FP8ONNX_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "fp8onnx", "zoo")
    path = Path(root, *parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


def model_bytes(model: ModelLike) -> bytes:
    """Serialized bytes of a ModelProto, bytes or a path to an .onnx file."""
    if isinstance(model, onnx.ModelProto):
        return model.SerializeToString()
    if isinstance(model, (bytes, bytearray)):
        return bytes(model)
    return Path(model).read_bytes()


#: onnxruntime graph rewrites that are wrong for FP8 Q/DQ: the runtime's one list.
ORT_FP8_UNSAFE = FP8_UNSAFE_OPTIMIZERS


def ort_session(model: bytes, *, ort_qdq: Optional[bool] = None):
    """The default session factory: onnxruntime on CPU, minus its FP8-unsafe rewrites.

    A model with native FP8 QuantizeLinear/DequantizeLinear is evaluated as a rewritten
    copy on fp8onnx's fused kernels instead (``fp8onnx.passes.EmulateQDQ``: the same bits
    as onnxruntime's own Q/DQ, about 2x faster). ``ort_qdq=True`` (e.g.
    ``functools.partial(ort_session, ort_qdq=True)``) or ``FP8ONNX_ORT_QDQ=1`` keeps
    onnxruntime's own kernels, to time the model as deployed.
    """
    import onnxruntime as ort

    from ..evaluation.data import emulated_qdq_session

    emulated = emulated_qdq_session(model, ort_qdq=ort_qdq)
    if emulated is not None:
        return emulated
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    return ort.InferenceSession(model, sess_options=opts, providers=["CPUExecutionProvider"],
                                disabled_optimizers=list(ORT_FP8_UNSAFE))


def relative_loss(metric_fp32: float, metric_q: float) -> float:
    """(metric_fp32 - metric_q) / metric_fp32: the paper's accuracy-loss criterion."""
    if metric_fp32 == 0:
        raise ValueError("relative_loss: FP32 metric is 0, the relative loss is undefined")
    return (metric_fp32 - metric_q) / metric_fp32



def metadata_lines(model: onnx.ModelProto, key: str = "character") -> List[str]:
    """The lines of ``model.metadata_props[key]`` (see :meth:`ZooEntry.metadata_lines`)."""
    return {p.key: p.value for p in model.metadata_props}[key].splitlines()


def keep_export(tmp: Path, path: Path, got: np.ndarray, want: np.ndarray, *, atol: float, what: str,
                model: Optional[onnx.ModelProto] = None) -> Path:
    """Move a torch export from ``tmp`` to ``path`` if onnxruntime's outputs ``got`` match
    torch's ``want`` within ``atol`` (else delete ``tmp`` and raise). ``model``, if given, is
    the export as edited after tracing and is what gets written. The rename is atomic, so a
    concurrent reader never sees half a file."""
    if not np.allclose(got, want, atol=atol):
        tmp.unlink(missing_ok=True)
        raise RuntimeError(f"{what} ONNX export differs from torch by {np.abs(got - want).max():g}")
    if model is not None:
        onnx.save(model, tmp)
    os.replace(tmp, path)
    logging.getLogger("fp8onnx.zoo").info("exported %s to %s", what, path)
    return path


class ZooEntry:
    """One real model with real data and a task metric (higher is better).

    Subclasses set the class attributes and implement ``_load`` (or set ``package_model``),
    ``calib_feeds``, ``eval_feeds`` and ``_evaluate``. ``requires`` lists (module, pip hint)
    pairs checked before anything runs, so a missing package gives ZooSkip, never a silent pass.
    """

    name: str = ""
    domain: str = ""          # cv / nlp / audio
    family: str = ""          # cnn / transformer / rnn / mlp
    source: str = ""          # where the weights come from (a package)
    install_hint: str = ""    # pip command that makes the entry available ("" = bundled)
    metric_name: str = ""
    default_eval_n: int = 32
    requires: tuple = ()      # ((module, hint), ...)
    #: An FP32 model shipped as a file inside a package: (package, path parts...), with the
    #: pip hint ``package_hint``. Looked for before ``requires`` and without importing the
    #: package, so its hint is the one a user sees; the default ``_load`` reads it.
    package_model: tuple = ()
    package_hint: str = ""
    #: The split ``_evaluate`` reads, set by ``evaluate(split=...)`` for the call's duration:
    #: "eval" (held out) or "calib" (the calibration side, for tuning without touching "eval").
    split: str = "eval"
    #: Deployment settings every compile of this model takes (e.g. ``{"fix_inputs": {"sr":
    #: 16000}}`` for a model served at one sample rate); benchmarks pass them on.
    compile_options: Mapping[str, Any] = MappingProxyType({})  # read-only: shared by the class

    def __init__(self):
        self._model: Optional[onnx.ModelProto] = None
        self._ref_cache: dict = {}
        self.last_details: dict = {}  # secondary figures of the last evaluate(), if any

    def __repr__(self) -> str:
        return f"<zoo entry {self.name}: {self.domain}/{self.family} from {self.source}>"

    def check_available(self) -> None:
        """Raise ZooSkip if an optional package the entry needs is missing."""
        if self.package_model:
            self.model_file()
        for module, hint in self.requires:
            require(module, hint)

    def model_file(self) -> Path:
        """The ``package_model`` file (ZooSkip naming ``package_hint`` if it is missing)."""
        package, *parts = self.package_model
        return package_file(package, *parts, hint=self.package_hint)

    def load(self) -> onnx.ModelProto:
        """The FP32 model (a fresh copy each call, so callers may edit it)."""
        copy = onnx.ModelProto()
        copy.CopyFrom(self._proto())
        return copy

    def io_names(self) -> Tuple[str, str]:
        """(first non-initializer input name, first output name) of the FP32 model."""
        model = self._proto()
        inits = {i.name for i in model.graph.initializer}
        inp = next(i.name for i in model.graph.input if i.name not in inits)
        return inp, model.graph.output[0].name

    def _proto(self) -> onnx.ModelProto:
        """The cached FP32 model, shared: never hand it out for editing."""
        self.check_available()
        if self._model is None:
            self._model = self._load()
        return self._model

    def metadata_lines(self, key: str = "character") -> List[str]:
        """The lines of the FP32 model's ``metadata_props[key]``: where PaddlePaddle exports
        (PP-OCR, RapidAI's models) keep their class names or character list."""
        return metadata_lines(self._proto(), key)

    def calib_feeds(self, n: int) -> Iterator[Feeds]:
        """Feed dicts holding up to ``n`` samples of real calibration data.

        ``n`` counts samples (images, text lines, sentences), which an entry may batch
        several to a feed; the data never overlaps ``eval_feeds``.
        """
        raise NotImplementedError

    def eval_feeds(self, n: int) -> Iterator[Feeds]:
        """Feed dicts holding up to ``n`` samples of the held-out evaluation split."""
        raise NotImplementedError

    def evaluate(self, model: Optional[ModelLike] = None, *, n: Optional[int] = None,
                 session_factory: Optional[SessionFactory] = None, split: str = "eval") -> float:
        """Task metric of ``model`` (default: the FP32 model) on ``n`` samples of ``split``.

        ``session_factory(model_bytes)`` must return an object with
        ``.run(output_names, feeds)``; it defaults to onnxruntime on CPU. ``split="calib"``
        scores on the calibration side, so that accuracy-aware tuning never sees the
        held-out split it is reported on; entries whose calibration data has no labels
        score agreement with FP32 there (their ``metric_name`` says so).
        """
        if split not in SPLITS:
            raise ValueError(f"evaluate: split {split!r}: choose one of {', '.join(SPLITS)}")
        self.check_available()
        n = self.default_eval_n if n is None else int(n)
        if n <= 0:
            raise ValueError(f"evaluate: n must be positive, got {n}")
        data = model_bytes(self._proto() if model is None else model)
        session = (session_factory or ort_session)(data)
        self.split = split
        try:
            return float(self._evaluate(session, n))
        finally:
            self.split = "eval"

    def split_feeds(self, n: int) -> Iterator[Feeds]:
        """Feeds of the split ``_evaluate`` is scoring (see ``evaluate(split=...)``)."""
        return self.calib_feeds(n) if self.split == "calib" else self.eval_feeds(n)

    def _load(self) -> onnx.ModelProto:
        if not self.package_model:
            raise NotImplementedError
        return onnx.load(self.model_file())

    def _evaluate(self, session, n: int) -> float:
        raise NotImplementedError

    def _fp32_reference(self, key, compute: Callable[[Any], Any]):
        """``compute(fp32_session)`` once per key: FP32 outputs that agreement metrics compare to."""
        key = ("fp32", self.split, key)
        if key not in self._ref_cache:
            self._ref_cache[key] = compute(ort_session(model_bytes(self._proto())))
        return self._ref_cache[key]


class ExportedEntry(ZooEntry):
    """An entry whose ONNX file is exported once, with torch, from the checkpoint a package
    ships (``package_model``), into ``cache_dir(name)``: later loads need no torch.

    Subclasses set ``onnx_name`` (a file name with ``{version}``, the package's, so a new
    release exports anew; bump its own suffix when the export changes) and implement
    ``export(path)``.
    """

    onnx_name: str = ""

    def check_available(self) -> None:
        """ZooSkip unless the checkpoint and ``requires`` are there and the ONNX file is
        cached or torch can build it."""
        super().check_available()
        if not self.onnx_path().exists():
            require("torch", EXPORT_HINT)

    def onnx_path(self) -> Path:
        """The exported model in the cache, named after the package version it came from."""
        return cache_dir(self.name) / self.onnx_name.format(version=package_version(self.package_model[0]))

    def _load(self) -> onnx.ModelProto:
        path = self.onnx_path()
        if not path.exists():
            self.export(path)
        return onnx.load(path)

    def export(self, path: Path) -> None:
        raise NotImplementedError
