"""Per-element FP8/INT8 rounding for the loops in ``_cast`` (Numba, inlined, branch-free).

How the rounding works (why it is fast): for ``a = |y|`` with binade exponent ``E``
(clamped below to the format's smallest normal exponent, so subnormals share one
spacing, and above to its largest), adding and subtracting ``C = 2**(E + 23 - m)``
makes the FPU itself round ``a`` to a multiple of ``2**(E - m)`` with
round-to-nearest-even: exactly the format's grid. Everything else (overflow, NaN, sign,
onnxruntime's departures) is a select, so loops calling these vectorise. ``_params``
turns a format id into the loop-invariant constants, once per call. ``decode_table``
gives the 256 decoded values of each format (NaN bits as onnxruntime decodes them).

Multiplying instead of dividing (``_fq_float_sat_mul``, ``_fq_int8_mul``): the division
bounds the fake-quant loops, but y1 = x * fl(1/s) can differ from y = fl(x / s) in the
last bits. For a normal 1/s, y and y1 are within a relative 2**-24 and 2**-23 + 2**-48
of x / s, so |y1 - y| < 3.0001 * 2**(E - 23) for y1 in binade E (< 2**-148 where the
quotient is float32-subnormal). Rounding onto the grid is a step function of |y| that
steps only at the midpoints between grid points, and the add-and-subtract's residual
a - r (exact: Sterbenz) says how far |y1| is from them. If |a - r| is below half the
spacing less 8 * 2**(E' - 23) (E' >= E, the clamped exponent), no midpoint lies within
8 ulps of |y1|, so y rounds to the same r; saturation and the sign follow from r and
x's sign, so they agree as well. INT8 is the same with rint's half-integers, whose
margin 2**-14 is 8 ulps at 64..128 (past 128 both clamp). Not ok (the caller divides):
a midpoint within the margin; NaN or Inf y1 (the residual is NaN); y1 at or past
2**(105 + m), where C, unclamped above (both saturate there anyway), wraps to a negative
or infinite float.
"""
from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic

__all__ = ["decode_table", "INT8_ID", "N_FORMATS"]

# error_model="numpy": float division by zero gives Inf instead of a raising branch,
# which also keeps the loops free of exceptions; no fastmath, which would break the
# add/subtract rounding trick and NaN handling.
_JIT = dict(cache=True, nogil=True, error_model="numpy")

INT8_ID = 5
N_FORMATS = 6
_MARGIN_ULPS = 8  # > 3, the most x * fl(1/s) and x / s part by, in ulps of the binade (module note)


@intrinsic
def _bits(typingctx, x):
    """float32 -> its int32 bit pattern (a bitcast, no conversion)."""
    if x != types.float32:
        return None

    def codegen(context, builder, sig, args):
        return builder.bitcast(args[0], ir.IntType(32))

    return types.int32(types.float32), codegen


@intrinsic
def _float(typingctx, b):
    """int32 bit pattern -> float32 (truncating a wider integer first)."""
    if not isinstance(b, types.Integer):
        return None

    def codegen(context, builder, sig, args):
        v = args[0]
        if v.type.width != 32:
            v = builder.trunc(v, ir.IntType(32))
        return builder.bitcast(v, ir.FloatType())

    return types.float32(b), codegen


def _binop32(name):
    """An int32 op typed int32 -> int32 (Numba would widen int32 arithmetic to int64,
    which halves the vector width of the loops)."""

    @intrinsic
    def op(typingctx, a, b):
        if a != types.int32 or b != types.int32:
            return None

        def codegen(context, builder, sig, args):
            x, y = args
            if name in ("smax", "smin"):
                pred = ">" if name == "smax" else "<"
                return builder.select(builder.icmp_signed(pred, x, y), x, y)
            return getattr(builder, name)(x, y)

        return types.int32(types.int32, types.int32), codegen

    return op


_and = _binop32("and_")
_or = _binop32("or_")
_add = _binop32("add")
_sub = _binop32("sub")
_ashr = _binop32("ashr")
_smax = _binop32("smax")
_smin = _binop32("smin")

_SIGN = np.int32(-0x80000000)
_ABS = np.int32(0x7FFFFFFF)
_EXP = np.int32(0x7F800000)
_QNAN = np.int32(0x7FC00000)
_NEG_QNAN = np.int32(-0x00400000)  # 0xFFC00000
_INF = np.int32(0x7F800000)
_24 = np.int32(24)
_0x80 = np.int32(0x80)
_0 = np.int32(0)


@njit(**_JIT)
def _params(fmt_id, saturate):
    """Loop-invariant constants of FP8 format ``fmt_id`` (see the module note).

    Returns (emin_bits, emax_bits, c_add, fmax, ovf, nan, zsign, lo_band, hi_band, band,
    bias_bits, shift, min_normal, nan_code, ovf_code, zcode_sign, tol):
    exponent-field clamps and the offset making C; the largest finite value; what an
    overflow becomes (max when saturating, else NaN or Inf) and the decoded NaN bits;
    the sign mask kept on zero (0 for FNUZ, which has no -0); a band [lo, hi) of |y|
    that onnxruntime maps to ``band`` (its quirks, below);
    then the encoder's constants; last ``tol`` for ``_fq_float_sat_mul``.
    """
    # e4m3
    m, bias, emax, fmax, has_inf, fnuz = 3, 7, 8, np.float32(448.0), False, False
    if fmt_id == 1:  # e5m2
        m, bias, emax, fmax, has_inf, fnuz = 2, 15, 15, np.float32(57344.0), True, False
    elif fmt_id == 2:  # e3m4 (the paper's: bias 3, max 30, S.111.1111 NaN only)
        m, bias, emax, fmax, has_inf, fnuz = 4, 3, 4, np.float32(30.0), False, False
    elif fmt_id == 3:  # e4m3fnuz
        m, bias, emax, fmax, has_inf, fnuz = 3, 8, 7, np.float32(240.0), False, True
    elif fmt_id == 4:  # e5m2fnuz
        m, bias, emax, fmax, has_inf, fnuz = 2, 16, 15, np.float32(57344.0), False, True
    emin_bits = np.int32((128 - bias) << 23)
    emax_bits = np.int32((127 + emax) << 23)
    c_add = np.int32((23 - m) << 23)
    nan_bits = _NEG_QNAN if fnuz else _QNAN
    nan = _float(nan_bits)
    if saturate:
        ovf = fmax
    elif has_inf:
        ovf = _float(_INF)
    else:
        ovf = nan
    zsign = np.int32(0) if fnuz else _SIGN
    # Bands of |y| where onnxruntime's encoder departs from round-to-nearest-even
    # without saturation (pinned by tests): E4M3FN maps [480, 496) to 448; E5M2 maps
    # [61440, 65536), which rounds past max, to NaN rather than Inf.
    lo_band = np.float32(0.0)
    hi_band = np.float32(0.0)
    band = fmax
    if fmt_id == 0 and not saturate:
        lo_band, hi_band, band = np.float32(480.0), np.float32(496.0), fmax
    elif fmt_id == 1 and not saturate:
        lo_band, hi_band, band = np.float32(61440.0), np.float32(65536.0), nan
    bias_bits = np.int32((127 - bias) << 23)
    min_normal = _float(emin_bits)
    nan_code = np.int32(0x80) if fnuz else np.int32((1 << (8 - 1)) - 1)
    ovf_code = np.int32(0x7C) if has_inf else nan_code
    zcode_sign = np.int32(0) if fnuz else np.int32(0x80)
    # C * tol = half the grid spacing less _MARGIN_ULPS ulps of the binade:
    # tol = 2**-24 - 8 * 2**(m - 46), exact in float32.
    tol = np.float32(2.0 ** -24 - _MARGIN_ULPS * 2.0 ** (m - 46))
    return (emin_bits, emax_bits, c_add, fmax, ovf, nan, zsign, lo_band, hi_band, band,
            bias_bits, np.int32(23 - m), min_normal, nan_code, ovf_code, zcode_sign, tol)


@njit(inline="always", **_JIT)
def _grid(y, emin_bits, emax_bits, c_add):
    """(|y| rounded to the grid spacing of its binade, |y|, y's sign bits): the module
    note's add-and-subtract, before overflow and NaN are settled."""
    yb = _bits(y)
    sign = _and(yb, _SIGN)
    a = _float(_and(yb, _ABS))
    eb = _smin(_smax(_and(yb, _EXP), emin_bits), emax_bits)
    c = _float(_add(eb, c_add))
    return (a + c) - c, a, sign


@njit(inline="always", **_JIT)
def _round_mag(y, emin_bits, emax_bits, c_add, fmax, ovf, nan, lo_band, hi_band, band):
    """|y| rounded onto the format grid (overflow -> ovf, NaN -> nan), and y's sign bits."""
    r, a, sign = _grid(y, emin_bits, emax_bits, c_add)
    r = ovf if r > fmax else r
    r = band if (a >= lo_band) & (a < hi_band) else r
    r = nan if r != r else r
    return r, sign


@njit(inline="always", **_JIT)
def _fq_float(y, scale, emin_bits, emax_bits, c_add, fmax, ovf, nan, zsign, lo_band, hi_band, band):
    r, sign = _round_mag(y, emin_bits, emax_bits, c_add, fmax, ovf, nan, lo_band, hi_band, band)
    sign = sign if r != 0 else _and(sign, zsign)
    return _float(_or(_bits(r), sign)) * scale


@njit(inline="always", **_JIT)
def _fq_float_sat(y, scale, emin_bits, emax_bits, c_add, fmax, nan):
    """``_fq_float`` for a saturating format that keeps -0 (E4M3FN, E5M2, E3M4 with
    saturate on, the compiler's default): no onnxruntime bands, overflow is max and the
    sign is always kept. Fewer selects per element, so fake-quant runs ~30% faster in cache."""
    r, _, sign = _grid(y, emin_bits, emax_bits, c_add)
    r = fmax if r > fmax else r
    r = nan if r != r else r
    return _float(_or(_bits(r), sign)) * scale


@njit(inline="always", **_JIT)
def _fq_float_sat_mul(y1, scale, emin_bits, c_add, fmax, tol):
    """(``_fq_float_sat(y1, ...)``, ok) for ``y1 = x * fl(1/scale)``: when ok, the value is
    ``_fq_float_sat(x / scale, ...)``'s, bit for bit (module note); otherwise it is to be
    discarded. The check costs four vector operations; leaving NaN, Inf and the huge
    values to the division saves the top clamp and the NaN select."""
    yb = _bits(y1)
    a = _float(_and(yb, _ABS))
    # No clamp to the largest binade: above it r only grows (still > fmax), and where
    # E + 23 - m passes 127 the exponent wraps, making C negative or Inf: then not ok.
    c = _float(_add(_smax(_and(yb, _EXP), emin_bits), c_add))
    r = (a + c) - c
    ok = abs(a - r) < c * tol  # the residual a - r is exact; NaN (from Inf or NaN) is not ok
    r = fmax if r > fmax else r
    return _float(_or(_bits(r), _and(yb, _SIGN))) * scale, ok


@njit(inline="always", **_JIT)
def _fq_int8_mul(y1, scale):
    """(``_round_int8(y1) * scale``, ok) for ``y1 = x * fl(1/scale)``, as ``_fq_float_sat_mul``:
    ok unless y1 is within 2**-14 of a half-integer, or not finite."""
    r = np.float32(np.rint(y1))
    ok = abs(y1 - r) < np.float32(0.5 - 2.0 ** -14)
    r = r + np.float32(0.0)
    r = np.float32(-128.0) if r < np.float32(-128.0) else r
    r = np.float32(127.0) if r > np.float32(127.0) else r
    return r * scale, ok


@njit(inline="always", **_JIT)
def _q_float(y, emin_bits, emax_bits, c_add, fmax, ovf, nan, lo_band, hi_band, band,
             bias_bits, shift, min_normal, nan_code, ovf_code, zcode_sign):
    r, sign = _round_mag(y, emin_bits, emax_bits, c_add, fmax, ovf, nan, lo_band, hi_band, band)
    normal = _ashr(_sub(_bits(r), bias_bits), shift)
    sub = _ashr(_sub(_bits(r + min_normal), _bits(min_normal)), shift)
    code = normal if r >= min_normal else sub
    code = ovf_code if r > fmax else code
    code = nan_code if r != r else code
    s = _and(_ashr(sign, _24), _0x80)
    s = s if code != _0 else _and(s, zcode_sign)
    return np.uint8(_or(code, s))


@njit(inline="always", **_JIT)
def _round_int8(y):
    # onnxruntime (MLAS) clamps in float, then converts with round-half-even; its
    # max/min instructions turn NaN into -128. "+ 0" makes -0 into +0, as decoding the
    # integer code 0 gives +0.
    r = np.float32(np.rint(y)) + np.float32(0.0)
    r = np.float32(-128.0) if r < np.float32(-128.0) else r
    r = np.float32(127.0) if r > np.float32(127.0) else r
    r = np.float32(-128.0) if r != r else r
    return r


# ---------------------------------------------------------------- decode tables

def _decode_all(fmt_id):
    """float32 values of all 256 codes of ``fmt_id``, NaN bits as onnxruntime decodes them."""
    codes = np.arange(256, dtype=np.int64)
    if fmt_id == INT8_ID:
        return codes.astype(np.uint8).view(np.int8).astype(np.float32)
    m, bias, fnuz, ieee, fn = {0: (3, 7, False, False, True), 1: (2, 15, False, True, False),
                               2: (4, 3, False, False, True), 3: (3, 8, True, False, False),
                               4: (2, 16, True, False, False)}[fmt_id]
    e_bits = 7 - m
    sign = np.where(codes & 0x80, -1.0, 1.0)
    e = (codes >> m) & ((1 << e_bits) - 1)
    man = codes & ((1 << m) - 1)
    mag = np.where(e == 0, man * 2.0 ** (1 - bias - m), (1 + man / 2.0 ** m) * 2.0 ** (e - bias))
    val = (sign * mag).astype(np.float32)
    bits = val.view(np.int32).copy()
    top = (1 << e_bits) - 1
    if ieee:  # E5M2: top exponent is Inf (mantissa 0) or NaN
        is_top = e == top
        bits[is_top & (man == 0)] = np.where(codes & 0x80, _INF | _SIGN, _INF)[is_top & (man == 0)]
        nan = is_top & (man != 0)
        bits[nan] = np.where(codes & 0x80, _NEG_QNAN, _QNAN)[nan]
    elif fn:  # only S.1...1 is NaN
        nan = (codes & 0x7F) == 0x7F
        bits[nan] = np.where(codes & 0x80, _NEG_QNAN, _QNAN)[nan]
    else:  # FNUZ: 0x80 is the one NaN
        bits[0x80] = _NEG_QNAN
    return bits.view(np.float32)


# One row per kernel_id; a global array, so Numba bakes it into the compiled loops.
_TABLES = np.stack([_decode_all(i) for i in range(N_FORMATS)])


def decode_table(fmt_id):
    """A copy of the 256 decoded float32 values of format ``fmt_id`` (index = code)."""
    return _TABLES[fmt_id].copy()
