"""Range methods against independent oracles: ml_dtypes fake quantization, numpy percentiles,
brute-force threshold search on the raw samples."""
from __future__ import annotations

import logging

import ml_dtypes
import numpy as np
import pytest

from fp8onnx import formats
from fp8onnx.calibration import METHODS, SAFE_AMAX, TensorStats, choose_amax, format_grid
from fp8onnx.errors import CalibrationError, UserError

ML = {"e4m3": ml_dtypes.float8_e4m3fn, "e5m2": ml_dtypes.float8_e5m2,
      "e4m3fnuz": ml_dtypes.float8_e4m3fnuz, "e5m2fnuz": ml_dtypes.float8_e5m2fnuz}


def fake_quant_oracle(x, amax, name):
    """x quantized with scale amax/fmt.max by ml_dtypes' own casts (np.round for int8)."""
    fmt = formats.get(name)
    s = amax / fmt.max
    u = np.clip(x / s, -fmt.max, fmt.max)
    q = np.round(u) if name == "int8" else u.astype(ML[name]).astype(np.float64)
    return q * s


def true_mse(x, amax, name):
    return float(np.mean((x - fake_quant_oracle(x, amax, name)) ** 2))


def stats_of(x, name="t", bins=2048, chunks=4):
    s = TensorStats.empty(name, bins)
    for c in np.array_split(x, chunks):
        s.update(c)
    return s


def gauss_outliers(seed=0, n=200_000):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(n)
    x[rng.choice(n, 20, replace=False)] = rng.choice([-1, 1], 20) * rng.uniform(60, 80, 20)
    return x.astype(np.float32).astype(np.float64)


# ---------------------------------------------------------------- the grids
@pytest.mark.parametrize("name", sorted(ML))
def test_grid_matches_ml_dtypes(name):
    v = np.arange(256, dtype=np.uint8).view(ML[name]).astype(np.float64)
    np.testing.assert_array_equal(format_grid(name), np.unique(v[np.isfinite(v) & (v >= 0)]))


def test_e3m4_grid_matches_brute_force_decoder():
    """The paper's E3M4: S.EEE.MMMM, bias 3, no Inf, only S.111.1111 is NaN."""
    vals = []
    for code in range(128):
        e, m = code >> 4, code & 15
        if code == 0x7F:
            continue  # NaN
        vals.append(m / 16 * 2.0 ** -2 if e == 0 else (1 + m / 16) * 2.0 ** (e - 3))
    np.testing.assert_array_equal(format_grid("e3m4"), np.unique(vals))
    assert format_grid("e3m4")[-1] == 30.0 and format_grid("int8")[-1] == 127.0


@pytest.mark.parametrize("name", sorted(ML) + ["e3m4", "int8"])
def test_rounding_to_the_format_matches_the_oracles(name):
    from fp8onnx.calibration.methods import _round_to_format

    fmt = formats.get(name)
    rng = np.random.default_rng(7)
    u = np.abs(rng.standard_normal(50_000)) * np.exp(rng.uniform(-14, 7, 50_000))
    u = np.concatenate([u, format_grid(name), [0.0, 1e9]])
    got = _round_to_format(u, fmt)
    if name in ML:
        want = np.minimum(u, fmt.max).astype(ML[name]).astype(np.float64)
    elif name == "int8":
        want = np.round(np.minimum(u, 127.0))
    else:  # nearest of the brute-force grid (random u: no ties)
        g = format_grid(name)
        want = g[np.abs(np.minimum(u, 30.0)[:, None] - g[None, :]).argmin(axis=1)]
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("name", formats.names())
def test_rounding_agrees_with_the_package_kernels_including_ties(name):
    """The search's arithmetic rounding equals fmt.fake_quant (RNE, saturating), ties too."""
    from fp8onnx.calibration.methods import _round_to_format

    fmt = formats.get(name)
    g = format_grid(name)
    mids = (g[:-1] + g[1:]) / 2  # exact ties: round half to even
    u = np.concatenate([g, mids, [fmt.max * 1.03, fmt.max * 5]]).astype(np.float32)
    scale = np.float32(0.375)
    want = fmt.fake_quant(u * scale, scale).astype(np.float64)
    np.testing.assert_array_equal(_round_to_format(u.astype(np.float64), fmt) * 0.375, want)


# ---------------------------------------------------------------- methods
def test_max_is_amax():
    x = gauss_outliers()
    assert choose_amax(stats_of(x), "max", "e4m3") == float(np.abs(x).max())


@pytest.mark.parametrize("q", [90.0, 99.0, 99.9, 99.99])
def test_percentile_matches_numpy_within_a_bin(q):
    x = gauss_outliers(1)
    s = stats_of(x)
    want = np.percentile(np.abs(x), q, method="inverted_cdf")
    assert abs(choose_amax(s, "percentile", "e4m3", percentile=q) - want) <= s.bin_width


@pytest.mark.parametrize("name", ["e4m3", "e5m2", "int8"])
def test_mse_clips_outliers_and_beats_max_on_the_format_grid(name):
    x = gauss_outliers(2, 100_000)
    s = stats_of(x)
    t = choose_amax(s, "mse", name)
    assert t < s.amax
    assert true_mse(x, t, name) < true_mse(x, s.amax, name)
    # Within 2% of the brute-force optimum over 200 thresholds on the raw samples. (On
    # FP8 grids that optimum clips little: relative precision is flat, as the paper notes.)
    grid = np.linspace(s.amax / 200, s.amax, 200)
    best = min(true_mse(x, g, name) for g in grid)
    assert true_mse(x, t, name) <= 1.02 * best


def test_mse_on_e3m4_uses_the_papers_grid():
    """E3M4's top binade (16..30) is absent from ml_dtypes' float8_e3m4 (max 15.5)."""
    x = gauss_outliers(3)
    s = stats_of(x)
    t = choose_amax(s, "mse", "e3m4")
    grid = format_grid("e3m4")

    def mse(a):
        sc = a / 30.0
        u = np.clip(np.abs(x) / sc, 0, 30.0)
        i = np.abs(u[:, None] - grid[None, :]).argmin(axis=1)
        return float(np.mean((np.abs(x) - grid[i] * sc) ** 2))
    assert t < s.amax and mse(t) < mse(s.amax)


def test_mse_keeps_the_range_of_uniform_data():
    x = np.random.default_rng(4).uniform(-3, 3, 100_000)
    s = stats_of(x)
    assert choose_amax(s, "mse", "e4m3") > 0.9 * s.amax


@pytest.mark.parametrize("name", ["e4m3", "e5m2", "e3m4", "int8"])
def test_kl_is_finite_and_within_range(name):
    x = gauss_outliers(5)
    s = stats_of(x)
    t = choose_amax(s, "kl", name)
    assert np.isfinite(t) and 0 < t < s.amax  # the 20 outliers are not worth the resolution


def test_kl_keeps_most_of_a_dense_range():
    r = np.random.default_rng(6).standard_normal(100_000)
    r = np.maximum(r, 0)  # ReLU-like: half the mass at zero
    s = stats_of(r)
    t = choose_amax(s, "kl", "e4m3")
    assert np.percentile(r, 99) < t <= s.amax


def test_all_zero_tensor_gets_a_safe_amax(caplog):
    s = stats_of(np.zeros(1000), name="dead_relu")
    for m in METHODS:
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            assert choose_amax(s, m, "e4m3") == SAFE_AMAX > 0
        assert "dead_relu" in caplog.text and "all zero" in caplog.text
    assert choose_amax(TensorStats.empty("never_seen"), "mse", "e4m3") == SAFE_AMAX


def test_mostly_zero_tensor_never_gets_a_zero_threshold():
    x = np.zeros(100_000)
    x[:3] = [1.0, 2.0, -5.0]
    s = stats_of(x, "sparse")
    for m in METHODS:  # numpy's 99th percentile is 0: the threshold must still be positive
        assert 0 < choose_amax(s, m, "e4m3", percentile=99.0) <= s.amax


def test_bad_inputs():
    s = stats_of(np.ones(10))
    with pytest.raises(UserError, match="unknown calibration method 'entropy': choose one of "
                                        "max, percentile, mse, kl"):
        choose_amax(s, "entropy", "e4m3")
    with pytest.raises(UserError, match="percentile must be in"):
        choose_amax(s, "percentile", "e4m3", percentile=0)
    with pytest.raises(ValueError, match="unknown format"):
        choose_amax(s, "max", "e2m5")
    bad = stats_of(np.array([1.0, np.nan, 2.0]), name="logits")
    with pytest.raises(CalibrationError, match="tensor 'logits' held 1 NaN"):
        choose_amax(bad, "mse", formats.get("e4m3"))


def kl_reference(stats, fmt_name, candidates=128):
    """The entropy search written as a plain loop, one candidate threshold at a time."""
    fmt = formats.get(fmt_name)
    grid = format_grid(fmt_name)
    hist = stats.hist.astype(np.float64)
    w = stats.bin_width
    last = min(stats.bins, int(np.ceil(stats.amax / w)))
    start = min(last, max(2, stats.bins // 16))
    ends = np.unique(np.linspace(start, last, min(candidates, last - start + 1)).astype(int))
    best, best_t = np.inf, stats.amax
    for i in ends:
        t = stats.amax if i == last else i * w
        p = hist[:i].copy()
        p[-1] += hist[i:].sum()
        centres = (np.arange(i) + 0.5) * w / (t / fmt.max)
        c = np.minimum(centres, fmt.max)
        hi = np.clip(np.searchsorted(grid, c), 1, grid.size - 1)
        d_lo, d_hi = c - grid[hi - 1], grid[hi] - c
        # nearest; exact ties to the even code (grid index = code of the positive value)
        cell = np.where(d_lo < d_hi, hi - 1, np.where(d_lo > d_hi, hi, np.where(hi % 2, hi - 1, hi)))
        mass = np.bincount(cell, weights=hist[:i], minlength=grid.size)
        used = np.bincount(cell, weights=(hist[:i] > 0), minlength=grid.size)
        q = np.where(hist[:i] > 0, mass[cell] / np.maximum(used[cell], 1), 0.0)
        p, q = p / p.sum(), q / q.sum()
        q = np.where((q == 0) & (p > 0), 1e-4, q)
        q = q / q.sum()
        kl = float(np.sum(p[p > 0] * np.log(p[p > 0] / q[p > 0])))
        if kl < best:
            best, best_t = kl, t
    return best_t


@pytest.mark.parametrize("name", ["e4m3", "e5m2", "e3m4", "int8"])
@pytest.mark.parametrize("data", ["outliers", "relu", "uniform"])
def test_kl_equals_the_plain_loop(name, data):
    rng = np.random.default_rng(8)
    x = {"outliers": gauss_outliers(8, 50_000), "relu": np.maximum(rng.standard_normal(50_000), 0),
         "uniform": rng.uniform(-1, 1, 50_000)}[data]
    s = stats_of(x, bins=512)
    assert choose_amax(s, "kl", name) == pytest.approx(min(kl_reference(s, name), s.amax), rel=1e-12)
