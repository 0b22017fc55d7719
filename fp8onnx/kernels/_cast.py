"""Pure Numba loops for FP8/INT8 quantize, dequantize and fake-quant (no validation).

Contract (callers, including a numba ``@cfunc`` running inside onnxruntime as a custom
op, rely on these exact names and signatures):

* ``x``/``out`` are C-contiguous float32 arrays, 1-D for ``*_tensor`` and 3-D
  ``(outer, C, inner)`` for ``*_axis`` (the quantized axis in the middle); fake-quant's
  ``out`` may be ``x`` itself (in place), but no other overlap; codes are uint8 arrays
  of the same shape for every format (INT8 codes travel as a uint8 view
  of the int8 array); ``scale`` is a float32 scalar (tensor) or a 1-D float32 array of
  length C (axis); ``saturate`` a bool; ``fmt_id`` is ``Format.kernel_id``.
* The loops never raise (and, but for amax's small scratch arrays, never allocate):
  they assume the wrapper in
  ``fp8onnx.kernels`` checked dtypes, shapes, contiguity, a finite positive scale and a
  known ``fmt_id`` (an unknown id leaves ``out`` untouched).
* Semantics are onnxruntime's QuantizeLinear/DequantizeLinear with zero point 0,
  bit for bit: ``y = x / scale`` (the float32 quotient, as onnxruntime divides; see
  below for when the loops multiply by 1/scale instead), rounded to nearest even;
  ``saturate`` clamps finite overflow and
  +-Inf to +-max; without it overflow becomes NaN (or Inf for E5M2). NaN stays NaN.
  Dequantize is ``decode(code) * scale``; fake-quant is the two fused in one pass.
  onnxruntime's own departures are followed too (each pinned by a test): without
  saturation E4M3FN maps |y| in [480, 496) to 448 and E5M2 maps [61440, 65536) to NaN;
  E5M2 NaN is coded S.11111.11; INT8 NaN becomes -128; -0 is kept except in FNUZ.
* Every per-element function here is branch-free so the inner loops vectorise; the
  format is dispatched once per call (``_params``), outside the loops.

The rounding itself (``_elem``) lets the FPU round: it adds and subtracts a power of two
chosen from the exponent, so each loop is a handful of vector instructions per 8-16
elements, as fast as a memory copy on large arrays (``tools/bench_kernels.py``).

The division then bounds the fake-quant loops, and x * (1/scale) is not always the
quotient, so they multiply only where that is bit-exact: for a power-of-two scale (the
product is then the quotient); and, in the common saturating FP8 (E4M3FN, E5M2, E3M4)
and INT8 loops per tensor or per row, for scales in [2**-100, 2**100], in blocks of
elements whose product ``_elem`` shows to round as the quotient does (not within 8 ulps
of a rounding midpoint, finite): a block with any other element is redone dividing.
Quantize, the per-channel loop with the channels innermost, and the other fake-quant
variants divide.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from ._elem import (_JIT, _TABLES, INT8_ID, N_FORMATS, _and, _bits, _fq_float, _fq_float_sat,
                    _fq_float_sat_mul, _fq_int8_mul, _params, _q_float, _round_int8, decode_table)

_MANT = np.int32(0x007FFFFF)
_MIN_NORMAL_BITS = np.int32(0x00800000)     # 2**-126
_MAX_FINITE_EXP_BITS = np.int32(0x7F000000)  # 2**127
_MUL_LO_BITS = np.int32((127 - 100) << 23)   # 2**-100
_MUL_HI_BITS = np.int32((127 + 100) << 23)   # 2**100

__all__ = [
    "fake_quant_tensor", "fake_quant_axis", "quantize_tensor", "quantize_axis",
    "dequantize_tensor", "dequantize_axis", "fake_quant_tensor_parallel",
    "fake_quant_axis_parallel", "quantize_tensor_parallel", "dequantize_tensor_parallel",
    "amax_tensor", "amax_tensor_parallel", "amax_axis", "decode_table", "INT8_ID", "N_FORMATS",
]

# ---------------------------------------------------------------- span loops
# Each takes whole 1-D C-contiguous spans (callers pass slices) and is a separate,
# non-inlined function: inlined into the per-channel loop nests over reshaped views,
# the same loop ran ~5x slower (measured), as LLVM then versioned it poorly.

def _row_loop(inplace):
    """The fake-quant span loop ``out[i] = fq(src[i])``, with src = x, or src = out for the
    in-place copy: onnxruntime hands FakeQuant its input's buffer when nothing else reads
    it, and LLVM's runtime alias check sends a two-array loop whose arrays overlap to its
    scalar version (~7x slower, measured), while one array read and written vectorises.
    ``inplace`` is a compile-time constant, so each copy keeps only its own branch.
    ``divide`` forces the plain dividing loop, the reference that the tests and
    tools/bench_kernels.py compare the multiplying blocks with."""
    sat_blocks = _block_loop(inplace, _sat_fast, _sat_exact)
    int8_blocks = _block_loop(inplace, _int8_fast, _int8_exact)

    @njit(**_JIT)
    def loop(x, out, scale, fmt_id, p, divide):
        if inplace:
            src = out  # not x: x may be typed read-only
        else:
            src = x
        pow2 = _is_pow2(scale)
        inv = np.float32(1.0) / scale
        blocks = not pow2 and not divide and _mul_checkable(scale)
        if fmt_id == INT8_ID:
            if blocks:
                for i in range(int8_blocks(src, out, scale, inv, p), out.size):
                    out[i] = _round_int8(src[i] / scale) * scale
                return
            for i in range(out.size):
                out[i] = _round_int8(_quotient(src[i], scale, inv, pow2)) * scale
        else:
            emin_bits, emax_bits, c_add, fmax, ovf, nan, zsign, lo_band, hi_band, band = p[:10]
            if ovf == fmax and zsign != 0 and lo_band == hi_band:
                if blocks:
                    for i in range(sat_blocks(src, out, scale, inv, p), out.size):
                        out[i] = _fq_float_sat(src[i] / scale, scale, emin_bits, emax_bits, c_add,
                                               fmax, nan)
                    return
                for i in range(out.size):
                    out[i] = _fq_float_sat(_quotient(src[i], scale, inv, pow2), scale, emin_bits,
                                           emax_bits, c_add, fmax, nan)
                return
            # The other variants (saturation off, FNUZ: not the compiler's default) divide;
            # unsaturated, a checked multiply would also have to watch onnxruntime's band
            # edges (480, 65536), which are not midpoints.
            for i in range(out.size):
                out[i] = _fq_float(_quotient(src[i], scale, inv, pow2), scale, emin_bits,
                                   emax_bits, c_add, fmax, ovf, nan, zsign, lo_band, hi_band, band)

    return loop


# Elements per block of the multiplying loops (fixed, so LLVM unrolls the vector loop).
# The two-array loop pays more per block (two slices, an alias check): larger blocks.
_BLOCK, _BLOCK_APART = 32, 128


def _block_loop(inplace, fast, exact):
    """Whole blocks of B elements: ``fast`` on x * inv gives each value and whether it is
    certainly the division's; a block with any doubt is redone by ``exact`` on x / scale
    (on values spread over the grid, ~1 block in 2000 for E4M3 and 1 in 250 for INT8 at
    B = 32). Returns the number of elements done: the tail is the caller's. In place, a
    doubtful element keeps x until the redo, which meets the block's finished values
    again: fake-quant gives those back unchanged (grid * s / s is within 2 ulps of the
    grid point, far from its rounding midpoints, for the scales _mul_checkable allows)."""

    B = _BLOCK if inplace else _BLOCK_APART

    @njit(**_JIT)
    def blocks(src, out, scale, inv, p):
        nblk = out.size // B
        for k in range(nblk):
            orow = out[k * B:(k + 1) * B]
            srow = orow if inplace else src[k * B:(k + 1) * B]
            sure = True
            for j in range(B):
                v = srow[j]
                y, ok = fast(v * inv, scale, p)
                if inplace:
                    orow[j] = y if ok else v
                else:
                    orow[j] = y
                sure &= ok
            if not sure:
                for j in range(B):
                    orow[j] = exact(srow[j] / scale, scale, p)
        return nblk * B

    return blocks


@njit(inline="always", **_JIT)
def _sat_fast(y, scale, p):
    return _fq_float_sat_mul(y, scale, p[0], p[2], p[3], p[16])


@njit(inline="always", **_JIT)
def _sat_exact(y, scale, p):
    return _fq_float_sat(y, scale, p[0], p[1], p[2], p[3], p[5])


@njit(inline="always", **_JIT)
def _int8_fast(y, scale, p):
    return _fq_int8_mul(y, scale)


@njit(inline="always", **_JIT)
def _int8_exact(y, scale, p):
    return _round_int8(y) * scale


@njit(inline="always", **_JIT)
def _quotient(v, scale, inv, pow2):
    """``v / scale``, as ``v * inv`` (inv = 1/scale) when the scale is a power of two: then
    both are the rounded exact quotient, bit for bit, and the loop is ~20% faster (the
    division bounds it). ``pow2`` is loop-invariant, so LLVM unswitches it into two loops."""
    return v * inv if pow2 else v / scale


@njit(**_JIT)
def _is_pow2(scale):
    """A positive power of two whose reciprocal is exact (2**-126 .. 2**127)."""
    b = _bits(scale)
    return _and(b, _MANT) == 0 and b >= _MIN_NORMAL_BITS and b <= _MAX_FINITE_EXP_BITS


@njit(**_JIT)
def _mul_checkable(scale):
    """A scale in [2**-100, 2**100]: 1/scale is a normal float32 (so x * fl(1/scale) stays
    within 3 ulps of x / scale, see _elem) and grid * scale neither under- nor overflows."""
    b = _bits(scale)
    return b >= _MUL_LO_BITS and b <= _MUL_HI_BITS


_fq_row_apart, _fq_row_inplace = _row_loop(False), _row_loop(True)


@njit(**_JIT)
def _fq_row(x, out, scale, fmt_id, p, divide):
    if x.ctypes.data == out.ctypes.data:
        _fq_row_inplace(x, out, scale, fmt_id, p, divide)
    else:
        _fq_row_apart(x, out, scale, fmt_id, p, divide)


@njit(**_JIT)
def _q_row(x, out, scale, fmt_id, p):
    if fmt_id == INT8_ID:
        for i in range(x.size):
            out[i] = np.uint8(np.int32(_round_int8(x[i] / scale)) & 0xFF)
    else:
        (emin_bits, emax_bits, c_add, fmax, ovf, nan, zsign, lo_band, hi_band, band,
         bias_bits, shift, min_normal, nan_code, ovf_code, zcode_sign) = p[:16]
        for i in range(x.size):
            out[i] = _q_float(x[i] / scale, emin_bits, emax_bits, c_add, fmax, ovf, nan,
                              lo_band, hi_band, band, bias_bits, shift, min_normal, nan_code,
                              ovf_code, zcode_sign)


@njit(**_JIT)
def _dq_row(codes, out, scale, table):
    for i in range(codes.size):
        out[i] = table[codes[i]] * scale


# ---------------------------------------------------------------- public loops

_CHUNK = 1 << 16  # elements per parallel task: big enough to amortise scheduling


@njit(**_JIT)
def fake_quant_tensor(x, scale, saturate, fmt_id, out):
    """out[i] = dequantize(quantize(x[i] / scale)) for 1-D float32 x and out."""
    if fmt_id < 0 or fmt_id >= N_FORMATS:
        return
    s = np.float32(scale)
    _fq_row(x, out, s, fmt_id, _params(fmt_id, saturate), False)


@njit(**_JIT)
def _fake_quant_tensor_divide(x, scale, saturate, fmt_id, out):
    """fake_quant_tensor computed with a division for every element (the reference)."""
    if fmt_id < 0 or fmt_id >= N_FORMATS:
        return
    _fq_row(x, out, np.float32(scale), fmt_id, _params(fmt_id, saturate), True)


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
        _fq_row(x[lo:hi], out[lo:hi], s, fmt_id, p, False)


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
                _fq_row(x[o, c], out[o, c], scale[c], fmt_id, p, False)


def _chan_loop(inplace):
    """Rows of C = scale.size elements (inner == 1): element (row, c) uses scale[c]; src is
    out for the in-place copy (see _row_loop)."""

    @njit(**_JIT)
    def loop(x, out, scale, fmt_id, p):
        # Row slices keep the inner index a plain range(nc) index, which LLVM vectorises;
        # indexing with base + c instead was ~6x slower (measured). In place, the row read
        # is the very slice written: two slices of one array would be checked for aliasing.
        nc = scale.size
        if fmt_id == INT8_ID:
            for base in range(0, out.size, nc):
                orow = out[base:base + nc]
                xr = orow if inplace else x[base:base + nc]
                for c in range(nc):
                    s = scale[c]
                    orow[c] = _round_int8(xr[c] / s) * s
        else:
            emin_bits, emax_bits, c_add, fmax, ovf, nan, zsign, lo_band, hi_band, band = p[:10]
            for base in range(0, out.size, nc):
                orow = out[base:base + nc]
                xr = orow if inplace else x[base:base + nc]
                for c in range(nc):
                    s = scale[c]
                    orow[c] = _fq_float(xr[c] / s, s, emin_bits, emax_bits, c_add, fmax,
                                        ovf, nan, zsign, lo_band, hi_band, band)

    return loop


_fq_chan_apart, _fq_chan_inplace = _chan_loop(False), _chan_loop(True)


@njit(**_JIT)
def _fq_chan(x, out, scale, fmt_id, p):
    if x.ctypes.data == out.ctypes.data:
        _fq_chan_inplace(x, out, scale, fmt_id, p)
    else:
        _fq_chan_apart(x, out, scale, fmt_id, p)


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
            _fq_row(x[o, c], out[o, c], scale[c], fmt_id, p, False)


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
