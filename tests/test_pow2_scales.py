"""Power-of-two scales (``--pow2-scales``), as FP8 hardware that takes the scale as an
exponent bias needs them: every scale the compiler writes is a power of two, none is
below the exact one (so nothing clips that max scaling keeps), and the emulation
kernel's multiply-by-reciprocal path for such scales gives the division's bits.

References: numpy's float64 arithmetic for pow2_ceil, the division path (quantize then
dequantize) for the kernel, ml_dtypes for the stored codes, the FP32 model for accuracy.
"""
import json
import os
import subprocess
import sys

import ml_dtypes
import numpy as np
import onnx
import pytest
from onnx import numpy_helper

import onnx_builders as B
from fp8onnx import formats, qdq
from fp8onnx.api import compile_model
from fp8onnx.kernels import _cast
from fp8onnx.runtime import InferenceSession

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CNN = os.path.join(ROOT, "models", "digits_cnn.onnx")
CNN_FOLD = os.path.join(ROOT, "models", "digits_cnn_bnfold.onnx")
CALIB = os.path.join(ROOT, "models", "data", "digits_calib.npz")
TEST = np.load(os.path.join(ROOT, "models", "data", "digits_test.npz"))


def is_pow2(a):
    m, _ = np.frexp(np.asarray(a, np.float64))
    return bool(np.all(m == 0.5))


def test_pow2_ceil_against_float64():
    rng = np.random.default_rng(3)
    s = np.concatenate([rng.lognormal(0, 20, 20000), 2.0 ** np.arange(-126, 128),
                        np.nextafter(2.0 ** np.arange(-60, 60), np.inf),
                        np.nextafter(2.0 ** np.arange(-60, 60), 0)]).astype(np.float32)
    s = s[(s >= 2.0 ** -126) & (s <= 2.0 ** 127)]
    got = qdq.pow2_ceil(s)
    want = 2.0 ** np.ceil(np.log2(s.astype(np.float64)))  # float64 log2 is exact at powers of two
    np.testing.assert_array_equal(got.astype(np.float64), want)
    assert got.dtype == np.float32 and is_pow2(got)
    assert np.all(got >= s) and np.all(got < 2 * s.astype(np.float64))


@pytest.mark.parametrize("name", list(formats.FORMATS))
@pytest.mark.parametrize("saturate", [True, False])
def test_kernel_multiply_path_gives_the_division_bits(name, saturate):
    """fake_quant with a power-of-two scale multiplies by the exact reciprocal; quantize
    still divides. Both must agree on every sampled bit pattern (subnormals, Inf, NaN,
    overflow, and values a few ulps from every rounding midpoint, where x * (1/s) and x / s
    part for other scales), in place and not, from the smallest to the largest scale;
    scales off a power of two take the division path and agree as well."""
    f = formats.get(name)
    rng = np.random.default_rng(9)
    base = np.concatenate([rng.integers(0, 2 ** 32, 200000, dtype=np.uint64).astype(np.uint32).view(np.float32),
                           rng.normal(0, 30, 50000).astype(np.float32)])
    table = _cast.decode_table(f.kernel_id).astype(np.float64)
    grid = np.unique(np.abs(table[np.isfinite(table)]))
    mids = (grid[1:] + grid[:-1]) / 2  # where rounding turns: multiplying by 1/s misses some
    for k in (-126, -100, -20, -7, 0, 9, 40, 100, 127):
        pow2 = np.float32(2.0 ** k)
        for s in (pow2, np.nextafter(pow2, np.float32(np.inf)), np.float32(pow2 * 0.7), np.float32(pow2 * 0.3)):
            if not np.isfinite(s) or s < 2.0 ** -126:
                continue
            with np.errstate(over="ignore"):  # midpoints past float32's range: dropped below
                near = (mids * np.float64(s)).astype(np.float32)
            near = near[np.isfinite(near)]
            x = np.concatenate([base] + [near.view(np.int32).__add__(d).view(np.float32) for d in range(-3, 4)])
            x = np.concatenate([x, -x])
            codes = np.empty(x.size, np.uint8)
            _cast.quantize_tensor(x, s, saturate, f.kernel_id, codes)
            want = np.empty_like(x)
            _cast.dequantize_tensor(codes, s, f.kernel_id, want)
            got = np.empty_like(x)
            _cast.fake_quant_tensor(x, s, saturate, f.kernel_id, got)
            np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32), err_msg=f"scale 2**{k}")
            inplace = x.copy()
            _cast.fake_quant_tensor(inplace, s, saturate, f.kernel_id, inplace)
            np.testing.assert_array_equal(inplace.view(np.uint32), want.view(np.uint32))


def _scales(model):
    """{initializer name: array} of every scale the compiler wrote."""
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer if t.name.endswith("_scale")}


@pytest.mark.parametrize("options", [
    {"format": "e4m3"},
    {"format": "e3m4", "emit": "emulate"},
    {"format": "e4m3", "weight_calib_method": "mse"},
    {"format": "e3m4", "bn_calib": True},
], ids=["e4m3-qdq", "e3m4-emulate", "e4m3-mse", "e3m4-bn"])
def test_every_scale_is_a_power_of_two_and_accuracy_holds(options):
    exact = compile_model(CNN, calibration=CALIB, **options).model
    res = compile_model(CNN, calibration=CALIB, pow2_scales=True, **options)
    q = res.model
    onnx.checker.check_model(q, full_check=True)
    scales = _scales(q)
    assert len(scales) >= 4 and all(is_pow2(v) for v in scales.values()), scales
    # No scale below the exact one (nothing clips that max scaling keeps), none 2x above it.
    # (MSE weight thresholds and BN-corrected weights are chosen anew under pow2 scales, so
    # only their activation scales compare, and with BN not even those.)
    ref = _scales(exact)
    assert ref.keys() == scales.keys()
    for name, v in scales.items():
        if options.get("bn_calib") or (options.get("weight_calib_method") == "mse" and v.ndim):
            continue
        assert np.all(v >= ref[name]) and np.all(v < 2 * ref[name].astype(np.float64)), name
    assert json.loads({p.key: p.value for p in q.metadata_props}["fp8onnx.recipe"])["pow2_scales"] is True
    # Accuracy against the FP32 model on the held-out digits: the same as the exact scales'.
    fp32 = B.ort_run(onnx.load(CNN), {"input": TEST["input"]}).argmax(1)

    def agree(m):
        return float((InferenceSession(m).run(None, {"input": TEST["input"]})[0].argmax(1) == fp32).mean())

    assert agree(q) >= 0.97 and agree(q) >= agree(exact) - 0.02


def test_weight_codes_with_pow2_scales_equal_ml_dtypes():
    q = compile_model(CNN_FOLD, calibration=CALIB, format="e4m3", pow2_scales=True).model
    w = {t.name: numpy_helper.to_array(t) for t in onnx.load(CNN_FOLD).graph.initializer}["conv2.weight"]
    init = {t.name: t for t in q.graph.initializer}
    scale = numpy_helper.to_array(init["conv2.weight_scale"])
    exact = (np.abs(w).reshape(w.shape[0], -1).max(1) / np.float32(448)).astype(np.float32)
    np.testing.assert_array_equal(scale, 2.0 ** np.ceil(np.log2(exact.astype(np.float64))))
    codes = np.frombuffer(init["conv2.weight_e4m3"].raw_data, np.uint8).reshape(w.shape)
    ref = (w / scale[:, None, None, None]).astype(ml_dtypes.float8_e4m3fn).view(np.uint8)
    np.testing.assert_array_equal(codes, ref)


@pytest.mark.parametrize("fmt", ["e4m3", "e3m4"])
def test_dynamic_scales_are_powers_of_two_at_run_time(fmt):
    """The run-time scale 2**ceil(log2(amax / max)) from standard ONNX ops: a power of two,
    at least amax / max but for Log's rounding (1e-6), less than twice it."""
    q = compile_model(CNN, format=fmt, dynamic=True, pow2_scales=True).model
    onnx.checker.check_model(q, full_check=True)
    made = {o: n for n in q.graph.node for o in n.output}
    pairs = []  # (power-of-two scale, the exact scale it rounds): Pow <- Ceil <- Sub <- Mul <- Log
    for n in q.graph.node:
        if n.op_type == "Pow":
            log = made[made[made[made[n.input[1]].input[0]].input[0]].input[0]]
            assert log.op_type == "Log"
            pairs.append((n.output[0], log.input[0]))
    quantizers = [n for n in q.graph.node if n.op_type in ("QuantizeLinear", "FakeQuant")
                  and n.input[1] not in {t.name for t in q.graph.initializer}]
    assert pairs and {n.input[1] for n in quantizers} == {p for p, _ in pairs}
    probe = onnx.ModelProto()
    probe.CopyFrom(q)
    for name in [x for pair in pairs for x in pair]:
        probe.graph.output.append(onnx.ValueInfoProto(name=name))
    sess = InferenceSession(probe)
    names = [o.name for o in sess.get_outputs()]
    for batch in (TEST["input"][:1], TEST["input"][1:50], TEST["input"][:1] * 1e-3):
        got = dict(zip(names, sess.run(None, {"input": batch})))
        for p2, raw in pairs:
            s, r = float(got[p2]), float(got[raw])
            assert is_pow2(s) and r * (1 - 1e-6) <= s < 2 * r, (p2, s, r)


def test_cli_flag_writes_pow2_scales(tmp_path):
    out = tmp_path / "q.onnx"
    r = subprocess.run([sys.executable, "-m", "fp8onnx.compile", CNN, "-o", str(out), "--calib", CALIB,
                        "--format", "e3m4", "--pow2-scales"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    scales = _scales(onnx.load(str(out)))
    assert scales and all(is_pow2(v) for v in scales.values())
