"""Range calibration: pick the clipping threshold ``amax`` of a tensor from its stats.

The scale then follows as ``amax / fmt.max``. Methods (``METHODS``):

* ``max``: the observed max |x| (the paper's max scaling);
* ``percentile``: the given percentile of |x|, read from the histogram;
* ``mse``: the threshold minimising the mean squared error of quantizing the histogram's
  mass onto the *target format's own grid* (non-uniform for FP8), clipping error of the
  mass above the threshold included;
* ``kl``: entropy calibration as TensorRT's, except that the quantized distribution is
  formed by the format's grid cells instead of 128 uniform bins.

The format grid is built from the format's facts (exponent/mantissa bits, bias, max),
so these searches do not depend on the kernels: rounding to the grid is arithmetic on
the binade (nearest, ties to even), checked against ml_dtypes' casts in the tests.
The histogram locates values to one bin width (``hist_range / bins``), which bounds the
precision of every method but ``max``.

>>> import numpy as np
>>> from fp8onnx.calibration.stats import TensorStats
>>> s = TensorStats.empty("x"); s.update(np.linspace(-4, 4, 1001, dtype=np.float32))
>>> choose_amax(s, "max", "e4m3")
4.0
>>> 3.9 < choose_amax(s, "percentile", "e4m3", percentile=99.0) < 4.0
True
"""
from __future__ import annotations

import functools
import logging

import numpy as np

from .. import formats
from ..errors import CalibrationError, UserError
from .stats import TensorStats

__all__ = ["choose_amax", "METHODS", "format_grid", "SAFE_AMAX"]

log = logging.getLogger(__name__)

METHODS = ("max", "percentile", "mse", "kl")
#: amax used for a tensor that is all zero: any scale quantizes zero exactly, and this one
#: leaves room should the deployed tensor not be zero after all.
SAFE_AMAX = 1.0
_MAX_CANDIDATES = 128  # thresholds tried by kl (mse: coarse to fine over bin edges)


@functools.lru_cache(maxsize=None)
def _grid_cached(name: str) -> np.ndarray:
    fmt = formats.get(name)
    if not fmt.is_float:
        return np.arange(0.0, fmt.max + 1.0)
    m = fmt.man_bits
    sub = np.arange(2 ** m) * fmt.min_subnormal  # 0 and the subnormals
    top = int(np.floor(np.log2(fmt.max)))
    normals = [(1.0 + k / 2 ** m) * 2.0 ** e
               for e in range(1 - fmt.bias, top + 1) for k in range(2 ** m)]
    grid = np.concatenate([sub, np.asarray(normals)])
    grid = np.unique(grid[grid <= fmt.max])
    grid.setflags(write=False)
    return grid


def format_grid(fmt) -> np.ndarray:
    """The non-negative values of format ``fmt`` in increasing order (0 ... fmt.max).

    >>> g = format_grid("e4m3"); len(g), float(g[1]), float(g[-1])
    (127, 0.001953125, 448.0)
    """
    return _grid_cached(formats.get(fmt).name)


def _round_to_format(u: np.ndarray, fmt) -> np.ndarray:
    """Nearest value of ``fmt`` to each u >= 0, clipped at fmt.max (ties to even).

    Arithmetic instead of a search of :func:`format_grid`: the spacing at u is
    2^(e - man_bits) with e the binade of u, floored at the subnormal binade
    (mse went from 32 to 1.5 ms per tensor on PP-OCR cls with this and coarse-to-fine).
    """
    u = np.minimum(u, fmt.max)
    if not fmt.is_float:
        return np.round(u)
    _, ex = np.frexp(u)  # u = f * 2^ex, f in [0.5, 1): the binade is ex - 1
    step = np.ldexp(1.0, np.maximum(ex - 1, 1 - fmt.bias) - fmt.man_bits)
    return np.minimum(np.round(u / step) * step, fmt.max)


def _mse_errors(cands, centres, counts, fmt) -> np.ndarray:
    errs = np.empty(cands.size)
    for i in range(0, cands.size, 64):  # 64 x nonzero-bins floats at a time
        scale = cands[i:i + 64, None] / fmt.max
        q = _round_to_format(centres[None, :] / scale, fmt) * scale
        errs[i:i + 64] = ((centres[None, :] - q) ** 2 * counts).sum(axis=1)
    return errs


def _mse(stats: TensorStats, fmt) -> float:
    w = stats.bin_width
    nz = np.nonzero(stats.hist)[0]
    centres = (nz + 0.5) * w
    counts = stats.hist[nz].astype(np.float64)
    last = min(stats.bins, int(np.ceil(stats.amax / w)))
    # Coarse to fine: every 16th bin edge, then every edge around the best coarse one.
    edges = np.arange(1, last + 1)
    coarse = np.unique(np.append(edges[::16], last))
    errs = _mse_errors(coarse * w, centres, counts, fmt)
    k = int(coarse[int(np.argmin(errs))])
    fine = edges[max(0, k - 17):k + 16]
    errs = _mse_errors(fine * w, centres, counts, fmt)
    best = int(fine[int(np.argmin(errs))])
    return float(stats.amax if best == last else best * w)


def _kl(stats: TensorStats, fmt) -> float:
    """TensorRT-style entropy calibration with the format's grid cells as quantized bins.

    For each candidate threshold (bin edge i): P = the first i bins with the clipped mass
    added to the last; Q = P's unclipped bins quantized to the grid at scale t/fmt.max,
    each grid cell's mass spread evenly over its non-empty bins. One candidate at a time:
    evaluating all at once as (candidates x bins) arrays measured 2.5x slower (more
    elements: each row spans every bin, not just the i below its threshold).
    """
    grid = format_grid(fmt)
    hist = stats.hist.astype(np.float64)
    w = stats.bin_width
    last = min(stats.bins, int(np.ceil(stats.amax / w)))
    start = min(last, max(2, stats.bins // 16))  # as TensorRT: not below 1/16 of the range
    ends = np.unique(np.linspace(start, last, min(_MAX_CANDIDATES, last - start + 1)).astype(int))
    total = hist.sum()
    cum = np.cumsum(hist)
    best, best_t = np.inf, stats.amax
    for i in ends:
        t = stats.amax if i == last else i * w
        h = hist[:i]
        p = h.copy()
        p[-1] += total - cum[i - 1]  # the clipped mass lands on the edge
        centres = (np.arange(i) + 0.5) * w
        cell = np.searchsorted(grid, _round_to_format(centres / (t / fmt.max), fmt))
        mass = np.bincount(cell, weights=h, minlength=grid.size)
        used = np.bincount(cell, weights=(h > 0), minlength=grid.size)
        q = np.where(h > 0, mass[cell] / np.maximum(used[cell], 1.0), 0.0)
        kl = _kl_rows(p[None], q[None])[0]
        if kl < best:
            best, best_t = kl, t
    return float(best_t)


def _kl_rows(p: np.ndarray, q: np.ndarray, eps: float = 1e-4) -> np.ndarray:
    """KL(P || Q) of each row, Q smoothed as TensorRT (eps where P has mass, Q none)."""
    p = p / p.sum(axis=1, keepdims=True)
    qs = q.sum(axis=1, keepdims=True)
    q = q / np.where(qs > 0, qs, 1.0)
    q = np.where((q == 0) & (p > 0), eps, q)
    q = q / q.sum(axis=1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, p * np.log(p / q), 0.0)
    out = terms.sum(axis=1)
    out[qs[:, 0] <= 0] = np.inf
    return out


def choose_amax(stats: TensorStats, method: str, fmt, *, percentile: float = 99.99) -> float:
    """The clipping threshold of ``stats`` for ``method`` and target format ``fmt``.

    Raises UserError for an unknown method, CalibrationError for stats holding NaN/Inf
    or a tensor that was not observed. An all-zero tensor gets ``SAFE_AMAX`` with a
    warning, never a zero scale.
    """
    if method not in METHODS:
        raise UserError(f"unknown calibration method {method!r}: choose one of {', '.join(METHODS)}")
    fmt = formats.get(fmt)
    name = stats.name
    if stats.missing:
        raise CalibrationError(f"tensor {name!r} has no calibration stats ({stats.missing}): "
                               "leave it in float or quantize it dynamically")
    if stats.nan_count or stats.inf_count or not np.isfinite(stats.amax):
        raise CalibrationError(
            f"tensor {name!r} held {stats.nan_count} NaN and {stats.inf_count} Inf values "
            "during calibration: check the calibration data and the model (e.g. log of zero, "
            "overflow), or leave this tensor in float")
    if stats.amax <= 0.0 or stats.finite_count == 0:
        log.warning("calibration: tensor %r is all zero on the calibration data; using "
                    "amax=%g so its scale is not zero", name, SAFE_AMAX)
        return SAFE_AMAX
    if method == "max":
        return float(stats.amax)
    if method == "percentile":
        if not 0.0 < percentile <= 100.0:
            raise UserError(f"percentile must be in (0, 100] (got {percentile})")
        amax = stats.quantile(percentile / 100.0)
    elif method == "mse":
        amax = _mse(stats, fmt)
    else:
        amax = _kl(stats, fmt)
    if not amax > 0.0:
        log.warning("calibration: %s threshold of tensor %r is 0 (the tensor is almost all "
                    "zero); using its max %g instead", method, name, stats.amax)
        return float(stats.amax)
    return float(min(amax, stats.amax))
