"""The calibration package's public surface: curated __all__, docstrings, runnable examples."""
from __future__ import annotations

import doctest
import importlib

import pytest

import fp8onnx.calibration as calibration

MODULES = ["data", "validate", "stats", "collect", "methods", "cache"]


def test_public_api_is_curated():
    assert set(calibration.__all__) == {
        "open_source", "CalibrationSource", "TensorStats", "DEFAULT_BINS", "collect_stats",
        "choose_amax", "METHODS", "SAFE_AMAX", "format_grid", "save_stats", "load_stats",
        "collect_or_load", "model_fingerprint", "CACHE_VERSION"}
    for name in calibration.__all__:
        obj = getattr(calibration, name)
        if callable(obj):
            assert obj.__doc__ and obj.__doc__.strip(), name
    assert calibration.METHODS == ("max", "percentile", "mse", "kl")


@pytest.mark.parametrize("name", MODULES)
def test_module_examples_run(name):
    mod = importlib.import_module(f"fp8onnx.calibration.{name}")
    assert mod.__doc__ and ">>>" in mod.__doc__, name
    result = doctest.testmod(mod)
    assert result.attempted > 0 and result.failed == 0
