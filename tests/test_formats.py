"""The format table against independent references: ml_dtypes' finfo and casts where
ml_dtypes has the type, onnxruntime's DequantizeLinear for the ONNX types, and a
from-the-definition decoder of the paper's E3M4 (bias 3, max 30, NaN only S.111.1111)."""
import math

import ml_dtypes
import numpy as np
import pytest

from fp8onnx import formats
from fp8onnx.kernels import _cast
from fp8onnx.kernels.reference import OrtQDQ

# format name -> ml_dtypes type with the same encoding (ml_dtypes' float8_e3m4 is a
# different, IEEE-style format and is not listed: see test_e3m4_is_not_ml_dtypes_e3m4).
ML = {
    "e4m3": ml_dtypes.float8_e4m3fn,
    "e5m2": ml_dtypes.float8_e5m2,
    "e4m3fnuz": ml_dtypes.float8_e4m3fnuz,
    "e5m2fnuz": ml_dtypes.float8_e5m2fnuz,
}
ONNX_NAMES = ["e4m3", "e5m2", "e4m3fnuz", "e5m2fnuz", "int8"]


def decode_e3m4_from_definition(code):
    """The paper's E3M4, straight from its definition (Shen et al. 2024, Table 1)."""
    s = -1.0 if code & 0x80 else 1.0
    e = (code >> 4) & 0x7
    m = code & 0xF
    if e == 7 and m == 15:
        return math.nan
    if e == 0:
        return s * m / 16 * 2.0 ** (1 - 3)
    return s * (1 + m / 16) * 2.0 ** (e - 3)


@pytest.mark.parametrize("name", sorted(ML))
def test_table_matches_ml_dtypes_finfo(name):
    f, fi = formats.get(name), ml_dtypes.finfo(ML[name])
    assert f.max == float(fi.max)
    assert f.min_normal == float(fi.smallest_normal)
    assert f.min_subnormal == float(fi.smallest_subnormal)
    assert f.exp_bits == fi.nexp and f.man_bits == fi.nmant
    codes = np.arange(256, dtype=np.uint8)
    vals = codes.view(ML[name]).astype(np.float32)
    assert f.has_inf == bool(np.isinf(vals).any())
    assert f.nan_codes == tuple(int(c) for c in codes[np.isnan(vals)])
    assert f.has_negative_zero == (np.signbit(vals[0x80]) and vals[0x80] == 0)


@pytest.mark.parametrize("name", sorted(ML))
def test_decode_of_every_code_matches_ml_dtypes(name):
    f = formats.get(name)
    ours = _cast.decode_table(f.kernel_id)
    ref = np.arange(256, dtype=np.uint8).view(ML[name]).astype(np.float32)
    nan = np.isnan(ref)
    np.testing.assert_array_equal(np.isnan(ours), nan)
    # Bit for bit (so -0 is checked) wherever the value is not NaN.
    np.testing.assert_array_equal(ours.view(np.uint32)[~nan], ref.view(np.uint32)[~nan])


@pytest.mark.parametrize("name", ONNX_NAMES)
def test_decode_of_every_code_matches_onnxruntime_bits(name):
    """Including the NaN payloads and signs onnxruntime produces, which fake-quant copies."""
    f = formats.get(name)
    codes = np.arange(256, dtype=np.uint8)
    if not f.is_float:
        codes = codes.view(np.int8)
    ref = OrtQDQ(name, "dq").run(codes, np.float32(1.0))
    ours = _cast.decode_table(f.kernel_id)
    np.testing.assert_array_equal(ours.view(np.uint32), ref.view(np.uint32))


def test_e3m4_table_and_decode_from_definition():
    f = formats.get("e3m4")
    vals = np.array([decode_e3m4_from_definition(c) for c in range(256)], dtype=np.float32)
    ours = _cast.decode_table(f.kernel_id)
    np.testing.assert_array_equal(np.isnan(ours), np.isnan(vals))
    ok = ~np.isnan(vals)
    np.testing.assert_array_equal(ours.view(np.uint32)[ok], vals.view(np.uint32)[ok])
    assert f.max == np.nanmax(vals) == 30.0
    assert f.min_normal == 0.25 and f.min_subnormal == 2.0 ** -6
    assert f.nan_codes == (0x7F, 0xFF) and not f.has_inf and f.has_negative_zero
    assert f.onnx_type is None


def test_e3m4_is_not_ml_dtypes_e3m4():
    """Same grid on [-15.5, 15.5], different top binade: ml_dtypes' max is 15.5 (IEEE)."""
    fi = ml_dtypes.finfo(ml_dtypes.float8_e3m4)
    assert float(fi.max) == 15.5 and formats.get("e3m4").max == 30.0
    assert float(fi.smallest_subnormal) == formats.get("e3m4").min_subnormal


def test_int8_table():
    f = formats.get("int8")
    assert (f.max, f.kind, f.code_dtype, f.nan_codes) == (127.0, "int", np.dtype(np.int8), ())
    np.testing.assert_array_equal(_cast.decode_table(f.kernel_id),
                                  np.arange(256, dtype=np.uint8).view(np.int8).astype(np.float32))


def test_table_api():
    assert formats.names() == tuple(formats.FORMATS)
    assert set(formats.FP8_NAMES) <= set(formats.names()) and "int8" not in formats.FP8_NAMES
    assert formats.get("E4M3") is formats.FORMATS["e4m3"]
    assert formats.get(formats.FORMATS["e5m2"]) is formats.FORMATS["e5m2"]
    ids = [f.kernel_id for f in formats.FORMATS.values()]
    assert sorted(ids) == list(range(len(ids))) == list(range(_cast.N_FORMATS))
    assert formats.get("int8").kernel_id == _cast.INT8_ID
    with pytest.raises(ValueError, match="unknown format 'e2m5'.*choose one of"):
        formats.get("e2m5")


@pytest.mark.parametrize("name", list(formats.FORMATS))
def test_format_methods_call_the_kernels(name):
    f = formats.get(name)
    x = np.linspace(-3, 3, 101, dtype=np.float32)
    s = f.scale_for(np.float32(3.0))
    assert s.dtype == np.float32 and s == np.float32(3.0) / np.float32(f.max)
    q = f.quantize(x, s)
    assert q.dtype == f.code_dtype
    np.testing.assert_array_equal(f.dequantize(q, s), f.fake_quant(x, s))
    assert np.max(np.abs(f.fake_quant(x, s))) == np.float32(f.max) * s
