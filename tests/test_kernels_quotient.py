"""The multiplying fake-quant loops give the division's bits.

For scales other than powers of two the saturating FP8 and the INT8 fake-quant loops
compute x * fl(1/s) and redo with x / s every block holding an element near a rounding
midpoint (fp8onnx.kernels._elem's module note). The reference here is independent of
those loops: numpy's float32 ``x / s``, rounded by the kernel at scale 1 (its exact
power-of-two path), times ``s`` in numpy; and the kernel's own dividing loop. Inputs:

* hard cases: for every grid point and every midpoint m between grid points (and
  onnxruntime's band edges), x = fl(m * s) and its +-1..8 ulp neighbours, for 78 scales
  (random ones over 1e-6..1e4, 3, 0.1, 1/3, scales a few ulps off powers of two, the
  edges 2**+-100 of the multiplying range and scales outside it), clustered and shuffled
  among ordinary values (so blocks mix elements kept and redone, in place);
* specials: +-0, +-Inf, NaNs, float32 subnormals, +-max float, quotients that overflow
  or underflow float32, products x * fl(1/s) that overflow where x / s does not;
* ~50M random float32 bit patterns.

Per tensor and per channel (rows, and channels innermost), in place and not, serial and
threaded, every format, saturate on and off; onnxruntime itself on the E4M3FN, E5M2 and
INT8 hard cases.
``test_hard_cases_need_the_division`` shows the hard cases are hard: multiplying alone
gets some of them wrong.
"""
import numpy as np
import pytest

from fp8onnx import formats
from fp8onnx.kernels import _cast
from fp8onnx.kernels.reference import OrtQDQ

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")

NAMES = list(formats.FORMATS)
F32 = np.float32


def u32(a):
    return np.ascontiguousarray(a, F32).view(np.uint32)


def pow2(k):
    return F32(2.0 ** k)


def _scales():
    rng = np.random.default_rng(20240611)
    s = list(np.exp(rng.uniform(np.log(1e-6), np.log(1e4), 36)).astype(F32))
    s += [F32(3.0), F32(0.1), F32(1 / 3), F32(0.037), F32(0.7), F32(1.5), F32(11.3 / 448),
          np.nextafter(F32(1), F32(2)), np.nextafter(F32(1), F32(0))]
    for k in (-20, -7, 0, 5, 13):
        p = pow2(k)
        s += [np.nextafter(p, F32(np.inf)), np.nextafter(p, F32(0)),
              F32(p * (1 + 2.0 ** -22)), F32(p * (1 - 2.0 ** -22)), F32(p * 1.75)]
    # The multiplying range's edges, just inside and outside, and scales beyond it.
    for p in (pow2(-100), pow2(100)):
        s += [np.nextafter(p, F32(np.inf)), np.nextafter(p, F32(0))]
    s += [F32(2.0 ** -110 * 1.3), F32(2.0 ** 110 * 1.3), F32(1e-40), F32(3e38)]
    return [x for x in s if x > 0 and np.isfinite(x)]


SCALES = _scales()
FEW_SCALES = [F32(0.1), F32(3.0), F32(1 / 3), F32(11.3 / 448), np.nextafter(F32(1), F32(2)),
              F32(2.0 ** -99 * 1.3), F32(2.0 ** 99 * 1.3), F32(7.1e-6), F32(5e3)]


def targets(f):
    """|y| values where rounding turns or onnxruntime's rules change, and the grid points."""
    grid = _cast.decode_table(f.kernel_id).astype(np.float64)
    grid = np.unique(np.abs(grid[np.isfinite(grid)]))
    step = grid[-1] - grid[-2]
    extra = [grid[-1] + step / 2, grid[-1] + step, 480, 496, 61440, 65536, 127.5, 128.5]
    return np.concatenate([grid, (grid[1:] + grid[:-1]) / 2, extra])


def hard_values(f, s, reach=8):
    """x = fl(+-t * s) for every target t, with its +-1..reach ulp neighbours."""
    with np.errstate(over="ignore"):
        x0 = (targets(f) * np.float64(s)).astype(F32)
    x0 = x0[np.isfinite(x0) & (x0 > 0)]
    b = x0.view(np.int32)[:, None] + np.arange(-reach, reach + 1, dtype=np.int32)
    b = b[(b > 0) & (b < 0x7F800000)]
    x = b.view(F32)
    return np.concatenate([x, -x])


def specials(s):
    """Special inputs for scale s, each next to ordinary values (in the same block)."""
    big = np.finfo(F32).max
    inv = F32(1) / s
    with np.errstate(over="ignore", under="ignore"):
        edge = []
        # Where x / s and x * fl(1/s) overflow (or reach the subnormals), +-4 ulps.
        for t in (np.float64(big), 2.0 ** -126, 2.0 ** -149, 2.0 ** 105, 2.0 ** 110):
            e = F32(t * np.float64(s))
            if np.isfinite(e) and e > 0:
                edge.append(e)
            e2 = F32(t / np.float64(inv)) if inv > 0 and np.isfinite(inv) else F32(0)
            if np.isfinite(e2) and e2 > 0:
                edge.append(e2)
        edge = np.array(edge, F32)
        eb = (edge.view(np.int32)[:, None] + np.arange(-4, 5, dtype=np.int32)).ravel()
        eb = eb[(eb > 0) & (eb < 0x7F800000)]
    nans = np.array([0x7FC00000, 0xFFC00000, 0x7F800001, 0x7FC00001, 0xFFFFFFFF, 0x7FBFFFFF],
                    np.uint32).view(F32)
    sub = np.array([1, 2, 3, 0x7FFFFF, 0x400000, 0x123456], np.uint32).view(F32)
    vals = np.concatenate([[0.0, np.inf, big, np.finfo(F32).tiny], sub, eb.view(F32)]).astype(F32)
    vals = np.concatenate([vals, -vals, nans])
    # Interleave: each special followed by a few ordinary values, so blocks mix.
    ordinary = (np.random.default_rng(1).standard_normal((vals.size, 5)) * 3 * s).astype(F32)
    return np.concatenate([vals[:, None], ordinary], axis=1).ravel()


def reference(f, x, s, saturate):
    """numpy's x / s, rounded by the kernel at scale 1 (multiplies by 1: exact), times s."""
    with np.errstate(all="ignore"):
        y = (x / s).astype(F32)
        r = np.empty_like(y)
        _cast.fake_quant_tensor(y.ravel(), F32(1), saturate, f.kernel_id, r.ravel())
        return (r * s).astype(F32)


def assert_bits(got, want, what):
    g, w = u32(got).ravel(), u32(want).ravel()
    bad = np.flatnonzero(g != w)
    assert bad.size == 0, (f"{what}: {bad.size} differ, first at {bad[0]}: "
                           f"got {g[bad[0]]:#010x} want {w[bad[0]]:#010x}")


def _apart_and_in_place(fn, f, x, s, saturate, want, what):
    got = np.empty_like(x)
    fn(x, s, saturate, f.kernel_id, got)
    assert_bits(got, want, f"{what} apart")
    inplace = x.copy()
    fn(inplace, s, saturate, f.kernel_id, inplace)
    assert_bits(inplace, want, f"{what} in place")


def check_tensor(f, x, s, saturate, what, threaded=False):
    want = reference(f, x, s, saturate)
    _apart_and_in_place(_cast.fake_quant_tensor, f, x, s, saturate, want, what)
    old = np.empty_like(x)
    _cast._fake_quant_tensor_divide(x, s, saturate, f.kernel_id, old)
    assert_bits(old, want, f"{what} dividing loop")
    if threaded:
        _apart_and_in_place(_cast.fake_quant_tensor_parallel, f, x, s, saturate, want, f"{what} threaded")
    return want


@pytest.mark.parametrize("saturate", [True, False])
@pytest.mark.parametrize("name", NAMES)
def test_hard_cases_per_tensor(name, saturate):
    f = formats.get(name)
    rng = np.random.default_rng(5)
    for s in SCALES:
        x = hard_values(f, s)
        # Clustered (most blocks redone) and shuffled among ordinary values (blocks mix).
        mixed = np.concatenate([x, (rng.standard_normal(3 * x.size) * 100 * s).astype(F32)])
        mixed = mixed[rng.permutation(mixed.size)]
        for arr, how in ((x, "clustered"), (mixed, "mixed")):
            want = check_tensor(f, arr, s, saturate, f"{name} sat={saturate} s={s!r} {how}")
        # Quantize still divides: decode(code) * s is the same value.
        codes = np.empty(mixed.size, np.uint8)
        _cast.quantize_tensor(mixed, s, saturate, f.kernel_id, codes)
        dq = np.empty_like(mixed)
        _cast.dequantize_tensor(codes, s, f.kernel_id, dq)
        assert_bits(dq, want, f"{name} sat={saturate} s={s!r} dequantize(quantize)")


@pytest.mark.parametrize("saturate", [True, False])
@pytest.mark.parametrize("name", NAMES)
def test_hard_cases_per_channel(name, saturate):
    """Per channel: rows (inner > 1, the multiplying row loop) and channels innermost."""
    f = formats.get(name)
    rng = np.random.default_rng(6)
    sc = np.array(FEW_SCALES, F32)
    rows = [hard_values(f, s, reach=5) for s in sc]
    n = min(r.size for r in rows) // 2 * 2
    rows = np.stack([r[rng.permutation(r.size)[:n]] for r in rows])  # (C, n)
    for x3 in (rows.reshape(1, sc.size, n), np.ascontiguousarray(rows.T).reshape(n, sc.size, 1),
               np.ascontiguousarray(rows.reshape(sc.size, 2, -1).transpose(1, 0, 2))):
        with np.errstate(all="ignore"):
            y = (x3 / sc[None, :, None]).astype(F32)
        r = np.empty_like(y)
        _cast.fake_quant_tensor(y.ravel(), F32(1), saturate, f.kernel_id, r.ravel())
        want = (r * sc[None, :, None]).astype(F32)
        what = f"{name} sat={saturate} shape={x3.shape}"
        for loop in (_cast.fake_quant_axis, _cast.fake_quant_axis_parallel):
            _apart_and_in_place(loop, f, x3, sc, saturate, want, f"{what} {loop.__name__}")


@pytest.mark.parametrize("name", NAMES)
def test_specials(name):
    f = formats.get(name)
    for s in SCALES[::3] + FEW_SCALES:
        x = specials(s)
        for saturate in (True, False):
            check_tensor(f, x, s, saturate, f"{name} sat={saturate} s={s!r} specials")


@pytest.mark.parametrize("name", NAMES)
def test_random_bit_patterns(name):
    """~8M patterns per format (~50M in all): any float32, and float32s whose quotient
    lands in the format's range, through every loop."""
    f = formats.get(name)
    rng = np.random.default_rng(7 + f.kernel_id)
    for i, s in enumerate([F32(0.1), F32(1 / 3), F32(11.3 / 448), F32(2.0 ** 40 * 1.37)]):
        anyb = rng.integers(0, 2 ** 32, 1 << 20, dtype=np.uint64).astype(np.uint32).view(F32)
        # Quotients over the format's range: exponent of x / s from 2**-20 to 2**17.
        e = rng.integers(-20, 18, 1 << 20)
        inrange = (np.ldexp(rng.uniform(1, 2, 1 << 20), e) * np.float64(s)).astype(F32)
        inrange *= rng.choice(F32([-1, 1]), inrange.size)
        x = np.concatenate([anyb, inrange])
        for saturate in (True, False):
            check_tensor(f, x, s, saturate, f"{name} sat={saturate} s={s!r} random",
                         threaded=(i == 0))


@pytest.mark.parametrize("saturate", [True, False])
@pytest.mark.parametrize("name", ["e4m3", "e5m2", "int8"])
def test_hard_cases_match_onnxruntime(name, saturate):
    f = formats.get(name)
    qdq = OrtQDQ(f, "qdq", saturate=saturate)
    for s in FEW_SCALES + SCALES[::4]:
        x = np.concatenate([hard_values(f, s), specials(s)])
        got = np.empty_like(x)
        _cast.fake_quant_tensor(x, s, saturate, f.kernel_id, got)
        assert_bits(got, qdq.run(x, s), f"{name} sat={saturate} s={s!r} vs onnxruntime")


@pytest.mark.parametrize("name", ["e4m3", "e5m2", "e3m4", "int8"])
def test_hard_cases_need_the_division(name):
    """Multiplying by fl(1/s) without the check gets some hard cases wrong (so the tests
    above would catch a loop that skipped the division)."""
    f = formats.get(name)
    wrong = 0
    for s in SCALES:
        if not (2.0 ** -100 <= s <= 2.0 ** 100):
            continue
        x = hard_values(f, s)
        y = (x * (F32(1) / s)).astype(F32)
        r = np.empty_like(y)
        _cast.fake_quant_tensor(y, F32(1), True, f.kernel_id, r)
        wrong += int(np.count_nonzero(u32(r * s) != u32(reference(f, x, s, True))))
    assert wrong > 0
