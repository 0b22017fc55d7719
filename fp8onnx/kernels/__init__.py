"""FP8/INT8 quantize, dequantize, fake-quant and amax on numpy arrays (one validating wrapper).

Semantics are onnxruntime's QuantizeLinear/DequantizeLinear with zero point 0, bit for
bit (tests compare against onnxruntime itself): ``q = cast(x / scale)`` rounded to
nearest even; ``saturate`` (ONNX's attribute) clamps finite overflow and +-Inf to
+-max, and without it overflow becomes NaN (or Inf for E5M2, NaN for E5M2 values in
[61440, 65536) as onnxruntime does); NaN stays NaN. INT8 rounds half to even and
clamps to [-128, 127]; NaN becomes -128 (onnxruntime's MLAS does so). E3M4 has no ONNX
type; it follows the same rules on its own grid (max 30, NaN only S.111.1111).

Input handling: ``x`` is float32; float16 and float64 arrays are converted to float32
first (a copy; float64 values are rounded to float32 before the division, as an ONNX
graph would store them); any other dtype raises ValueError. The scale is converted to
float32 and must be finite and > 0. Per tensor: a scalar scale (``axis`` is then
ignored). Per axis: a 1-D scale of length ``x.shape[axis]`` (negative axis allowed).
Arrays of 1M elements or more run on all Numba threads.

>>> import numpy as np
>>> from fp8onnx import kernels
>>> kernels.fake_quant("e4m3", np.array([0.3, 1000.0], np.float32), 1.0).tolist()
[0.3125, 448.0]
>>> kernels.quantize("e4m3", np.array([1.0, -2.0], np.float32), 1.0)
array([ 56, 192], dtype=uint8)
>>> kernels.amax(np.array([[1.0, -3.0], [np.nan, 2.0]], np.float32), axis=1)
array([1., 3.], dtype=float32)

The loops live in :mod:`fp8onnx.kernels._cast` (pure Numba, callable from other Numba
code); nothing compiles at import: each loop compiles on first use and is cached on disk.
"""
from __future__ import annotations

import numpy as np

from .. import formats as _formats

__all__ = ["quantize", "dequantize", "fake_quant", "amax", "PARALLEL_MIN_SIZE"]

#: Arrays with at least this many elements use the multi-threaded loops.
PARALLEL_MIN_SIZE = 1 << 20


def _loops():
    # Imported on first use so that ``import fp8onnx`` does not even load Numba.
    from . import _cast

    return _cast


def _parallel(n):
    import numba

    return n >= PARALLEL_MIN_SIZE and numba.get_num_threads() > 1


def _as_float32(x, what="x"):
    x = np.asarray(x)
    if x.dtype in (np.float32, np.float16, np.float64):
        # asarray(order="C") rather than ascontiguousarray, which turns 0-d into 1-d.
        return np.asarray(x, dtype=np.float32, order="C")
    raise ValueError(
        f"{what} has dtype {x.dtype}: pass a float32 array (float16 and float64 are converted)")


def _norm_axis(axis, ndim):
    if axis is None:
        return None
    ax = int(axis)
    if not -ndim <= ax < ndim:
        raise ValueError(f"axis {axis} is out of range for an array of rank {ndim}: "
                         f"use an axis in [{-ndim}, {ndim - 1}]")
    return ax % ndim


def _scale(scale, shape, axis):
    """(float32 scalar, None) per tensor or (1-D float32, axis) per axis, validated."""
    s = np.asarray(scale)
    if s.dtype.kind not in "fiu":
        raise ValueError(f"scale has dtype {s.dtype}: pass a positive float or float array")
    with np.errstate(over="ignore"):  # a float64 scale beyond float32 becomes Inf: refused
        s = s.astype(np.float32)
    bad = ~np.isfinite(s) | (s <= 0)
    if bad.any():
        v = s.reshape(-1)[np.argmax(bad.reshape(-1))]
        raise ValueError(f"scale {v!r} is not a finite positive float32: every scale must be "
                         f"> 0 and finite (compute it as amax / format.max with amax > 0)")
    if s.ndim == 0 or (s.size == 1 and axis is None):
        return np.float32(s.reshape(-1)[0]), None
    if axis is None:
        raise ValueError(f"scale has shape {s.shape} but no axis was given: pass axis= for "
                         f"per-axis scales, or a scalar scale")
    ax = _norm_axis(axis, len(shape))
    if s.ndim != 1 or s.size != shape[ax]:
        raise ValueError(f"scale has shape {s.shape} but x has {shape[ax]} entries on axis "
                         f"{axis}: pass a 1-D scale of length {shape[ax]}")
    return np.ascontiguousarray(s), ax


def _three_d(shape, ax):
    outer = int(np.prod(shape[:ax], dtype=np.int64))
    inner = int(np.prod(shape[ax + 1:], dtype=np.int64))
    return outer, shape[ax], inner


def _out(out, shape, dtype, what="out"):
    dtype = np.dtype(dtype)
    if out is None:
        return np.empty(shape, dtype=dtype)
    if not isinstance(out, np.ndarray) or out.dtype != dtype or out.shape != tuple(shape):
        got = (getattr(out, "dtype", type(out).__name__), getattr(out, "shape", None))
        raise ValueError(f"{what} must be a {dtype} array of shape {tuple(shape)}, got {got}")
    if not out.flags.c_contiguous or not out.flags.writeable:
        raise ValueError(f"{what} must be C-contiguous and writeable: pass np.empty_like(x)")
    return out


def _u8(a):
    return a.reshape(-1).view(np.uint8)


def fake_quant(fmt, x, scale, axis=None, saturate=True, out=None):
    """``dequantize(quantize(x))`` in one pass: float32 values on the format's grid.

    >>> fake_quant("int8", np.array([2.5, 3.5, 999.0], np.float32), 1.0)
    array([  2.,   4., 127.], dtype=float32)
    """
    f = _formats.get(fmt)
    x = _as_float32(x)
    s, ax = _scale(scale, x.shape, axis)
    out = _out(out, x.shape, np.float32)
    K = _loops()
    par = _parallel(x.size)
    if ax is None:
        fn = K.fake_quant_tensor_parallel if par else K.fake_quant_tensor
        fn(x.reshape(-1), s, bool(saturate), f.kernel_id, out.reshape(-1))
    else:
        d3 = _three_d(x.shape, ax)
        fn = K.fake_quant_axis_parallel if par else K.fake_quant_axis
        fn(x.reshape(d3), s, bool(saturate), f.kernel_id, out.reshape(d3))
    return out


def quantize(fmt, x, scale, axis=None, saturate=True, out=None):
    """Codes of ``x / scale``: uint8 bit patterns for FP8, an int8 array for INT8.

    >>> quantize("e5m2", np.array([np.inf, 1e6], np.float32), 1.0, saturate=False)
    array([124, 124], dtype=uint8)
    """
    f = _formats.get(fmt)
    x = _as_float32(x)
    s, ax = _scale(scale, x.shape, axis)
    out = _out(out, x.shape, f.code_dtype)
    K = _loops()
    if ax is None:
        fn = K.quantize_tensor_parallel if _parallel(x.size) else K.quantize_tensor
        fn(x.reshape(-1), s, bool(saturate), f.kernel_id, _u8(out))
    else:
        d3 = _three_d(x.shape, ax)
        K.quantize_axis(x.reshape(d3), s, bool(saturate), f.kernel_id, _u8(out).reshape(d3))
    return out


def dequantize(fmt, codes, scale, axis=None, out=None):
    """float32 ``decode(codes) * scale``; codes are uint8 for FP8, int8 (or uint8) for INT8.

    >>> dequantize("e4m3", np.array([56, 0x7F], np.uint8), 2.0)
    array([ 2., nan], dtype=float32)
    """
    f = _formats.get(fmt)
    codes = np.asarray(codes)
    ok = (np.uint8, np.int8) if not f.is_float else (np.uint8,)
    if codes.dtype not in ok:
        raise ValueError(f"codes have dtype {codes.dtype}: {f.name} codes are "
                         f"{' or '.join(np.dtype(d).name for d in ok)} (as quantize returns)")
    codes = np.asarray(codes, order="C")
    s, ax = _scale(scale, codes.shape, axis)
    out = _out(out, codes.shape, np.float32)
    K = _loops()
    if ax is None:
        fn = K.dequantize_tensor_parallel if _parallel(codes.size) else K.dequantize_tensor
        fn(_u8(codes), s, f.kernel_id, out.reshape(-1))
    else:
        d3 = _three_d(codes.shape, ax)
        K.dequantize_axis(_u8(codes).reshape(d3), s, f.kernel_id, out.reshape(d3))
    return out


def amax(x, axis=None):
    """max |x| ignoring NaN: a float32 scalar, or per ``axis`` a 1-D float32 array.

    An all-NaN (or empty) slice gives 0; +-Inf counts, so the result is Inf (which
    ``scale`` then refuses: clip or drop infinite calibration data first).

    >>> float(amax(np.array([-4.0, np.nan, 1.0], np.float32)))
    4.0
    """
    x = _as_float32(x)
    K = _loops()
    if axis is None:
        fn = K.amax_tensor_parallel if _parallel(x.size) else K.amax_tensor
        return np.float32(fn(x.reshape(-1)))
    ax = _norm_axis(axis, x.ndim)
    d3 = _three_d(x.shape, ax)
    out = np.empty(x.shape[ax], dtype=np.float32)
    K.amax_axis(x.reshape(d3), out)
    return out
