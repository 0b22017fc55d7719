"""The kernels' wrapper: public API, input conversion, bad input, out=, amax vs numpy,
and that importing fp8onnx compiles nothing."""
import subprocess
import sys
import warnings

import numpy as np
import pytest

import fp8onnx.kernels as K
from fp8onnx import formats


def test_public_api():
    assert sorted(K.__all__) == sorted(["quantize", "dequantize", "fake_quant", "amax",
                                        "PARALLEL_MIN_SIZE"])
    from fp8onnx.kernels import _cast

    for name in ["fake_quant_tensor", "fake_quant_axis", "quantize_tensor", "quantize_axis",
                 "dequantize_tensor", "dequantize_axis"]:
        assert name in _cast.__all__ and callable(getattr(_cast, name))


def test_import_fp8onnx_compiles_nothing():
    """Importing the package (and the loops module) leaves every loop uncompiled."""
    code = ("import fp8onnx, fp8onnx.formats, fp8onnx.kernels\n"
            "from fp8onnx.kernels import _cast, _elem\n"
            "from numba.core.registry import CPUDispatcher\n"
            "ds = [v for m in (_cast, _elem) for v in vars(m).values() if isinstance(v, CPUDispatcher)]\n"
            "print(len(ds), sum(len(d.signatures) for d in ds))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    n_loops, n_compiled = map(int, out.stdout.split())
    assert n_loops > 10 and n_compiled == 0


@pytest.mark.parametrize("dtype", [np.float16, np.float64])
def test_float16_and_float64_are_converted_to_float32_first(dtype):
    x = np.array([0.1, 3.3, -700.0, 1e-3], dtype=dtype)
    want = K.fake_quant("e4m3", x.astype(np.float32), 0.5)
    got = K.fake_quant("e4m3", x, 0.5)
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("dtype", [np.int32, np.uint8, np.bool_, np.complex64, object])
def test_non_float_x_is_refused(dtype):
    with pytest.raises(ValueError, match="x has dtype .*pass a float32 array"):
        K.fake_quant("e4m3", np.zeros(3, dtype=dtype), 1.0)
    with pytest.raises(ValueError, match="x has dtype"):
        K.amax(np.zeros(3, dtype=dtype))


@pytest.mark.parametrize("bad", [0.0, -1.0, np.nan, np.inf, 1e39, 1e-50])
def test_bad_scale_is_refused_naming_the_value(bad):
    x = np.ones(4, np.float32)
    with pytest.raises(ValueError, match=r"scale .* is not a finite positive float32"):
        K.fake_quant("e5m2", x, bad)
    with pytest.raises(ValueError, match="not a finite positive"):
        K.quantize("int8", x.reshape(2, 2), np.array([1.0, bad]), axis=0)
    with pytest.raises(ValueError, match="not a finite positive"):
        K.dequantize("e4m3", np.zeros(4, np.uint8), bad)


def test_scale_shape_must_match_the_axis():
    x = np.ones((2, 3), np.float32)
    with pytest.raises(ValueError, match=r"scale has shape \(2,\) but x has 3 entries on axis 1"):
        K.fake_quant("e4m3", x, np.ones(2, np.float32), axis=1)
    with pytest.raises(ValueError, match="no axis was given"):
        K.fake_quant("e4m3", x, np.ones(3, np.float32))
    with pytest.raises(ValueError, match="axis 2 is out of range"):
        K.quantize("e4m3", x, np.ones(3, np.float32), axis=2)
    with pytest.raises(ValueError, match=r"scale has shape \(3, 1\)"):
        K.quantize("e4m3", x, np.ones((3, 1), np.float32), axis=1)
    with pytest.raises(ValueError, match="unknown format"):
        K.quantize("fp4", x, 1.0)


def test_codes_dtype_checked_and_out_validated():
    with pytest.raises(ValueError, match="codes have dtype float32: e4m3 codes are uint8"):
        K.dequantize("e4m3", np.zeros(3, np.float32), 1.0)
    x = np.ones(6, np.float32)
    with pytest.raises(ValueError, match="out must be a float32 array of shape"):
        K.fake_quant("e4m3", x, 1.0, out=np.empty(5, np.float32))
    with pytest.raises(ValueError, match="out must be a int8 array"):
        K.quantize("int8", x, 1.0, out=np.empty(6, np.uint8))
    with pytest.raises(ValueError, match="C-contiguous"):
        K.fake_quant("e4m3", x[:3], 1.0, out=np.empty(6, np.float32)[::2])


def test_out_is_filled_in_place_and_returned():
    x = np.linspace(-2, 2, 24, dtype=np.float32).reshape(2, 3, 4)
    want = K.fake_quant("e3m4", x, np.float32([0.1, 0.2, 0.3]), axis=1)
    y = x.copy()
    assert K.fake_quant("e3m4", y, np.float32([0.1, 0.2, 0.3]), axis=1, out=y) is y
    np.testing.assert_array_equal(y, want)
    codes = np.empty(x.shape, np.int8)
    assert K.quantize("int8", x, 0.02, out=codes) is codes
    np.testing.assert_array_equal(K.dequantize("int8", codes, 0.02), K.fake_quant("int8", x, 0.02))
    # int8 codes may also be given as their uint8 view.
    np.testing.assert_array_equal(K.dequantize("int8", codes.view(np.uint8), 0.02),
                                  K.fake_quant("int8", x, 0.02))


def test_scalar_scale_with_axis_is_per_tensor_and_0d_input_works():
    x = np.linspace(-2, 2, 12, dtype=np.float32).reshape(3, 4)
    np.testing.assert_array_equal(K.fake_quant("e4m3", x, 0.01, axis=1), K.fake_quant("e4m3", x, 0.01))
    assert K.fake_quant("e4m3", np.float32(1.1), 1.0).shape == ()
    assert K.fake_quant("e4m3", np.float32(1.1), 1.0) == 1.125


@pytest.mark.parametrize("shape,axis", [((1000,), None), ((3, 5, 7), None), ((3, 5, 7), 1),
                                        ((3, 5, 7), -1), ((40, 3), 0), ((2, 1, 3, 2), 2),
                                        ((K.PARALLEL_MIN_SIZE + 5,), None)])
def test_amax_matches_numpy(shape, axis):
    rng = np.random.default_rng(1)
    x = rng.standard_cauchy(shape).astype(np.float32)
    flat = x.reshape(-1)
    flat[:: 7] = np.nan  # NaN is ignored
    if axis is None:
        got = K.amax(x)
        assert isinstance(got, np.float32) and got == np.nanmax(np.abs(x))
    else:
        other = tuple(i for i in range(x.ndim) if i != axis % x.ndim)
        got = K.amax(x, axis=axis)
        assert got.dtype == np.float32 and got.shape == (x.shape[axis],)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # numpy's "All-NaN slice"
            ref = np.nanmax(np.abs(x), axis=other)
        np.testing.assert_array_equal(got, np.where(np.isnan(ref), 0, ref))  # all-NaN -> 0


def test_amax_edge_cases():
    assert K.amax(np.float32([np.nan, np.nan])) == 0.0          # all NaN -> 0
    assert K.amax(np.zeros(0, np.float32)) == 0.0               # empty -> 0
    assert K.amax(np.float32([1.0, -np.inf])) == np.inf          # Inf counts
    np.testing.assert_array_equal(K.amax(np.float32([[np.nan, -2.0]]), axis=1), [0.0, 2.0])
    assert K.amax(np.float16([-3.0, 1.0])) == 3.0


@pytest.mark.parametrize("name", list(formats.FORMATS))
def test_unknown_fmt_id_leaves_out_untouched(name):
    """The raw loops never raise, even for a bad id: they do nothing."""
    from fp8onnx.kernels import _cast

    x = np.ones(8, np.float32)
    out = np.full(8, 7.0, np.float32)
    _cast.fake_quant_tensor(x, np.float32(1), True, 99, out)
    _cast.fake_quant_tensor(x, np.float32(1), True, -1, out)
    assert (out == 7.0).all()
    _cast.fake_quant_tensor(x, np.float32(1), True, formats.get(name).kernel_id, out)
    assert (out == 1.0).all()
