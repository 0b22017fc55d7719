"""The paper's E3M4 (no ONNX type, so no onnxruntime oracle) against a brute-force
reference: decode all 256 codes from the definition, pick the nearest by exact
arithmetic, ties to the even mantissa, then apply the saturate rules. Also against
ml_dtypes' float8_e3m4 on [-15.5, 15.5], where the two formats share their grid."""
import math

import ml_dtypes
import numpy as np
import pytest

from fp8onnx import formats, kernels

# Random bit patterns include signalling NaNs, which numpy warns about when it converts
# or multiplies them: that is expected here.
pytestmark = pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")

F = formats.get("e3m4")


def _decode(code):
    s = -1.0 if code & 0x80 else 1.0
    e, m = (code >> 4) & 0x7, code & 0xF
    if e == 7 and m == 15:
        return math.nan
    if e == 0:
        return s * m / 16 * 2.0 ** -2
    return s * (1 + m / 16) * 2.0 ** (e - 3)


# Magnitudes of codes 0x00..0x7F; 0x7F (NaN) stands for 31, the next point of the grid,
# so that rounding past max is seen as "nearest is 31" (as for OCP E4M3FN).
MAGS = np.array([_decode(c) for c in range(127)] + [31.0])


def brute_force_codes(x, saturate):
    """E3M4 codes of float32 ``x`` (scale 1) by nearest-of-all-codes.

    Exactness: for 2**-24 <= |x| < 64, |x - v| is exact in float64 (x has 24 significant
    bits with lsb >= 2**-47, every v is a multiple of 2**-6 below 64, so the difference
    needs at most 53 bits); below 2**-24 the nearest is 0 by a margin no rounding
    reaches; from 64 on (and Inf) the nearest is the overflow point 31.
    """
    x = np.asarray(x, np.float32)
    out = np.empty(x.size, np.uint8)
    for lo in range(0, x.size, 4096):
        xs = x[lo:lo + 4096]
        a = np.abs(xs.astype(np.float64))
        d = np.abs(a[:, None] - MAGS[None, :])
        best = d == d.min(axis=1, keepdims=True)
        # Among equal distances (a tie between neighbours) prefer the even mantissa.
        prio = best * (2 - (np.arange(128) & 1))[None, :]
        code = np.argmax(prio, axis=1)
        code[a >= 64] = 0x7F
        over = code == 0x7F
        code[over] = 0x7E if saturate else 0x7F
        code[np.isnan(a)] = 0x7F
        sign = np.signbit(xs).astype(np.uint8) << 7
        out[lo:lo + 4096] = code.astype(np.uint8) | sign
    return out


def fast_reference_codes(x, saturate):
    """A second, fast reference for the exhaustive test: ml_dtypes' float8_e3m4 where the
    grids are shared (|x| < 15.75: ml_dtypes' codes are the paper's codes there), and
    numpy's round-half-even to integers on the paper's top binade [16, 32), spacing 1.
    (At 15.75 and above ml_dtypes returns its Inf, whose code 0x70 is the paper's 16.)"""
    x = np.asarray(x, np.float32)
    sign = np.signbit(x).astype(np.uint8) << 7
    code = x.astype(ml_dtypes.float8_e3m4).view(np.uint8) & 0x7F
    a = np.abs(x)
    top = a >= 15.75
    q = np.rint(np.minimum(a[top], 64))          # RNE; 15.75 -> 16, 30.5 -> 30, 31 up: overflow
    over = q >= 31
    code[top] = np.where(over, 0x7E if saturate else 0x7F, 0x70 + q - 16)
    code[np.isnan(x)] = 0x7F
    return code | sign


def e3m4_test_values(seed=0):
    rng = np.random.default_rng(seed)
    mags = MAGS[:127]
    mids = (MAGS[1:] + MAGS[:-1]) / 2
    m32 = np.concatenate([mags, mids, [30.5, 30.75, 31, 31.5, 32, 63.99, 64, 1e10, 3e38],
                          [2.0 ** -7, 2.0 ** -8, 2.0 ** -24, 2.0 ** -25, 1e-45, 1e-40],
                          [np.inf, np.nan]]).astype(np.float32)
    near = np.concatenate([np.nextafter(m32, np.float32(0)), np.nextafter(m32, np.float32(np.inf))])
    rand_bits = rng.integers(0, 2 ** 32, 200_000, dtype=np.uint64).astype(np.uint32).view(np.float32)
    rand_range = rng.uniform(-40, 40, 200_000).astype(np.float32)
    v = np.concatenate([m32, near, -m32, -near, np.float32([0.0, -0.0]), rand_bits, rand_range])
    return v


@pytest.mark.parametrize("saturate", [True, False])
def test_quantize_matches_brute_force(saturate):
    x = e3m4_test_values()
    ref = brute_force_codes(x, saturate)
    np.testing.assert_array_equal(kernels.quantize(F, x, 1.0, saturate=saturate), ref)
    # The exhaustive test's fast reference agrees with the brute force here too.
    np.testing.assert_array_equal(fast_reference_codes(x, saturate), ref)


@pytest.mark.parametrize("saturate", [True, False])
@pytest.mark.parametrize("scale", [1.0, 0.125, 4.0])
def test_fake_quant_and_dequantize_decode_the_brute_force_codes(saturate, scale):
    s = np.float32(scale)
    with np.errstate(over="ignore"):
        x = e3m4_test_values(seed=1) * s  # exact for powers of two (up to overflow)
    ref = brute_force_codes(x / s, saturate)
    table = np.array([_decode(c) for c in range(256)], np.float32)
    want = table[ref] * s
    fq = kernels.fake_quant(F, x, s, saturate=saturate)
    nan = np.isnan(want)
    np.testing.assert_array_equal(np.isnan(fq), nan)
    np.testing.assert_array_equal(fq.view(np.uint32)[~nan], want.view(np.uint32)[~nan])
    dq = kernels.dequantize(F, ref, s)
    np.testing.assert_array_equal(dq.view(np.uint32), fq.view(np.uint32))


def test_per_axis_matches_per_element_brute_force():
    rng = np.random.default_rng(5)
    scale = np.float32([0.5, 1.0, 2.0, 0.25])
    xs = rng.uniform(-40, 40, (3, 4, 50)).astype(np.float32)
    x = xs * scale[None, :, None]
    codes = kernels.quantize(F, x, scale, axis=1)
    np.testing.assert_array_equal(codes, brute_force_codes(xs.reshape(-1), True).reshape(x.shape))


def test_agrees_with_ml_dtypes_e3m4_on_the_shared_grid():
    """ml_dtypes' float8_e3m4 is IEEE-style (max 15.5), but below that the grids are one."""
    rng = np.random.default_rng(2)
    mids = ((MAGS[1:] + MAGS[:-1]) / 2)
    shared = MAGS[:127][MAGS[:127] <= 15.5]
    m = np.concatenate([shared, mids[mids < 15.5], rng.uniform(0, 15.5, 100_000),
                        [2.0 ** -8, 1e-45]]).astype(np.float32)
    x = np.concatenate([m, -m, np.float32([0.0, -0.0])])
    ours = kernels.quantize(F, x, 1.0)
    ref = x.astype(ml_dtypes.float8_e3m4).view(np.uint8)
    np.testing.assert_array_equal(ours, ref)
    np.testing.assert_array_equal(kernels.fake_quant(F, x, 1.0),
                                  x.astype(ml_dtypes.float8_e3m4).astype(np.float32))
    # ...and above 15.5 they must differ: ours keeps the top binade as numbers.
    assert kernels.fake_quant(F, np.float32([20.0]), 1.0)[0] == 20.0
    assert np.isinf(np.float32(20.0).astype(ml_dtypes.float8_e3m4).astype(np.float32))
