"""Numba loops behind :mod:`fp8onnx.calibration.stats`: one pass per batch, no allocation
but an 8 KB scratch.

Pure loops that never raise; :class:`~fp8onnx.calibration.stats.TensorStats` validates
and calls them. This module is imported lazily (on the first update), so that
``import fp8onnx`` compiles nothing; ``cache=True`` keeps the compiled code on disk.
"""
from __future__ import annotations

import math

import numba
import numpy as np

__all__ = ["reduce_batch", "accumulate_hist"]


@numba.njit(cache=True, nogil=True)
def reduce_batch(x, out):  # pragma: no cover - compiled
    """Write (min, max, amax, nan_count, inf_count) of flat ``x`` into float64 ``out``.

    min/max/amax ignore NaN; Inf counts in min/max/amax (so a caller can see it) and in
    ``inf_count``. With no non-NaN element, min=+inf, max=-inf, amax=0.
    """
    lo = np.inf
    hi = -np.inf
    amax = 0.0
    nan = 0
    inf = 0
    for i in range(x.size):
        v = float(x[i])
        if math.isnan(v):
            nan += 1
            continue
        if math.isinf(v):
            inf += 1
        if v < lo:
            lo = v
        if v > hi:
            hi = v
        a = abs(v)
        if a > amax:
            amax = a
    out[0] = lo
    out[1] = hi
    out[2] = amax
    out[3] = nan
    out[4] = inf


@numba.njit(cache=True, nogil=True)
def accumulate_hist(x, hist, upper, bits, binades):  # pragma: no cover - compiled
    """Add |x| of flat ``x`` to ``hist`` (bins of width upper/len(hist) from 0), and to
    ``binades`` by the exponent field of ``bits`` (x's float32 bit patterns, uint32).

    NaN and Inf are skipped (the caller counts them); values at or above ``upper`` go to
    the last bin (the caller grows ``upper`` first, so that is only rounding).
    ``upper == 0`` means every finite value is zero: all go to bin 0.
    """
    nb = hist.size
    inv = nb / upper if upper > 0.0 else 0.0
    # Neighbouring values mostly share a binade: four interleaved counter rows keep one
    # increment from waiting on the last (the loop ran ~15% faster, measured).
    rows = np.zeros((4, binades.size), np.int64)
    for i in range(x.size):
        v = float(x[i])
        if math.isnan(v) or math.isinf(v):
            continue
        k = int(abs(v) * inv)
        if k >= nb:
            k = nb - 1
        hist[k] += 1
        rows[i & 3, (bits[i] >> 23) & 0xFF] += 1
    for j in range(4):
        for e in range(binades.size):
            binades[e] += rows[j, e]
