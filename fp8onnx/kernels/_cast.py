"""Pure Numba loops for FP8/INT8 quantize, dequantize and fake-quant (no validation).

Contract (callers, including a numba ``@cfunc`` running inside onnxruntime as a custom
op, rely on these exact names and signatures):

* ``x``/``out`` are C-contiguous float32 arrays, 1-D for ``*_tensor`` and 3-D
  ``(outer, C, inner)`` for ``*_axis`` (the quantized axis in the middle); codes are
  uint8 arrays of the same shape for every format (INT8 codes travel as a uint8 view
  of the int8 array); ``scale`` is a float32 scalar (tensor) or a 1-D float32 array of
  length C (axis); ``saturate`` a bool; ``fmt_id`` is ``Format.kernel_id``.
* The loops never raise and never allocate: they assume the wrapper in
  ``fp8onnx.kernels`` checked dtypes, shapes, contiguity, a finite positive scale and a
  known ``fmt_id`` (an unknown id leaves ``out`` untouched).
* Semantics are onnxruntime's QuantizeLinear/DequantizeLinear with zero point 0,
  bit for bit: ``y = x / scale`` (a division, as onnxruntime does, not a multiply by
  the reciprocal), rounded to nearest even; ``saturate`` clamps finite overflow and
  +-Inf to +-max; without it overflow becomes NaN (or Inf for E5M2). NaN stays NaN.
  Dequantize is ``decode(code) * scale``; fake-quant is the two fused in one pass.
* Every per-element function here is branch-free so the inner loops vectorise; the
  format is dispatched once per call (``_params``), outside the loops.

How the rounding works (why it is fast): for ``a = |y|`` with binade exponent ``E``
(clamped below to the format's smallest normal exponent, so subnormals share one
spacing, and above to its largest), adding and subtracting ``C = 2**(E + 23 - m)``
makes the FPU itself round ``a`` to a multiple of ``2**(E - m)`` with
round-to-nearest-even: exactly the format's grid. Measured ~0.5 ns/element on one
core against ~9 ns for onnxruntime's own Q->DQ (``tools/bench_kernels.py``).
"""
from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.extending import intrinsic

__all__ = [
    "fake_quant_tensor", "fake_quant_axis", "quantize_tensor", "quantize_axis",
    "dequantize_tensor", "dequantize_axis", "fake_quant_tensor_parallel",
    "fake_quant_axis_parallel", "quantize_tensor_parallel", "dequantize_tensor_parallel",
    "amax_tensor", "amax_tensor_parallel", "amax_axis", "decode_table", "INT8_ID", "N_FORMATS",
]

# error_model="numpy": float division by zero gives Inf instead of a raising branch,
# which also keeps the loops free of exceptions; no fastmath, which would break the
# add/subtract rounding trick and NaN handling.
_JIT = dict(cache=True, nogil=True, error_model="numpy")

INT8_ID = 5
N_FORMATS = 6


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
    bias_bits, shift, min_normal, nan_code, ovf_code, zcode_sign):
    exponent-field clamps and the offset making C; the largest finite value; what an
    overflow becomes (max when saturating, else NaN or Inf) and the decoded NaN bits;
    the sign mask kept on zero (0 for FNUZ, which has no -0); a band [lo, hi) of |y|
    that onnxruntime maps to ``band`` (its quirks, below);
    then the encoder's constants.
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
    return (emin_bits, emax_bits, c_add, fmax, ovf, nan, zsign, lo_band, hi_band, band,
            bias_bits, np.int32(23 - m), min_normal, nan_code, ovf_code, zcode_sign)


@njit(inline="always", **_JIT)
def _round_mag(y, emin_bits, emax_bits, c_add, fmax, ovf, nan, lo_band, hi_band, band):
    """|y| rounded onto the format grid (overflow -> ovf, NaN -> nan), and y's sign bits."""
    yb = _bits(y)
    sign = _and(yb, _SIGN)
    a = _float(_and(yb, _ABS))
    eb = _smin(_smax(_and(yb, _EXP), emin_bits), emax_bits)
    c = _float(_add(eb, c_add))
    r = (a + c) - c
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


# ---------------------------------------------------------------- span loops
# Each takes whole 1-D C-contiguous spans (callers pass slices) and is a separate,
# non-inlined function: inlined into the per-channel loop nests over reshaped views,
# the same loop ran ~5x slower (measured), as LLVM then versioned it poorly.

@njit(**_JIT)
def _fq_row(x, out, scale, fmt_id, p):
    if fmt_id == INT8_ID:
        for i in range(x.size):
            out[i] = _round_int8(x[i] / scale) * scale
    else:
        emin_bits, emax_bits, c_add, fmax, ovf, nan, zsign, lo_band, hi_band, band = p[:10]
        for i in range(x.size):
            out[i] = _fq_float(x[i] / scale, scale, emin_bits, emax_bits, c_add, fmax, ovf,
                               nan, zsign, lo_band, hi_band, band)


@njit(**_JIT)
def _q_row(x, out, scale, fmt_id, p):
    if fmt_id == INT8_ID:
        for i in range(x.size):
            out[i] = np.uint8(np.int32(_round_int8(x[i] / scale)) & 0xFF)
    else:
        (emin_bits, emax_bits, c_add, fmax, ovf, nan, zsign, lo_band, hi_band, band,
         bias_bits, shift, min_normal, nan_code, ovf_code, zcode_sign) = p
        for i in range(x.size):
            out[i] = _q_float(x[i] / scale, emin_bits, emax_bits, c_add, fmax, ovf, nan,
                              lo_band, hi_band, band, bias_bits, shift, min_normal, nan_code,
                              ovf_code, zcode_sign)


@njit(**_JIT)
def _dq_row(codes, out, scale, table):
    for i in range(codes.size):
        out[i] = table[codes[i]] * scale


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


# ---------------------------------------------------------------- public loops

_CHUNK = 1 << 16  # elements per parallel task: big enough to amortise scheduling


@njit(**_JIT)
def fake_quant_tensor(x, scale, saturate, fmt_id, out):
    """out[i] = dequantize(quantize(x[i] / scale)) for 1-D float32 x and out."""
    if fmt_id < 0 or fmt_id >= N_FORMATS:
        return
    s = np.float32(scale)
    _fq_row(x, out, s, fmt_id, _params(fmt_id, saturate))


@njit(parallel=True, **_JIT)
def fake_quant_tensor_parallel(x, scale, saturate, fmt_id, out):
    """fake_quant_tensor on all Numba threads (chunks of 64K elements)."""
    if fmt_id < 0 or fmt_id >= N_FORMATS:
        return
    s = np.float32(scale)
    p = _params(fmt_id, saturate)
    n = x.size
    for k in prange((n + _CHUNK - 1) // _CHUNK):
        lo, hi = k * _CHUNK, min(n, (k + 1) * _CHUNK)
        _fq_row(x[lo:hi], out[lo:hi], s, fmt_id, p)


@njit(**_JIT)
def quantize_tensor(x, scale, saturate, fmt_id, out_u8):
    """out_u8[i] = code of x[i] / scale (uint8 bit pattern; INT8 as its two's complement byte)."""
    if fmt_id < 0 or fmt_id >= N_FORMATS:
        return
    s = np.float32(scale)
    _q_row(x, out_u8, s, fmt_id, _params(fmt_id, saturate))


@njit(parallel=True, **_JIT)
def quantize_tensor_parallel(x, scale, saturate, fmt_id, out_u8):
    if fmt_id < 0 or fmt_id >= N_FORMATS:
        return
    s = np.float32(scale)
    p = _params(fmt_id, saturate)
    n = x.size
    for k in prange((n + _CHUNK - 1) // _CHUNK):
        lo, hi = k * _CHUNK, min(n, (k + 1) * _CHUNK)
        _q_row(x[lo:hi], out_u8[lo:hi], s, fmt_id, p)


@njit(**_JIT)
def dequantize_tensor(codes_u8, scale, fmt_id, out):
    """out[i] = decode(codes_u8[i]) * scale."""
    if fmt_id < 0 or fmt_id >= N_FORMATS:
        return
    _dq_row(codes_u8, out, np.float32(scale), _TABLES[fmt_id])


@njit(parallel=True, **_JIT)
def dequantize_tensor_parallel(codes_u8, scale, fmt_id, out):
    if fmt_id < 0 or fmt_id >= N_FORMATS:
        return
    s = np.float32(scale)
    table = _TABLES[fmt_id]
    n = codes_u8.size
    for k in prange((n + _CHUNK - 1) // _CHUNK):
        lo, hi = k * _CHUNK, min(n, (k + 1) * _CHUNK)
        _dq_row(codes_u8[lo:hi], out[lo:hi], s, table)


@njit(**_JIT)
def fake_quant_axis(x, scale, saturate, fmt_id, out):
    """Per-channel fake-quant of 3-D (outer, C, inner) x with scale[C]."""
    if fmt_id < 0 or fmt_id >= N_FORMATS:
        return
    p = _params(fmt_id, saturate)
    outer, nc, inner = x.shape
    if inner == 1:  # quantized axis last: vectorise across channels instead
        _fq_chan(x.reshape(x.size), out.reshape(out.size), scale, fmt_id, p)
    else:
        for o in range(outer):
            for c in range(nc):
                _fq_row(x[o, c], out[o, c], scale[c], fmt_id, p)


@njit(**_JIT)
def _fq_chan(x, out, scale, fmt_id, p):
    """Rows of C = scale.size elements (inner == 1): element (row, c) uses scale[c]."""
    # Row slices keep the inner index a plain range(nc) index, which LLVM vectorises;
    # indexing with base + c instead was ~6x slower (measured).
    nc = scale.size
    if fmt_id == INT8_ID:
        for base in range(0, x.size, nc):
            xr, orow = x[base:base + nc], out[base:base + nc]
            for c in range(nc):
                s = scale[c]
                orow[c] = _round_int8(xr[c] / s) * s
    else:
        emin_bits, emax_bits, c_add, fmax, ovf, nan, zsign, lo_band, hi_band, band = p[:10]
        for base in range(0, x.size, nc):
            xr, orow = x[base:base + nc], out[base:base + nc]
            for c in range(nc):
                s = scale[c]
                orow[c] = _fq_float(xr[c] / s, s, emin_bits, emax_bits, c_add, fmax,
                                     ovf, nan, zsign, lo_band, hi_band, band)


@njit(parallel=True, **_JIT)
def fake_quant_axis_parallel(x, scale, saturate, fmt_id, out):
    """fake_quant_axis on all Numba threads (tasks: outer rows, or (row, channel) pairs)."""
    if fmt_id < 0 or fmt_id >= N_FORMATS:
        return
    p = _params(fmt_id, saturate)
    outer, nc, inner = x.shape
    if inner == 1:
        xf = x.reshape(x.size)
        of = out.reshape(out.size)
        rows = max(1, _CHUNK // nc)  # whole rows per task
        for k in prange((outer + rows - 1) // rows):
            lo, hi = k * rows * nc, min(outer, (k + 1) * rows) * nc
            _fq_chan(xf[lo:hi], of[lo:hi], scale, fmt_id, p)
    else:
        for k in prange(outer * nc):
            o, c = k // nc, k % nc
            _fq_row(x[o, c], out[o, c], scale[c], fmt_id, p)


@njit(**_JIT)
def quantize_axis(x3, scale, saturate, fmt_id, out_u8_3d):
    """Per-channel codes of 3-D (outer, C, inner) x3 with scale[C]."""
    if fmt_id < 0 or fmt_id >= N_FORMATS:
        return
    p = _params(fmt_id, saturate)
    outer, nc, inner = x3.shape
    for o in range(outer):
        for c in range(nc):
            _q_row(x3[o, c], out_u8_3d[o, c], scale[c], fmt_id, p)


@njit(**_JIT)
def dequantize_axis(codes_u8_3d, scale, fmt_id, out3):
    """Per-channel decode(codes) * scale[c] of 3-D (outer, C, inner) codes."""
    if fmt_id < 0 or fmt_id >= N_FORMATS:
        return
    table = _TABLES[fmt_id]
    outer, nc, inner = codes_u8_3d.shape
    for o in range(outer):
        for c in range(nc):
            _dq_row(codes_u8_3d[o, c], out3[o, c], scale[c], table)


# ---------------------------------------------------------------- amax

_LANES = 32  # independent running maxima: a select-based max reduction only vectorises
# across lanes that are kept apart (LLVM may not reorder it without fast-math).


@njit(**_JIT)
def _amax_span(x):
    """max |x| of a 1-D span, NaN ignored (0 if empty)."""
    acc = np.zeros(_LANES, dtype=np.float32)
    n = x.size - x.size % _LANES
    for i in range(0, n, _LANES):
        xr = x[i:i + _LANES]
        for j in range(_LANES):
            a = abs(xr[j])
            # NaN compares false, so it never wins: NaN-ignoring without a branch.
            acc[j] = a if a > acc[j] else acc[j]
    m = np.float32(0.0)
    for j in range(_LANES):
        m = acc[j] if acc[j] > m else m
    for k in range(n, x.size):
        a = abs(x[k])
        m = a if a > m else m
    return m


@njit(**_JIT)
def amax_tensor(x):
    """max |x| over a 1-D float32 array ignoring NaN (0 if empty or all NaN; Inf counts)."""
    return _amax_span(x)


@njit(parallel=True, **_JIT)
def amax_tensor_parallel(x):
    n = x.size
    nch = (n + _CHUNK - 1) // _CHUNK
    part = np.zeros(nch, dtype=np.float32)
    for k in prange(nch):
        part[k] = _amax_span(x[k * _CHUNK:min(n, (k + 1) * _CHUNK)])
    return _amax_span(part)


@njit(**_JIT)
def amax_axis(x3, out):
    """out[c] = max |x3[:, c, :]| ignoring NaN, for 3-D (outer, C, inner) float32 x3."""
    outer, nc, inner = x3.shape
    out[:] = 0.0
    if inner == 1:  # channels contiguous: vectorise across them
        xf = x3.reshape(x3.size)
        for o in range(outer):
            xr = xf[o * nc:(o + 1) * nc]
            for c in range(nc):
                a = abs(xr[c])
                out[c] = a if a > out[c] else out[c]
    else:
        for o in range(outer):
            for c in range(nc):
                m = _amax_span(x3[o, c])
                out[c] = m if m > out[c] else out[c]
