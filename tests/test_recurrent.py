"""Recurrent ops in the standard scheme (LSTM, GRU, RNN): W and R quantized per gate row,
the sequence input per tensor; checked against onnxruntime's float op run on
ml_dtypes-rounded weights and input."""
import ml_dtypes
import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

import onnx_builders as B
import fp8onnx
from fp8onnx.evaluation import session_for

T, N, I, H = 7, 3, 5, 4
GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}


def _recurrent_model(op, seed=0, directions=1):
    g = GATES[op]
    r = B.rng(seed)
    w = (r.normal(size=(directions, g * H, I)) * r.uniform(0.1, 3, (directions, g * H, 1))).astype(np.float32)
    rr = (r.normal(size=(directions, g * H, H)) * 0.5).astype(np.float32)
    b = (r.normal(size=(directions, 2 * g * H)) * 0.1).astype(np.float32)
    attrs = {"direction": "bidirectional"} if directions == 2 else {}
    m = B.model([helper.make_node(op, ["x", "W", "R", "B"], ["y", "y_h"], name="rec", hidden_size=H, **attrs)],
                [B.vi("x", [T, N, I])], [B.vi("y", [T, directions, N, H]), B.vi("y_h", [directions, N, H])],
                [B.init("W", w), B.init("R", rr), B.init("B", b)])
    return m, w, rr


def _fq_rows(a, fmt_max=448.0):
    """E4M3 fake quant with one max-scaled scale per row of axis 1 (ml_dtypes rounding),
    shared by the directions of a bidirectional op: ONNX per-axis scales have one axis."""
    s = np.abs(a).max(axis=(0, 2), keepdims=True) / np.float32(fmt_max)
    return ((a / s).astype(ml_dtypes.float8_e4m3fn).astype(np.float32) * s).astype(np.float32)


@pytest.mark.parametrize("op,directions", [("LSTM", 1), ("GRU", 1), ("GRU", 2), ("RNN", 1)])
@pytest.mark.parametrize("emit", ["qdq", "emulate"])
def test_weights_per_gate_row_and_input_match_a_reference(op, directions, emit):
    m, w, rr = _recurrent_model(op, directions=directions)
    r = B.rng(1)
    feeds = [{"x": r.normal(size=(T, N, I)).astype(np.float32)} for _ in range(4)]
    res = fp8onnx.compile_model(m, calibration=feeds, format="e4m3", emit=emit)
    (u,) = [u for u in res.plan.units if u.node == "rec"]
    assert u.unit == op.lower() and u.status == "quantized"
    assert sorted((x.tensor, x.axis) for x in u.weight_uses) == [("R", 1), ("W", 1)]
    onnx.checker.check_model(res.model, full_check=True)
    # reference: the float op with ml_dtypes-rounded W, R and x (x: one max scale per tensor)
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
    # and it approximates the float model (E4M3 on these weights: 4-6% relative error)
    f32 = session_for(m).run(None, {"x": x})[0]
    rel = np.linalg.norm(got[0] - f32) / np.linalg.norm(f32)
    assert 0 < rel < 0.08
