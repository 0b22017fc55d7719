"""Streaming statistics of one tensor: range, special values and a histogram of |x|.

:class:`TensorStats` is reduced batch by batch, so calibration holds ``bins`` counters
per tensor however many samples it sees. The histogram has a fixed number of bins over
``[0, hist_range]``; when a batch exceeds the range, the range doubles (adjacent bin
pairs are summed) until it fits. Counts stay exact; resolution halves per doubling, so
after growing the histogram locates a value to within ``hist_range / bins``.

Beside it, ``binades`` counts |x| per float32 binade (its exponent field), so the
fraction of values below any small threshold is known however far below the range it
lies: the linear histogram puts everything under ``hist_range / bins`` into one bin, and
E3M4 flushes values under ``amax / 3840`` to zero (see :meth:`TensorStats.fraction_below`).

>>> import numpy as np
>>> s = TensorStats.empty("x", bins=8)
>>> s.update(np.array([1.0, -2.0, 0.5], np.float32))
>>> s.update(np.array([3.0, np.nan], np.float32))
>>> s.amax, s.min, s.max, s.count, s.nan_count, int(s.hist.sum()), s.hist_range
(3.0, -2.0, 3.0, 5, 1, 4, 4.0)
>>> s.fraction_below(1.0)  # of the non-zero finite |x|: 0.5 lies below 1, 1, 2, 3 do not
0.25
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

__all__ = ["TensorStats", "DEFAULT_BINS", "BINADES"]

#: Histogram bins per tensor: 2048 as TensorRT's entropy calibration (16 KB per tensor).
DEFAULT_BINS = 2048
#: One counter per float32 exponent field (2 KB per tensor).
BINADES = 256


@dataclass
class TensorStats:
    """Running statistics of one tensor over all calibration samples.

    ``amax`` is max |x| ignoring NaN (Inf shows up as ``inf``); ``min``/``max`` likewise;
    ``count`` counts every element seen, NaN and Inf included; ``hist`` counts the finite
    |x| in ``len(hist)`` equal bins over ``[0, hist_range]``. ``missing`` is non-empty
    when the tensor could not be observed (e.g. it lives inside an If/Loop body) and says
    why; such stats hold no data.
    """

    name: str
    amax: float = 0.0
    min: float = math.inf
    max: float = -math.inf
    count: int = 0
    nan_count: int = 0
    inf_count: int = 0
    hist: np.ndarray = field(default_factory=lambda: np.zeros(DEFAULT_BINS, np.int64), repr=False)
    hist_range: float = 0.0
    missing: str = ""
    #: finite |x| counted by float32 exponent field: [0] zeros (and float32 subnormals),
    #: [e] the binade [2**(e-127), 2**(e-126)); 255 (NaN, Inf) stays empty.
    binades: np.ndarray = field(default_factory=lambda: np.zeros(BINADES, np.int64), repr=False)

    def __eq__(self, other) -> bool:  # the dataclass default would compare arrays ambiguously
        if not isinstance(other, TensorStats):
            return NotImplemented
        scalars = ("name", "amax", "min", "max", "count", "nan_count", "inf_count",
                   "hist_range", "missing")
        return (all(getattr(self, k) == getattr(other, k) for k in scalars)
                and np.array_equal(self.hist, other.hist) and np.array_equal(self.binades, other.binades))

    __hash__ = None  # mutable: updated in place

    @classmethod
    def empty(cls, name: str, bins: int = DEFAULT_BINS) -> "TensorStats":
        """Stats with no data yet and ``bins`` histogram bins (an even number >= 2)."""
        bins = int(bins)
        if bins < 2 or bins % 2:
            raise ValueError(f"bins must be an even number >= 2 (got {bins}): the range "
                             "grows by merging pairs of bins")
        return cls(name=name, hist=np.zeros(bins, np.int64))

    @classmethod
    def missing_stats(cls, name: str, reason: str, bins: int = DEFAULT_BINS) -> "TensorStats":
        """Placeholder for a tensor that could not be observed, with the reason."""
        s = cls.empty(name, bins)
        s.missing = reason
        return s

    @property
    def bins(self) -> int:
        return int(self.hist.size)

    @property
    def bin_width(self) -> float:
        return self.hist_range / self.bins

    @property
    def finite_count(self) -> int:
        """Elements that are neither NaN nor Inf (= the histogram's total)."""
        return self.count - self.nan_count - self.inf_count

    def bin_edges(self) -> np.ndarray:
        """The ``bins + 1`` edges of the histogram, float64."""
        return np.linspace(0.0, self.hist_range, self.bins + 1)

    def update(self, x) -> None:
        """Fold the elements of array ``x`` (any shape, float dtype) into the stats."""
        from . import _hist  # lazy: importing fp8onnx must not import/compile numba code

        x = np.asarray(x)
        if x.dtype not in (np.float32, np.float64):
            x = x.astype(np.float32)  # float16/bfloat16: the Numba loops take f4/f8
        flat = x.reshape(-1)  # a view for the contiguous arrays onnxruntime returns
        if flat.size == 0:
            return
        # numpy's SIMD min/max run ~10x faster than one branchy Numba pass (measured on
        # PP-OCR cls activations); NaN poisons them, and then the NaN-aware loop decides.
        lo, hi = float(flat.min()), float(flat.max())
        if math.isnan(lo) or math.isnan(hi):
            red = np.empty(5, np.float64)
            _hist.reduce_batch(flat, red)
            lo, hi, batch_amax, nan, inf = red
        else:
            batch_amax, nan = max(-lo, hi), 0
            inf = int(np.isinf(flat).sum()) if math.isinf(lo) or math.isinf(hi) else 0
        self.count += int(flat.size)
        self.nan_count += int(nan)
        self.inf_count += int(inf)
        self.min = min(self.min, float(lo))
        self.max = max(self.max, float(hi))
        self.amax = max(self.amax, float(batch_amax))
        finite_amax = batch_amax
        if inf:  # the histogram holds finite values only: its range ignores Inf
            finite = flat[np.isfinite(flat)]
            finite_amax = float(np.abs(finite).max()) if finite.size else 0.0
        self._grow(finite_amax)
        # The binades read float32 exponent bits (activations are float32; wider input is
        # rounded to it, which moves a value by at most one binade edge).
        bits = (flat if flat.dtype == np.float32 else flat.astype(np.float32)).view(np.uint32)
        _hist.accumulate_hist(flat, self.hist, self.hist_range, bits, self.binades)

    def _grow(self, needed: float) -> None:
        """Widen ``hist_range`` to cover ``needed``, doubling and summing bin pairs."""
        if needed <= self.hist_range:
            return
        if self.hist_range == 0.0:
            # Only zeros so far (all in bin 0, which stays bin 0 at any range).
            self.hist_range = float(needed)
            return
        half = self.bins // 2
        while self.hist_range < needed:
            merged = self.hist.reshape(half, 2).sum(axis=1)
            self.hist[:half] = merged
            self.hist[half:] = 0
            self.hist_range *= 2.0

    @property
    def nonzero_count(self) -> int:
        """Finite elements with |x| >= 2**-126 (float32 subnormals count as zero)."""
        return int(self.binades[1:BINADES - 1].sum())

    def fraction_below(self, threshold: float) -> float:
        """Fraction of the non-zero finite |x| below ``threshold`` (0 with none).

        Whole binades below it count fully; in the binade holding it, values are taken
        as spread evenly in log2 (the error is at most that binade's share).
        """
        nonzero = self.nonzero_count
        if nonzero == 0 or not threshold > 0.0:
            return 0.0
        if threshold >= 2.0 ** 128:
            return 1.0
        m, e2 = math.frexp(threshold)  # threshold = m * 2**e2, m in [0.5, 1)
        field_ = e2 - 1 + 127           # exponent field of the threshold's binade
        if field_ < 1:
            return 0.0
        below = float(self.binades[1:field_].sum())
        below += float(self.binades[field_]) * math.log2(2.0 * m)
        return below / nonzero

    def quantile(self, q: float) -> float:
        """The ``q``-quantile (0..1) of the finite |x|, interpolated inside its bin."""
        total = int(self.hist.sum())
        if total == 0 or self.hist_range == 0.0:
            return 0.0
        cum = np.cumsum(self.hist)
        target = float(q) * total
        k = int(np.searchsorted(cum, target, side="left"))
        k = min(k, self.bins - 1)
        below = float(cum[k - 1]) if k else 0.0
        inside = float(self.hist[k])
        frac = (target - below) / inside if inside else 1.0
        return float(min((k + min(max(frac, 0.0), 1.0)) * self.bin_width, self.hist_range))
