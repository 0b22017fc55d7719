"""Error-compensating rounding of a weight onto an FP8 grid (GPTQ, Frantar et al. 2023).

Rounding each weight to its nearest grid value ignores that a layer's inputs correlate:
on MobileNetV2's first depthwise Conv, whose 3x3 edge kernels hold large weights that
cancel, E4M3's nearest values take the logits to 6.6 dB of SQNR against FP32 with every
other layer exact. GPTQ rounds the inputs' columns one at a time and moves each rounding
error onto the columns not yet rounded, weighted by the inverse of the Gram matrix
``H = X^T X`` of the layer's inputs, so that ``||X W^T - X Q^T||`` stays small rather than
``||W - Q||``. With an ``H`` that is diagonal (uncorrelated inputs) there is nothing to
compensate and the result is plain nearest rounding.

Everything here is a pure function of arrays. The grid is the format's with one scale per
row (output channel), fixed before rounding; every value returned is on that grid
(``fake_quant`` of it returns it unchanged). Each row's largest-magnitude weights are
*locked*: they never receive compensation, so they round to the format's max and the
max-scaled scale of the returned weight is the scale used here (the compiler re-derives
weight scales from the weight it stores).
"""
from __future__ import annotations

from typing import Optional, Tuple

import numpy as np

from .. import kernels

__all__ = ["gptq_round", "output_error", "nearest", "round_layer"]

#: Columns rounded between two updates of the columns after them (as GPTQ's lazy batches).
BLOCK = 128


def _inverse_factor(gram: np.ndarray, damp: float) -> np.ndarray:
    """Upper Cholesky factors U of (H + damping)^-1 (H^-1 = U^T U) for stacked [G, K, K]
    Gram matrices, damping raised (per matrix, where needed) until the factorisation succeeds."""
    h = np.array(gram, dtype=np.float64, copy=True)
    diag = np.diagonal(h, axis1=1, axis2=2).copy()
    dead = diag <= 0
    g_idx, k_idx = np.nonzero(dead)
    h[g_idx, k_idx, k_idx] = 1.0  # an input that is always 0: its weights only round
    mean = np.mean(np.diagonal(h, axis1=1, axis2=2), axis=1)
    eye = np.eye(h.shape[1])

    def factor(hd):
        inv = np.linalg.inv(hd)
        return np.swapaxes(np.linalg.cholesky((inv + np.swapaxes(inv, -1, -2)) / 2), -1, -2)

    try:
        return factor(h + eye * (damp * mean)[:, None, None])
    except np.linalg.LinAlgError:
        pass
    out = np.empty_like(h)
    for g in range(len(h)):
        out[g] = eye  # only a degenerate H stays here: compensation off, nearest rounding
        for k in range(6):
            try:
                out[g] = factor(h[g] + eye * (damp * (10 ** k) * mean[g]))
                break
            except np.linalg.LinAlgError:
                continue
    return out


def gptq_round(w: np.ndarray, gram: np.ndarray, fmt, scale: np.ndarray, *, damp: float = 0.01,
               block: int = BLOCK, lock: Optional[np.ndarray] = None) -> np.ndarray:
    """``w`` [rows, K] rounded onto ``fmt``'s grid times ``scale[row]`` (float32, saturating).

    ``gram``: [K, K] Gram matrix of the inputs the rows multiply. ``damp``: added to H's
    diagonal as a fraction of its mean (GPTQ's 1%). ``lock``: [rows, K] bool, weights kept
    out of compensation; default: each row's largest |w| (see the module note).
    Stacked groups (a grouped Conv) go together: ``w`` [G, rows, K], ``gram`` [G, K, K],
    ``scale`` [G, rows], ``lock`` [G, rows, K].
    """
    w = np.asarray(w, dtype=np.float32)
    single = w.ndim == 2
    if single:
        w, gram = w[None], np.asarray(gram)[None]
        scale = np.asarray(scale).reshape(1, -1)
        lock = None if lock is None else np.asarray(lock)[None]
    groups, rows, k = w.shape
    scale = np.asarray(scale, dtype=np.float32).reshape(groups, rows)
    if lock is None:
        amax = np.max(np.abs(w), axis=2, keepdims=True) if k else np.zeros((groups, rows, 1), np.float32)
        lock = (np.abs(w) >= amax) & (amax > 0)
    u = _inverse_factor(gram, damp)
    work = w.astype(np.float64)
    fixed = w.astype(np.float64)
    flat_scale = scale.reshape(-1)
    q = np.empty_like(w)
    for i1 in range(0, k, block):
        i2 = min(i1 + block, k)
        errs = np.zeros((groups, rows, i2 - i1))
        for i in range(i1, i2):
            col = work[:, :, i]
            qc = kernels.fake_quant(fmt, np.ascontiguousarray(col, dtype=np.float32).reshape(-1, 1),
                                    flat_scale, axis=0).reshape(groups, rows)
            q[:, :, i] = qc
            err = (col - qc) / u[:, i, i][:, None]
            errs[:, :, i - i1] = err
            work[:, :, i + 1:i2] -= err[:, :, None] * u[:, None, i, i + 1:i2]
            lk = lock[:, :, i + 1:i2]
            work[:, :, i + 1:i2][lk] = fixed[:, :, i + 1:i2][lk]
        if i2 < k:
            work[:, :, i2:] -= np.matmul(errs, u[:, i1:i2, i2:])
            lk = lock[:, :, i2:]
            work[:, :, i2:][lk] = fixed[:, :, i2:][lk]
    return q[0] if single else q


def output_error(w: np.ndarray, q: np.ndarray, gram: np.ndarray) -> float:
    """sum over rows of (w - q) H (w - q)^T: the squared output error over the inputs of H
    (stacked groups: [G, rows, K] weights with [G, K, K] matrices)."""
    e = np.asarray(w, dtype=np.float64) - np.asarray(q, dtype=np.float64)
    h = np.asarray(gram, dtype=np.float64)
    if e.ndim == 2:
        e, h = e[None], h[None]
    return float(np.einsum("grk,gkl,grl->", e, h, e))


def nearest(w: np.ndarray, fmt, scale: np.ndarray) -> np.ndarray:
    """Plain nearest rounding of ``w`` [rows, K] with ``scale[row]`` (the baseline)."""
    return kernels.fake_quant(fmt, np.ascontiguousarray(w, dtype=np.float32),
                              np.asarray(scale, dtype=np.float32), axis=0)


def round_layer(w_rows: np.ndarray, grams: np.ndarray, fmt, scale: np.ndarray) -> Tuple[np.ndarray, float, float]:
    """GPTQ over each group's rows (``grams``: [G, K, K], the rows split evenly into G
    groups); returns (rounded rows, output error of nearest rounding, of GPTQ's)."""
    groups = len(grams)
    rows, k = w_rows.shape
    w3 = np.asarray(w_rows, dtype=np.float32).reshape(groups, rows // groups, k)
    s2 = np.asarray(scale, dtype=np.float32).reshape(groups, rows // groups)
    q3 = gptq_round(w3, grams, fmt, s2)
    near = nearest(w_rows, fmt, scale).reshape(w3.shape)
    return q3.reshape(rows, k), output_error(w3, near, grams), output_error(w3, q3, grams)
