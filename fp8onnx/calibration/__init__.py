"""Calibration: data sources, bounded-memory statistics, range methods and a stats cache.

The compiler's path through it::

    source = open_source("calib.npz", model, samples=128)         # data.py
    stats = collect_stats(model, tensor_names, source)            # collect.py, stats.py
    amax = choose_amax(stats[name], "mse", formats.get("e4m3"))   # methods.py
    save_stats("calib-cache.npz", stats, model)                   # cache.py

Importing this package compiles nothing: the Numba loops compile on the first update.
"""
from .cache import CACHE_VERSION, collect_or_load, load_stats, model_fingerprint, save_stats
from .collect import collect_stats
from .data import CalibrationSource, open_source
from .methods import METHODS, SAFE_AMAX, choose_amax, format_grid
from .stats import DEFAULT_BINS, TensorStats

__all__ = [
    "open_source",
    "CalibrationSource",
    "TensorStats",
    "DEFAULT_BINS",
    "collect_stats",
    "choose_amax",
    "METHODS",
    "SAFE_AMAX",
    "format_grid",
    "save_stats",
    "load_stats",
    "collect_or_load",
    "model_fingerprint",
    "CACHE_VERSION",
]
