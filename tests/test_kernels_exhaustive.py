"""All 2**32 float32 bit patterns (scale 1), chunked so memory stays small (slow; CI runs it).

* e4m3, e5m2, e4m3fnuz, e5m2fnuz: codes identical to ml_dtypes' astype with saturate
  off, except the cases where onnxruntime (our oracle) differs from ml_dtypes, which
  are expected to follow onnxruntime (each is pinned against onnxruntime itself in
  tests/test_kernels.py::test_pinned_*). With saturate on: the same codes, with every
  overflow (finite or Inf) at +-max.
* e3m4: identical to a second exact reference (RNE per binade in float64), itself
  checked against the brute force in tests/test_kernels_e3m4.py.
* For every format: fake_quant equals decode(quantize) bit for bit.
"""
from concurrent.futures import ThreadPoolExecutor

import ml_dtypes
import numpy as np
import pytest

from fp8onnx import formats
from fp8onnx.kernels import _cast

pytestmark = [pytest.mark.slow,
              pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")]

CHUNK = 1 << 24
N_CHUNKS = (1 << 32) // CHUNK
ML = {"e4m3": ml_dtypes.float8_e4m3fn, "e5m2": ml_dtypes.float8_e5m2,
      "e4m3fnuz": ml_dtypes.float8_e4m3fnuz, "e5m2fnuz": ml_dtypes.float8_e5m2fnuz}


def for_all_chunks(check):
    """Run ``check(x)`` on the 2**32 float32 values in 256 chunks, two chunks at a time:
    numpy, ml_dtypes and the (serial, nogil) kernel loops all release the GIL."""

    def one(c):
        xb = np.arange(c * CHUNK, (c + 1) * CHUNK, dtype=np.uint64).astype(np.uint32)
        check(xb.view(np.float32))

    with ThreadPoolExecutor(2) as pool:
        for _ in pool.map(one, range(N_CHUNKS)):
            pass


def magnitude_range(x):
    """(min |x|, max |x|) of a chunk: one sign, contiguous bit patterns, so monotonic;
    NaN patterns sort above Inf."""
    a = np.abs(x[[0, -1]])
    return float(a[0]), (np.inf if np.isnan(a[1]) else float(a[1]))


def ort_departures(name, x, codes):
    """Apply onnxruntime's departures from ml_dtypes (saturate off) to ml_dtypes' codes."""
    lo, hi = magnitude_range(x)
    if name == "e4m3" and lo < 496 and hi >= 480:
        # ORT: [480, 496) -> 448 (0x7E) instead of NaN.
        a = np.abs(x)
        fix = (a >= 480) & (a < 496)
    elif name == "e5m2" and hi >= 61440:
        # ORT: NaN is S.11111.11 (ml_dtypes S.11111.10); [61440, 65536) -> NaN, not Inf.
        a = np.abs(x)
        fix = np.isnan(x) | ((a >= 61440) & (a < 65536))
    else:
        return codes
    codes[fix] = (0x7E if name == "e4m3" else 0x7F) | (np.signbit(x[fix]).astype(np.uint8) << 7)
    return codes


def assert_same(got, want, what, x):
    bad = np.flatnonzero(got != want)
    assert bad.size == 0, (f"{what}: {bad.size} differences, first x={x[bad[0]]!r} "
                           f"bits={x.view(np.uint32)[bad[0]]:#x} got={got[bad[0]]:#x} "
                           f"want={want[bad[0]]:#x}")


def quantize_and_check_fake_quant(f, x, saturate):
    """Codes of x (scale 1), after checking fake_quant == dequantize(quantize) bit for bit
    (decode itself is checked per code against ml_dtypes and onnxruntime in
    tests/test_formats.py). Serial loops: the pool provides the parallelism."""
    one = np.float32(1.0)
    codes = np.empty(x.size, np.uint8)
    _cast.quantize_tensor(x, one, saturate, f.kernel_id, codes)
    fq = np.empty(x.size, np.float32)
    _cast.fake_quant_tensor(x, one, saturate, f.kernel_id, fq)
    dq = np.empty(x.size, np.float32)
    _cast.dequantize_tensor(codes, one, f.kernel_id, dq)
    assert_same(fq.view(np.uint32), dq.view(np.uint32), f"{f.name} fake_quant", x)
    # The in-place loop (onnxruntime hands FakeQuant its input buffer) is a separate loop.
    inplace = x.copy()
    _cast.fake_quant_tensor(inplace, one, saturate, f.kernel_id, inplace)
    assert_same(inplace.view(np.uint32), fq.view(np.uint32), f"{f.name} fake_quant in place", x)
    return codes


@pytest.mark.parametrize("name", sorted(ML))
def test_all_float32_patterns_match_ml_dtypes(name):
    f = formats.get(name)
    table = _cast.decode_table(f.kernel_id)
    special = np.isnan(table) | np.isinf(table)       # codes that are not finite numbers
    max_code = np.uint8(np.float32(f.max).astype(ML[name]).view(np.uint8))

    def check(x):
        want = ort_departures(name, x, x.astype(ML[name]).view(np.uint8))
        assert_same(quantize_and_check_fake_quant(f, x, False), want, f"{name} saturate=False", x)
        # Saturate: every non-NaN input whose code is not a finite number goes to +-max
        # (FNUZ too: -max is 0xFF, max's code with the sign bit). Only |x| > max can.
        if magnitude_range(x)[1] > f.max:
            over = special[want] & ~np.isnan(x)
            want[over] = max_code | (np.signbit(x[over]).astype(np.uint8) << 7)
        assert_same(quantize_and_check_fake_quant(f, x, True), want, f"{name} saturate=True", x)

    for_all_chunks(check)


def test_all_float32_patterns_e3m4():
    from test_kernels_e3m4 import fast_reference_codes

    f = formats.get("e3m4")

    def check(x):
        for saturate in (False, True):
            want = fast_reference_codes(x, saturate)
            got = quantize_and_check_fake_quant(f, x, saturate)
            assert_same(got, want, f"e3m4 saturate={saturate}", x)

    for_all_chunks(check)
