"""Shared fixtures for tests on real models: ``zoo_entry("name")`` gives a zoo entry.

An entry whose packages are all in pyproject's dev extra (the bundled digits models,
rapidocr's PP-OCR, ...) must run wherever the dev extra is installed, so a missing
package FAILS its tests; any other entry skips with its "install X" message.
"""
from __future__ import annotations

import re
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
    reqs = meta.get("project", {}).get("optional-dependencies", {}).get("dev", [])
    return {_NAME.match(r).group(0).lower().replace("_", "-") for r in reqs}


def must_run(entry: zoo.ZooEntry) -> bool:
    """True when every package of the entry's install hint is in the dev extra."""
    wanted = [_NAME.match(tok).group(0).lower().replace("_", "-")
              for tok in entry.install_hint.split()[2:] if not tok.startswith("-")]
    return set(wanted) <= _dev_extra()


@pytest.fixture
def zoo_must_run():
    """``must_run(entry)``: whether the entry's packages are all in the dev extra."""
    return must_run


@pytest.fixture
def zoo_entry():
    """Factory: ``zoo_entry("digits_cnn")`` -> ZooEntry, or skip/fail with the install hint."""

    def get(name: str) -> zoo.ZooEntry:
        entry = zoo.get(name)
        try:
            entry.check_available()
        except zoo.ZooSkip as e:
            if must_run(entry):
                pytest.fail(f"{name} needs only dev-extra packages but is unavailable: {e}")
            pytest.skip(str(e))
        return entry

    return get


@pytest.fixture
def digits_cnn(zoo_entry):
    return zoo_entry("digits_cnn")


@pytest.fixture
def digits_mlp(zoo_entry):
    return zoo_entry("digits_mlp")
