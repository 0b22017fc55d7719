"""Per-channel moments over every axis but 1, streamed batch by batch in float64.

:class:`ChannelMoments` holds one tensor's mean and variance (Chan et al.'s parallel
update). :class:`PairMoments` holds two tensors of the same shape at once (say a layer's
output in the float model and under FP8 weights): both means and variances and their
covariance, so the mean squared difference of any per-channel affine maps of the two,
``E[(g_a a + h_a - g_b b - h_b)^2]``, follows exactly without seeing the data again::

    >>> import numpy as np
    >>> a = np.arange(24, dtype=np.float32).reshape(2, 3, 4); b = a * 2 + 1
    >>> m = PairMoments(3); m.update(a, b)
    >>> float(m.mse(np.full(3, 2.0), np.ones(3), np.ones(3), np.zeros(3)))  # 2a + 1 == b
    0.0
"""
from __future__ import annotations

import numpy as np

__all__ = ["ChannelMoments", "PairMoments"]


def _nc_s(y: np.ndarray) -> np.ndarray:
    """``y`` as a contiguous float32 [N, C, S] view (S = product of the dims after C)."""
    y = np.ascontiguousarray(y, dtype=np.float32)
    return y.reshape(y.shape[0], y.shape[1], -1) if y.ndim >= 2 else y.reshape(1, -1, 1)


class ChannelMoments:
    """Per-channel mean and variance over every axis but 1, streamed (Chan et al.)."""

    def __init__(self, channels: int):
        self.n = 0
        self.mean = np.zeros(channels, np.float64)
        self.m2 = np.zeros(channels, np.float64)

    def update(self, y: np.ndarray) -> None:
        axes = tuple(i for i in range(y.ndim) if i != 1)
        n = y.size // y.shape[1]
        if n == 0:
            return
        mean = y.mean(axis=axes, dtype=np.float64)
        shape = [1] * y.ndim
        shape[1] = -1
        m2 = np.square(y - mean.reshape(shape).astype(np.float32), dtype=np.float64).sum(axis=axes)
        total = self.n + n
        delta = mean - self.mean
        self.mean += delta * (n / total)
        self.m2 += m2 + delta ** 2 * (self.n * n / total)
        self.n = total

    @property
    def var(self) -> np.ndarray:
        return self.m2 / max(self.n, 1)


class PairMoments:
    """Per-channel means, variances and covariance of two tensors ``a`` and ``b``.

    Sums are taken around a per-channel reference (the first batch's mean), so the
    variance does not cancel in float64 when the mean is large against the spread.
    """

    def __init__(self, channels: int):
        self.channels = int(channels)
        self.n = 0
        self._sums = np.zeros((self.channels, 5), np.float64)
        self._ref = None

    def update(self, a: np.ndarray, b: np.ndarray) -> None:
        """Add one batch of ``a`` and ``b`` (same shape, channels on axis 1)."""
        from . import _moments  # lazy: importing fp8onnx must not compile numba code

        if a.shape != b.shape:
            raise ValueError(f"PairMoments: shapes differ, {a.shape} vs {b.shape}")
        x, y = _nc_s(a), _nc_s(b)
        if x.shape[1] != self.channels:
            raise ValueError(f"PairMoments: {x.shape[1]} channels, expected {self.channels}")
        if x.size == 0:
            return
        if self._ref is None:
            self._ref = (x.mean(axis=(0, 2), dtype=np.float64), y.mean(axis=(0, 2), dtype=np.float64))
        _moments.pair_sums(x, y, self._ref[0], self._ref[1], self._sums)
        self.n += x.shape[0] * x.shape[2]

    def _centred(self):
        n = max(self.n, 1)
        s = self._sums
        da, db = s[:, 0] / n, s[:, 1] / n
        ra, rb = (self._ref if self._ref is not None else (np.zeros(self.channels),) * 2)
        var_a = np.maximum(s[:, 2] / n - da * da, 0.0)
        var_b = np.maximum(s[:, 3] / n - db * db, 0.0)
        cov = s[:, 4] / n - da * db
        return ra + da, rb + db, var_a, var_b, cov

    @property
    def mean_a(self) -> np.ndarray:
        return self._centred()[0]

    @property
    def mean_b(self) -> np.ndarray:
        return self._centred()[1]

    @property
    def var_a(self) -> np.ndarray:
        return self._centred()[2]

    @property
    def var_b(self) -> np.ndarray:
        return self._centred()[3]

    def mse(self, ga, ha, gb, hb) -> float:
        """Mean over every element of ``(ga a + ha - gb b - hb)^2``, per-channel ``g``, ``h``."""
        ma, mb, va, vb, cov = self._centred()
        ga, ha, gb, hb = (np.asarray(v, np.float64) for v in (ga, ha, gb, hb))
        d = ga * ma + ha - gb * mb - hb
        per_channel = ga * ga * va + gb * gb * vb - 2 * ga * gb * cov + d * d
        return float(np.mean(np.maximum(per_channel, 0.0)))
