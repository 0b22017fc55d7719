"""Dynamic quantization: activation scales from each tensor's amax at run time."""
import os

import ml_dtypes
import numpy as np
import onnx
import pytest
from onnx import helper

import onnx_builders as B
from fp8onnx import formats
from fp8onnx.api import compile_model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def linear_model(w):
    return B.model([helper.make_node("MatMul", ["x", "w"], ["y"], name="fc")],
                   [B.vi("x", ["N", w.shape[0]])], [B.vi("y", ["N", w.shape[1]])], [B.init("w", w)])


def fq_ref(x, scale, fmt, axis=None):
    if fmt == "e4m3":
        s = scale if axis is None else np.expand_dims(scale, [i for i in range(x.ndim) if i != axis])
        return ((x / s).astype(ml_dtypes.float8_e4m3fn).astype(np.float32) * s).astype(np.float32)
    return formats.get(fmt).fake_quant(x, scale, axis=axis)


@pytest.mark.parametrize("fmt", ["e4m3", "e3m4"])
def test_dynamic_linear_matches_reference_for_each_batch(fmt):
    r = B.rng(3)
    w = r.normal(size=(16, 8)).astype(np.float32)
    q = compile_model(linear_model(w), format=fmt, dynamic=True).model  # no calibration data needed
    onnx.checker.check_model(q, full_check=True)
    f = formats.get(fmt)
    w_scale = (np.abs(w).max(0) / np.float32(f.max)).astype(np.float32)
    wq = fq_ref(w, w_scale, fmt, axis=1)
    run = B.ort_run if fmt == "e4m3" else B.fp8_run
    for amp in (0.01, 1.0, 300.0):  # scales follow the data: no calibrated range to miss
        x = (r.normal(size=(4, 16)) * amp).astype(np.float32)
        x_scale = np.float32(np.abs(x).max() / np.float32(f.max))
        ref = fq_ref(x, x_scale, fmt) @ wq
        np.testing.assert_allclose(run(q, {"x": x}), ref, rtol=1e-5, atol=1e-6 * amp)


def test_dynamic_all_zero_input_gives_zero_not_nan():
    w = B.rng().normal(size=(4, 3)).astype(np.float32)
    q = compile_model(linear_model(w), format="e4m3", dynamic=True).model
    y = B.ort_run(q, {"x": np.zeros((2, 4), np.float32)})
    assert np.array_equal(y, np.zeros((2, 3), np.float32))


def test_dynamic_cnn_accuracy_and_cli(tmp_path):
    import subprocess, sys
    test = np.load(os.path.join(ROOT, "models", "data", "digits_test.npz"))
    out = tmp_path / "dyn.onnx"
    p = subprocess.run([sys.executable, "-m", "fp8onnx.compile", os.path.join(ROOT, "models", "digits_cnn.onnx"),
                        "-o", str(out), "--dynamic"], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    y = B.ort_run(onnx.load(str(out)), {"input": test["input"]})
    assert (y.argmax(1) == test["label"]).mean() >= 0.98
