"""Shared fixtures for tests on real models: ``zoo_entry("name")`` gives a zoo entry.

Entries whose packages are in the dev extra (bundled digits, rapidocr's PP-OCR) must run
wherever the dev extra is installed, so a missing package there FAILS the test; any
other entry skips with its "install X" message.
"""
from __future__ import annotations

import pytest

from fp8onnx import zoo

# In pyproject's dev extra: never silently skipped.
MUST_RUN = {"digits_cnn", "digits_cnn_bnfold", "digits_mlp", "ppocr_det", "ppocr_rec", "ppocr_cls"}


@pytest.fixture
def zoo_entry():
    """Factory: ``zoo_entry("digits_cnn")`` -> ZooEntry, or skip/fail with the install hint."""

    def get(name: str) -> zoo.ZooEntry:
        entry = zoo.get(name)
        try:
            entry.check_available()
        except zoo.ZooSkip as e:
            if name in MUST_RUN:
                pytest.fail(f"{name} is in the dev extra but unavailable: {e}")
            pytest.skip(str(e))
        return entry

    return get


@pytest.fixture
def digits_cnn(zoo_entry):
    return zoo_entry("digits_cnn")


@pytest.fixture
def digits_mlp(zoo_entry):
    return zoo_entry("digits_mlp")
