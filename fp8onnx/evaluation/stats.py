"""Streaming accumulators for evaluation: sums of squares, maxima, counts, log2 histograms.

Every figure is accumulated batch by batch in float64, so memory stays bounded by the
number of tensors (one small record each), never by samples x activations.

* SQNR (dB) of an approximation ``q`` of a reference ``r``:
  ``10 log10(sum r^2 / sum (q - r)^2)``; ``inf`` when the two are identical.
* Cosine similarity: ``sum r q / sqrt(sum r^2 sum q^2)``, over all elements of all
  samples taken as one vector.

>>> import numpy as np
>>> acc = ErrorStats()
>>> acc.update(np.array([1.0, 2.0]), np.array([1.0, 2.5]))
>>> round(acc.sqnr_db, 3), round(acc.cosine, 4), acc.max_abs_error
(13.01, 0.9965, 0.5)
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = ["sqnr_db", "cosine", "ErrorStats", "Log2Histogram", "HIST_LO", "HIST_HI", "HIST_PER_OCTAVE"]

#: log2|x| range and resolution of the value histograms kept for every tensor.
HIST_LO, HIST_HI, HIST_PER_OCTAVE = -40, 24, 8


def sqnr_db(signal_energy: float, noise_energy: float) -> float:
    """``10 log10(signal / noise)``; ``inf`` for zero noise, ``-inf`` for zero signal."""
    if noise_energy <= 0:
        return math.inf
    if signal_energy <= 0:
        return -math.inf
    return 10.0 * math.log10(signal_energy / noise_energy)


def cosine(dot: float, energy_a: float, energy_b: float) -> float:
    """``dot / sqrt(energy_a energy_b)``; 1 when both vectors are zero, 0 when only one is."""
    if energy_a <= 0 and energy_b <= 0:
        return 1.0
    if energy_a <= 0 or energy_b <= 0:
        return 0.0
    return float(dot / math.sqrt(energy_a * energy_b))


@dataclass
class ErrorStats:
    """Running error figures of ``approx`` against ``ref`` (float64 sums)."""

    count: int = 0
    ref_energy: float = 0.0
    approx_energy: float = 0.0
    dot: float = 0.0
    noise_energy: float = 0.0
    max_abs_error: float = 0.0
    nonfinite: int = 0  # elements where either side is NaN/Inf (left out of the sums)

    def update(self, ref: np.ndarray, approx: np.ndarray) -> None:
        r = np.asarray(ref, dtype=np.float64).ravel()
        q = np.asarray(approx, dtype=np.float64).ravel()
        if r.shape != q.shape:
            raise ValueError(f"shapes differ: reference {np.shape(ref)}, approximation {np.shape(approx)}")
        ok = np.isfinite(r) & np.isfinite(q)
        if not ok.all():
            self.nonfinite += int(ok.size - ok.sum())
            r, q = r[ok], q[ok]
        d = q - r
        # einsum, not ``@``: BLAS's threaded dot was 300x slower on a busy 2-core machine
        # (27 ms against 0.05 ms for 100k elements), its threads spinning against ours.
        self.count += int(r.size)
        self.ref_energy += float(np.einsum("i,i->", r, r))
        self.approx_energy += float(np.einsum("i,i->", q, q))
        self.dot += float(np.einsum("i,i->", r, q))
        self.noise_energy += float(np.einsum("i,i->", d, d))
        if d.size:
            self.max_abs_error = max(self.max_abs_error, float(np.abs(d).max()))

    @property
    def sqnr_db(self) -> float:
        return sqnr_db(self.ref_energy, self.noise_energy)

    @property
    def cosine(self) -> float:
        return cosine(self.dot, self.ref_energy, self.approx_energy)


class Log2Histogram:
    """Counts of ``log2|x|`` in bins of 1/``HIST_PER_OCTAVE`` octave, plus zeros.

    Values outside [2^HIST_LO, 2^HIST_HI) land in the first or last bin.

    >>> h = Log2Histogram(); h.update(np.array([0.0, 1.0, 1.0, 3.0]))
    >>> h.zeros, int(h.counts.sum()), float(h.edges()[int(np.argmax(h.counts))])
    (1, 3, 0.0)
    """

    def __init__(self):
        self.counts = np.zeros((HIST_HI - HIST_LO) * HIST_PER_OCTAVE, np.int64)
        self.zeros = 0

    def update(self, x: np.ndarray, divide_by=None) -> None:
        a = np.abs(np.asarray(x, dtype=np.float32))
        if divide_by is not None:
            a = a / divide_by
        a = a[np.isfinite(a)]
        nz = a[a > 0]
        self.zeros += int(a.size - nz.size)
        if nz.size:
            idx = np.floor((np.log2(nz) - HIST_LO) * HIST_PER_OCTAVE).astype(np.int64)
            np.clip(idx, 0, self.counts.size - 1, out=idx)
            self.counts += np.bincount(idx, minlength=self.counts.size)

    def edges(self) -> np.ndarray:
        """log2 of the bins' lower edges."""
        return HIST_LO + np.arange(self.counts.size + 1) / HIST_PER_OCTAVE

    def to_dict(self) -> dict:
        nz = np.nonzero(self.counts)[0]
        lo = int(nz[0]) if nz.size else 0
        hi = int(nz[-1]) + 1 if nz.size else 0
        return {"log2_lo": HIST_LO + lo / HIST_PER_OCTAVE, "per_octave": HIST_PER_OCTAVE,
                "counts": self.counts[lo:hi].tolist(), "zeros": self.zeros}

    @classmethod
    def from_dict(cls, d: dict) -> "Log2Histogram":
        h = cls()
        lo = int(round((d["log2_lo"] - HIST_LO) * HIST_PER_OCTAVE))
        counts = np.asarray(d["counts"], np.int64)
        h.counts[lo:lo + counts.size] = counts
        h.zeros = int(d["zeros"])
        return h
