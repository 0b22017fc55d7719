"""The number formats fp8onnx quantizes to: one immutable table, one row per format.

Each :class:`Format` carries the facts a quantizer needs (bits, bias, range, special
values, the ONNX element type where ONNX has one) and offers the array operations
``quantize``, ``dequantize``, ``fake_quant`` and ``amax``, which run the Numba kernels
of :mod:`fp8onnx.kernels` with ONNX QuantizeLinear/DequantizeLinear semantics
(zero point 0, round to nearest even, division by the scale).

>>> from fp8onnx import formats
>>> formats.get("e4m3").max
448.0
>>> formats.get("e3m4").onnx_type is None     # ONNX has no E3M4 type: emitted as custom ops
True
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np
from onnx import TensorProto

__all__ = ["Format", "get", "names", "FORMATS", "FP8_NAMES"]


@dataclass(frozen=True)
class Format:
    """One number format. ``kind`` is "float" for the FP8 formats and "int" for INT8."""

    name: str
    kind: str
    exp_bits: int
    man_bits: int
    bias: int
    max: float
    min_normal: float
    min_subnormal: float
    has_inf: bool
    # Every code that decodes to NaN (a tuple of uint8 values; int8 has none).
    nan_codes: tuple = ()
    # Whether 0x80 is -0 (OCP and IEEE-like formats) or something else (FNUZ: NaN).
    has_negative_zero: bool = True
    onnx_type: Optional[int] = None
    # Index of this format in the kernels' dispatch tables: stable, never reused.
    kernel_id: int = 0
    description: str = field(default="", compare=False)

    @property
    def bits(self) -> int:
        return 8

    @property
    def code_dtype(self) -> np.dtype:
        """dtype of quantized codes: uint8 bit patterns for FP8, int8 for INT8."""
        return np.dtype(np.int8) if self.kind == "int" else np.dtype(np.uint8)

    @property
    def is_float(self) -> bool:
        return self.kind == "float"

    def zero_below(self, scale: float) -> float:
        """The |x| under which quantizing with ``scale`` gives zero: half the smallest step
        (a value exactly there ties to the even code, zero)."""
        return self.min_subnormal / 2 * scale

    # The array operations live in the kernels package; imported lazily so that
    # ``import fp8onnx`` compiles nothing.
    def quantize(self, x, scale, axis=None, saturate=True, out=None):
        """Codes of ``x / scale`` rounded to nearest even (uint8 bit patterns; int8 for INT8)."""
        from . import kernels

        return kernels.quantize(self, x, scale, axis=axis, saturate=saturate, out=out)

    def dequantize(self, codes, scale, axis=None, out=None):
        """float32 values of ``codes`` times ``scale``."""
        from . import kernels

        return kernels.dequantize(self, codes, scale, axis=axis, out=out)

    def fake_quant(self, x, scale, axis=None, saturate=True, out=None):
        """``dequantize(quantize(x))`` fused into one pass over memory."""
        from . import kernels

        return kernels.fake_quant(self, x, scale, axis=axis, saturate=saturate, out=out)

    def scale_for(self, amax):
        """The scale that maps ``amax`` onto this format's largest finite value."""
        amax = np.asarray(amax, dtype=np.float32)
        return (amax / np.float32(self.max)).astype(np.float32)

    def __repr__(self) -> str:  # short, so recipes and logs stay readable
        return f"Format({self.name})"


def _fp(name, e, m, bias, *, ocp_fn, fnuz=False, onnx_type=None, kernel_id, description):
    """Facts of an 8-bit float format derived from its layout.

    ``ocp_fn``: the "finite" convention of OCP E4M3FN and the paper's E3M4, where only
    S.1111...1 is NaN and the rest of the top binade holds normal numbers.
    ``fnuz``: no negative zero, 0x80 is the only NaN, no Inf (ONNX's *FNUZ types).
    Otherwise IEEE-like: the top exponent is reserved for Inf and NaN.
    """
    max_exp_field = (1 << e) - 1
    man_full = (1 << m) - 1
    if fnuz:
        top_e, top_m = max_exp_field, man_full
        nan_codes = (0x80,)
        has_inf = False
    elif ocp_fn:
        top_e, top_m = max_exp_field, man_full - 1
        nan_codes = (0x7F, 0xFF) if e + m == 7 else ()
        has_inf = False
    else:
        top_e, top_m = max_exp_field - 1, man_full
        nan_codes = tuple(
            s | (max_exp_field << m) | mm for s in (0x00, 0x80) for mm in range(1, man_full + 1)
        )
        has_inf = True
    fmax = (1.0 + top_m / (1 << m)) * 2.0 ** (top_e - bias)
    return Format(
        name=name,
        kind="float",
        exp_bits=e,
        man_bits=m,
        bias=bias,
        max=float(fmax),
        min_normal=float(2.0 ** (1 - bias)),
        min_subnormal=float(2.0 ** (1 - bias - m)),
        has_inf=has_inf,
        nan_codes=tuple(sorted(nan_codes)),
        has_negative_zero=not fnuz,
        onnx_type=onnx_type,
        kernel_id=kernel_id,
        description=description,
    )


FORMATS = {
    f.name: f
    for f in (
        _fp("e4m3", 4, 3, 7, ocp_fn=True, onnx_type=TensorProto.FLOAT8E4M3FN, kernel_id=0,
            description="OCP E4M3FN: bias 7, max 448, no Inf, NaN only S.1111.111"),
        _fp("e5m2", 5, 2, 15, ocp_fn=False, onnx_type=TensorProto.FLOAT8E5M2, kernel_id=1,
            description="OCP E5M2, IEEE-like: bias 15, max 57344, with Inf and NaN"),
        _fp("e3m4", 3, 4, 3, ocp_fn=True, onnx_type=None, kernel_id=2,
            description="the paper's E3M4: bias 3, max 30, no Inf, NaN only S.111.1111 "
                        "(not ml_dtypes' IEEE-style float8_e3m4, max 15.5)"),
        _fp("e4m3fnuz", 4, 3, 8, ocp_fn=False, fnuz=True, onnx_type=TensorProto.FLOAT8E4M3FNUZ,
            kernel_id=3, description="E4M3FNUZ: bias 8, max 240, no -0, NaN only 0x80"),
        _fp("e5m2fnuz", 5, 2, 16, ocp_fn=False, fnuz=True, onnx_type=TensorProto.FLOAT8E5M2FNUZ,
            kernel_id=4, description="E5M2FNUZ: bias 16, max 57344, no -0, NaN only 0x80"),
        Format(name="int8", kind="int", exp_bits=0, man_bits=7, bias=0, max=127.0,
               min_normal=1.0, min_subnormal=1.0, has_inf=False, nan_codes=(),
               has_negative_zero=False, onnx_type=TensorProto.INT8, kernel_id=5,
               description="symmetric INT8 (zero point 0), the paper's baseline"),
    )
}

#: The FP8 formats, in the order reports list them.
FP8_NAMES = ("e5m2", "e4m3", "e3m4", "e4m3fnuz", "e5m2fnuz")


def names() -> tuple:
    """All format names, in table order."""
    return tuple(FORMATS)


def get(name) -> Format:
    """The format called ``name`` (a Format passes through). Unknown names raise ValueError."""
    if isinstance(name, Format):
        return name
    try:
        return FORMATS[str(name).lower()]
    except KeyError as e:
        raise ValueError(
            f"unknown format {name!r}: choose one of {', '.join(FORMATS)}"
        ) from e
