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
import ml_dtypes
import numpy as np
import pytest

from fp8onnx import formats, kernels
from fp8onnx.kernels import _cast

pytestmark = [pytest.mark.slow,
              pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")]

CHUNK = 1 << 24
ML = {"e4m3": ml_dtypes.float8_e4m3fn, "e5m2": ml_dtypes.float8_e5m2,
      "e4m3fnuz": ml_dtypes.float8_e4m3fnuz, "e5m2fnuz": ml_dtypes.float8_e5m2fnuz}


def all_patterns():
    """The 2**32 float32 values in 256 chunks, reusing one buffer."""
    base = np.arange(CHUNK, dtype=np.uint32)
    buf = np.empty(CHUNK, dtype=np.uint32)
    for c in range(1 << 32 >> 24):
        np.add(base, np.uint32(c * CHUNK), out=buf)
        yield buf.view(np.float32)


def ort_departures(name, x, codes):
    """Apply onnxruntime's departures from ml_dtypes (saturate off) to ml_dtypes' codes."""
    a = np.abs(x)
    sign = np.signbit(x).astype(np.uint8) << 7
    if name == "e4m3":
        # ORT: [480, 496) -> 448 (0x7E) instead of NaN.
        fix = (a >= 480) & (a < 496)
    elif name == "e5m2":
        # ORT: NaN is S.11111.11 (ml_dtypes S.11111.10); [61440, 65536) -> NaN, not Inf.
        fix = np.isnan(x) | ((a >= 61440) & (a < 65536))
    else:
        return codes
    codes[fix] = (0x7E if name == "e4m3" else 0x7F) | sign[fix]
    return codes


def assert_same(got, want, what, x):
    bad = np.flatnonzero(got != want)
    assert bad.size == 0, (f"{what}: {bad.size} differences, first x={x[bad[0]]!r} "
                           f"bits={x.view(np.uint32)[bad[0]]:#x} got={got[bad[0]]:#x} "
                           f"want={want[bad[0]]:#x}")


def check_fake_quant(f, x, codes, saturate, out):
    """fake_quant == dequantize(quantize), bit for bit (decode itself is checked per code
    against ml_dtypes and onnxruntime in tests/test_formats.py)."""
    kernels.fake_quant(f, x, 1.0, saturate=saturate, out=out[0])
    kernels.dequantize(f, codes, 1.0, out=out[1])
    assert_same(out[0].view(np.uint32), out[1].view(np.uint32), f"{f.name} fake_quant", x)


@pytest.mark.parametrize("name", sorted(ML))
def test_all_float32_patterns_match_ml_dtypes(name):
    f = formats.get(name)
    table = _cast.decode_table(f.kernel_id)
    special = np.isnan(table) | np.isinf(table)       # codes that are not finite numbers
    max_code = np.uint8(np.float32(f.max).astype(ML[name]).view(np.uint8))
    got = np.empty(CHUNK, np.uint8)
    fbuf = (np.empty(CHUNK, np.float32), np.empty(CHUNK, np.float32))
    for x in all_patterns():
        want = ort_departures(name, x, x.astype(ML[name]).view(np.uint8))
        kernels.quantize(f, x, 1.0, saturate=False, out=got)
        assert_same(got, want, f"{name} saturate=False", x)
        check_fake_quant(f, x, got, False, fbuf)
        # Saturate: every non-NaN input whose code is not a finite number goes to +-max
        # (FNUZ too: -max is 0xFF, max's code with the sign bit).
        over = special[want] & ~np.isnan(x)
        want[over] = max_code | (np.signbit(x[over]).astype(np.uint8) << 7)
        kernels.quantize(f, x, 1.0, saturate=True, out=got)
        assert_same(got, want, f"{name} saturate=True", x)
        check_fake_quant(f, x, got, True, fbuf)


def test_all_float32_patterns_e3m4():
    from test_kernels_e3m4 import fast_reference_codes

    f = formats.get("e3m4")
    got = np.empty(CHUNK, np.uint8)
    fbuf = (np.empty(CHUNK, np.float32), np.empty(CHUNK, np.float32))
    for x in all_patterns():
        for saturate in (False, True):
            want = fast_reference_codes(x, saturate)
            kernels.quantize(f, x, 1.0, saturate=saturate, out=got)
            assert_same(got, want, f"e3m4 saturate={saturate}", x)
            check_fake_quant(f, x, got, saturate, fbuf)
