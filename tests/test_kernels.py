"""Kernels bit for bit against onnxruntime's own QuantizeLinear -> DequantizeLinear.

One table of formats against the oracle (ml_dtypes' own test layout): every ONNX format
x {per tensor, per axis} x {saturate on, off} x {quantize, dequantize, fake_quant}, on
values that hit every rule: +-0, float32 and format subnormals, every code's value,
every exact midpoint between neighbouring codes (ties), the overflow boundaries, NaN,
+-Inf, random bit patterns. Values compare as uint32 views so NaN payloads and -0 count.
"""
import numpy as np
import pytest

from fp8onnx import formats, kernels
from fp8onnx.kernels import _cast
from fp8onnx.kernels.reference import OrtQDQ

ONNX_NAMES = ["e4m3", "e5m2", "e4m3fnuz", "e5m2fnuz", "int8"]


def bits(a):
    return np.asarray(a, np.float32).view(np.uint32)


def special_values(f):
    """Values of x / scale that exercise every rounding rule of format ``f``."""
    grid = _cast.decode_table(f.kernel_id).astype(np.float64)
    grid = np.unique(np.abs(grid[np.isfinite(grid)]))
    mids = (grid[1:] + grid[:-1]) / 2                 # exact ties (exact in float64 and float32)
    top = grid[-1]
    step = grid[-1] - grid[-2]
    edges = [top + step / 2, top + step, top + 1.5 * step, 2 * top, 2 * top + step,
             480, 496, 464, 61440, 65536, 1e30, 3e38]  # overflow and known boundaries
    tiny = [1e-45, 1e-40, 1.17549435e-38, f.min_subnormal / 2, f.min_subnormal / 4,
            f.min_subnormal * 0.75, f.min_subnormal * 1.5, f.min_normal * 0.999]
    mags = np.concatenate([grid, mids, np.nextafter(mids, 0), np.nextafter(mids, np.inf),
                           edges, tiny, [np.inf, np.nan]]).astype(np.float32)
    return np.concatenate([mags, -mags, np.float32([0.0, -0.0, -np.nan])])


def random_values(n, seed):
    rng = np.random.default_rng(seed)
    patterns = rng.integers(0, 2 ** 32, n, dtype=np.uint64).astype(np.uint32).view(np.float32)
    return np.concatenate([patterns, rng.normal(0, 50, n).astype(np.float32),
                           rng.standard_cauchy(n).astype(np.float32)])


CASES = [(name, sat) for name in ONNX_NAMES for sat in (True, False)]


@pytest.mark.parametrize("name,saturate", CASES)
@pytest.mark.parametrize("scale", [1.0, 0.25, 0.037])
def test_per_tensor_matches_onnxruntime(name, saturate, scale):
    f = formats.get(name)
    s = np.float32(scale)
    # Powers of two keep the ties exact after the division; 0.037 tests the division.
    x = np.concatenate([special_values(f) * s, random_values(20000, seed=len(name))])
    codes_ref = OrtQDQ(f, "q", saturate=saturate).run(x, s)
    codes = kernels.quantize(f, x, s, saturate=saturate)
    np.testing.assert_array_equal(codes.view(np.uint8), codes_ref.view(np.uint8))
    fq_ref = OrtQDQ(f, "qdq", saturate=saturate).run(x, s)
    np.testing.assert_array_equal(bits(kernels.fake_quant(f, x, s, saturate=saturate)), bits(fq_ref))
    dq_ref = OrtQDQ(f, "dq").run(codes_ref, s)
    np.testing.assert_array_equal(bits(kernels.dequantize(f, codes, s)), bits(dq_ref))
    np.testing.assert_array_equal(bits(dq_ref), bits(fq_ref))


@pytest.mark.parametrize("name,saturate", CASES)
@pytest.mark.parametrize("shape,axis", [((3, 5, 7), 1), ((4, 6), -1), ((6, 2, 3, 2), 0),
                                        ((2, 3, 64), 2)])
def test_per_axis_matches_onnxruntime(name, saturate, shape, axis):
    f = formats.get(name)
    rng = np.random.default_rng(7)
    n = int(np.prod(shape))
    sv = special_values(f)
    x = np.concatenate([sv, random_values(n, seed=3)])[rng.permutation(sv.size + 3 * n)][:n]
    x = x.reshape(shape)
    nc = shape[axis]
    # Powers of two and arbitrary scales side by side, one per channel.
    scale = np.where(np.arange(nc) % 2 == 0, 2.0 ** (np.arange(nc) % 5 - 2),
                     rng.uniform(0.01, 3, nc)).astype(np.float32)
    with np.errstate(over="ignore"):  # huge patterns times a scale > 1 become Inf: fine
        sx = x * np.expand_dims(scale, tuple(i for i in range(len(shape)) if i != axis % len(shape)))
    ort_ax = dict(axis=axis, rank=len(shape), channels=nc)
    codes_ref = OrtQDQ(f, "q", saturate=saturate, **ort_ax).run(sx, scale)
    codes = kernels.quantize(f, sx, scale, axis=axis, saturate=saturate)
    np.testing.assert_array_equal(codes.view(np.uint8), codes_ref.view(np.uint8))
    fq_ref = OrtQDQ(f, "qdq", saturate=saturate, **ort_ax).run(sx, scale)
    fq = kernels.fake_quant(f, sx, scale, axis=axis, saturate=saturate)
    np.testing.assert_array_equal(bits(fq), bits(fq_ref))
    dq_ref = OrtQDQ(f, "dq", **ort_ax).run(codes_ref, scale)
    np.testing.assert_array_equal(bits(kernels.dequantize(f, codes, scale, axis=axis)), bits(dq_ref))


@pytest.mark.parametrize("name", list(formats.FORMATS))
@pytest.mark.parametrize("saturate", [True, False])
def test_parallel_and_axis_loops_agree_with_the_serial_tensor_loop(name, saturate):
    """Large arrays take the threaded loops; both must give the serial loop's bits."""
    f = formats.get(name)
    x = random_values(kernels.PARALLEL_MIN_SIZE // 3 + 1000, seed=11)
    s = np.float32(0.173)
    serial = np.empty_like(x)
    _cast.fake_quant_tensor(x, s, saturate, f.kernel_id, serial)
    np.testing.assert_array_equal(bits(kernels.fake_quant(f, x, s, saturate=saturate)), bits(serial))
    codes = np.empty(x.size, np.uint8)
    _cast.quantize_tensor(x, s, saturate, f.kernel_id, codes)
    np.testing.assert_array_equal(kernels.quantize(f, x, s, saturate=saturate).view(np.uint8), codes)
    np.testing.assert_array_equal(bits(kernels.dequantize(f, kernels.quantize(f, x, s), s)),
                                  bits(kernels.fake_quant(f, x, s)))
    # The same scale on every channel: per axis must equal per tensor.
    for shape, axis in [((x.size // 1000, 1000), 1), ((1000, x.size // 1000), 0)]:
        xs = x[: shape[0] * shape[1]].reshape(shape)
        sc = np.full(shape[axis], s, np.float32)
        np.testing.assert_array_equal(
            bits(kernels.fake_quant(f, xs, sc, axis=axis, saturate=saturate)),
            bits(serial[: xs.size].reshape(shape)))


@pytest.mark.parametrize("name", list(formats.FORMATS))
@pytest.mark.parametrize("saturate", [True, False])
def test_fake_quant_in_place_gives_the_out_of_place_bits(name, saturate):
    """onnxruntime hands FakeQuant its input buffer as the output (MayInplace); the
    loops detect out is x and take their one-array versions, which must agree bit for
    bit with the two-array loops, per tensor and per axis (both layouts), serial and
    threaded."""
    f = formats.get(name)
    x = random_values(kernels.PARALLEL_MIN_SIZE + 4096, seed=12)
    sc = np.linspace(0.05, 3.0, 64).astype(np.float32)
    cases = [(x, np.float32(0.173), _cast.fake_quant_tensor, _cast.fake_quant_tensor_parallel)]
    for shape in [(16, 64, x.size // 1024), (x.size // 64, 64, 1)]:
        cases.append((x[:int(np.prod(shape))].reshape(shape), sc, _cast.fake_quant_axis,
                      _cast.fake_quant_axis_parallel))
    for xs, scale, serial, threaded in cases:
        want = np.empty_like(xs)
        serial(xs, scale, saturate, f.kernel_id, want)
        for loop in (serial, threaded):
            got = xs.copy()
            loop(got, scale, saturate, f.kernel_id, got)
            np.testing.assert_array_equal(bits(got), bits(want))


# ---------------------------------------------------------------- where ORT departs from RNE
# onnxruntime is the oracle; these pin the cases where it differs from ml_dtypes (found by
# the exhaustive test) so a change on either side is noticed.

def test_pinned_e4m3_no_saturate_480_to_496_maps_to_max():
    """ORT's E4M3FN encoder clears the mantissa's last bit for [480, 496) instead of
    overflowing: 448, where ml_dtypes (and round-to-nearest-even) give NaN."""
    x = np.float32([470.0, 480.0, 495.99, 496.0, -480.0])
    ref = OrtQDQ("e4m3", "q", saturate=False).run(x, np.float32(1))
    np.testing.assert_array_equal(ref, [0x7F, 0x7E, 0x7E, 0x7F, 0xFE])
    np.testing.assert_array_equal(kernels.quantize("e4m3", x, 1.0, saturate=False), ref)


def test_pinned_e5m2_no_saturate_round_up_overflow_is_nan_not_inf():
    """ORT gives NaN (0x7F) for values that round past max in [61440, 65536); Inf only
    from 65536. ml_dtypes gives Inf (0x7C) for the whole range."""
    x = np.float32([61439.0, 61440.0, 65535.0, 65536.0, 1e30, np.inf, -61440.0])
    ref = OrtQDQ("e5m2", "q", saturate=False).run(x, np.float32(1))
    np.testing.assert_array_equal(ref, [0x7B, 0x7F, 0x7F, 0x7C, 0x7C, 0x7C, 0xFF])
    np.testing.assert_array_equal(kernels.quantize("e5m2", x, 1.0, saturate=False), ref)


def test_pinned_e5m2_nan_code_is_0x7f():
    """ORT encodes NaN as S.11111.11; ml_dtypes as S.11111.10. Both decode to NaN."""
    x = np.float32([np.nan, -np.nan])
    for sat in (True, False):
        ref = OrtQDQ("e5m2", "q", saturate=sat).run(x, np.float32(1))
        np.testing.assert_array_equal(ref, [0x7F, 0xFF])
        np.testing.assert_array_equal(kernels.quantize("e5m2", x, 1.0, saturate=sat), ref)


@pytest.mark.parametrize("name", ["e4m3", "e5m2", "e4m3fnuz", "e5m2fnuz"])
def test_pinned_saturate_maps_inf_to_max_in_every_fp8_format(name):
    """ORT saturates +-Inf to +-max even for the FNUZ types (the ONNX Cast table says NaN)."""
    f = formats.get(name)
    x = np.float32([np.inf, -np.inf])
    ref = OrtQDQ(f, "qdq", saturate=True).run(x, np.float32(1))
    np.testing.assert_array_equal(ref, [f.max, -f.max])
    np.testing.assert_array_equal(kernels.fake_quant(f, x, 1.0), ref)


def test_pinned_int8_nan_is_minus_128():
    """MLAS clamps with max/min instructions, which turn NaN into the lower bound."""
    x = np.float32([np.nan, -np.nan, 1.0, np.inf, -np.inf, 2.5, -2.5, 3.5])
    ref = OrtQDQ("int8", "q").run(x, np.float32(1))
    np.testing.assert_array_equal(ref, [-128, -128, 1, 127, -128, 2, -2, 4])
    np.testing.assert_array_equal(kernels.quantize("int8", x, 1.0), ref)
