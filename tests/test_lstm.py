"""LSTM in the standard scheme: W and R quantized per gate row, the sequence input per
tensor; checked against onnxruntime's float LSTM run on ml_dtypes-rounded weights."""
import ml_dtypes
import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

import onnx_builders as B
import fp8onnx
from fp8onnx.evaluation import session_for

T, N, I, H = 7, 3, 5, 4


def _lstm_model(seed=0):
    r = B.rng(seed)
    w = r.normal(size=(1, 4 * H, I)).astype(np.float32) * r.uniform(0.1, 3, (1, 4 * H, 1)).astype(np.float32)
    rr = r.normal(size=(1, 4 * H, H)).astype(np.float32) * 0.5
    b = r.normal(size=(1, 8 * H)).astype(np.float32) * 0.1
    m = B.model([helper.make_node("LSTM", ["x", "W", "R", "B"], ["y", "y_h"], name="lstm", hidden_size=H)],
                [B.vi("x", [T, N, I])], [B.vi("y", [T, 1, N, H]), B.vi("y_h", [1, N, H])],
                [B.init("W", w), B.init("R", rr), B.init("B", b)])
    return m, w, rr


def _fq_rows(a, fmt_max=448.0):
    """E4M3 fake quant with one max-scaled scale per row of axis 1 (ml_dtypes rounding)."""
    s = np.abs(a).max(axis=2, keepdims=True) / np.float32(fmt_max)
    return ((a / s).astype(ml_dtypes.float8_e4m3fn).astype(np.float32) * s).astype(np.float32)


@pytest.mark.parametrize("emit", ["qdq", "emulate"])
def test_lstm_weights_per_gate_row_and_input_match_a_reference(emit):
    m, w, rr = _lstm_model()
    r = B.rng(1)
    feeds = [{"x": r.normal(size=(T, N, I)).astype(np.float32)} for _ in range(4)]
    res = fp8onnx.compile_model(m, calibration=feeds, format="e4m3", emit=emit)
    (u,) = [u for u in res.plan.units if u.unit == "lstm"]
    assert u.status == "quantized" and sorted(x.tensor for x in u.weight_uses) == ["R", "W"]
    onnx.checker.check_model(res.model, full_check=True)
    # reference: float LSTM with ml_dtypes-rounded W, R and x (x: one max scale per tensor)
    amax = max(float(np.abs(f["x"]).max()) for f in feeds)
    sx = np.float32(amax / 448.0)
    ref = onnx.ModelProto()
    ref.CopyFrom(m)
    for init in ref.graph.initializer:
        if init.name in ("W", "R"):
            init.CopyFrom(numpy_helper.from_array(_fq_rows(w if init.name == "W" else rr), init.name))
    x = feeds[0]["x"]
    xq = ((x / sx).astype(ml_dtypes.float8_e4m3fn).astype(np.float32) * sx).astype(np.float32)
    want = session_for(ref).run(None, {"x": xq})
    got = session_for(res.model).run(None, {"x": x})
    for g, wv in zip(got, want):
        np.testing.assert_allclose(g, wv, rtol=1e-5, atol=1e-6)
    # and it is an approximation of the float model, not something else
    f32 = session_for(m).run(None, {"x": x})[0]
    assert np.abs(got[0] - f32).max() < 0.1 < np.abs(f32).max() * 10
