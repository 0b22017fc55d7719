"""EmulateQDQ: native FP8 Q/DQ rewritten to ai.fp8onnx ops, every output bit kept.

The reference is always onnxruntime running the original model (minus its FP8-unsafe
rewrites, as fp8onnx evaluates); the rewritten copy runs on fp8onnx.runtime with its
rewritten weights unfolded, as session_for runs it.
"""
import copy
import os

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto as T
from onnx import helper, numpy_helper

import fp8onnx
from fp8onnx import formats
from fp8onnx.evaluation.data import ORT_QDQ_ENV, session_for
from fp8onnx.passes import EmulateQDQ
from fp8onnx.passes.emulate_qdq import has_native_fp8_qdq
from fp8onnx.runtime import InferenceSession, ops
from fp8onnx.runtime.session import FP8_UNSAFE_OPTIMIZERS

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CNN = os.path.join(ROOT, "models", "digits_cnn.onnx")
CALIB = os.path.join(ROOT, "models", "data", "digits_calib.npz")
TEST = np.load(os.path.join(ROOT, "models", "data", "digits_test.npz"))
FP8 = {"e4m3": T.FLOAT8E4M3FN, "e5m2": T.FLOAT8E5M2, "e4m3fnuz": T.FLOAT8E4M3FNUZ, "e5m2fnuz": T.FLOAT8E5M2FNUZ}
#: Codes planted in the weights: -0 (none in FNUZ, where 0x80 is NaN), +0, then the largest finite code.
EDGE_CODES = {"e4m3": [0x80, 0x00, 0x7E], "e5m2": [0x80, 0x00, 0x7B], "e4m3fnuz": [0x01, 0x00, 0x7F],
              "e5m2fnuz": [0x01, 0x00, 0x7F]}


def vi(name, shape, elem=T.FLOAT):
    return helper.make_tensor_value_info(name, elem, shape)


def f32(name, a):
    return numpy_helper.from_array(np.asarray(a, np.float32), name)


def fp8_tensor(name, codes, elem):
    t = onnx.TensorProto(name=name, data_type=elem, dims=codes.shape)
    t.raw_data = np.ascontiguousarray(codes, np.uint8).tobytes()
    return t


def ort_run(model, feeds):
    so = ort.SessionOptions()
    so.log_severity_level = 3
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"],
                                disabled_optimizers=list(FP8_UNSAFE_OPTIMIZERS))
    return sess.run(None, feeds)


def emulated_run(model, feeds):
    rewritten = copy.deepcopy(model)
    assert EmulateQDQ()(rewritten).modified
    return InferenceSession(rewritten.SerializeToString(), fold_constants=False).run(None, feeds)


def assert_same_bits(got, want):
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g.shape == w.shape and g.dtype == w.dtype
        gn, wn = np.isnan(g), np.isnan(w)
        np.testing.assert_array_equal(gn, wn)
        assert np.array_equal(g.view(np.uint32)[~gn], w.view(np.uint32)[~wn]), \
            np.flatnonzero(g.view(np.uint32) != w.view(np.uint32))[:10]


def small_model(fmt="e4m3", saturate=1):
    """Activation pairs (per tensor, shared by two DQs; per channel), per-channel and
    per-tensor FP8 weights, a Q/DQ inside an If branch and one INT8 pair that stays."""
    elem, f = FP8[fmt], formats.get(fmt)
    r = np.random.default_rng(1)
    w = r.normal(0, 0.5, (4, 3, 3, 3)).astype(np.float32)
    w_scale = (np.abs(w).reshape(4, -1).max(1) / f.max).astype(np.float32)
    w_codes = f.quantize(w, w_scale, axis=0)
    w_codes.reshape(-1)[:3] = EDGE_CODES[fmt]
    m = r.normal(0, 1, (5, 8)).astype(np.float32)
    m_codes = f.quantize(m, np.float32(0.01))
    sat = {"saturate": saturate}
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "x_scale", "zp"], ["x_q"], name="x_q", **sat),
        helper.make_node("DequantizeLinear", ["x_q", "x_scale", "zp"], ["x_dq"], name="x_dq"),
        helper.make_node("DequantizeLinear", ["x_q", "x_scale2", "zp"], ["x_dq2"], name="x_dq2"),
        helper.make_node("DequantizeLinear", ["w_fp8", "w_scale"], ["w_dq"], name="w_dq", axis=0),
        helper.make_node("Conv", ["x_dq", "w_dq"], ["conv"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("QuantizeLinear", ["conv", "c_scale", "zp4"], ["conv_q"], name="conv_q", axis=1, **sat),
        helper.make_node("DequantizeLinear", ["conv_q", "c_scale", "zp4"], ["conv_dq"], name="conv_dq", axis=1),
        helper.make_node("DequantizeLinear", ["m_fp8", "m_scale", "zp"], ["m_dq"], name="m_dq"),
        helper.make_node("MatMul", ["x_dq2", "m_dq"], ["mm"], name="mm"),
        helper.make_node("QuantizeLinear", ["x", "i_scale", "i_zp"], ["x_i8"], name="x_i8"),
        helper.make_node("DequantizeLinear", ["x_i8", "i_scale", "i_zp"], ["x_i8_dq"], name="x_i8_dq"),
    ]
    then = helper.make_graph([
        helper.make_node("QuantizeLinear", ["x", "x_scale", "zp"], ["b_q"], name="b_q", **sat),
        helper.make_node("DequantizeLinear", ["b_q", "x_scale", "zp"], ["b_dq"], name="b_dq"),
        helper.make_node("Neg", ["b_dq"], ["b_out"], name="b_neg")], "then", [], [vi("b_out", None)])
    other = helper.make_graph([helper.make_node("Identity", ["x"], ["e_out"], name="e_id")], "else", [],
                              [vi("e_out", None)])
    nodes.append(helper.make_node("If", ["cond"], ["branch"], name="if", then_branch=then, else_branch=other))
    inits = [f32("x_scale", 0.05), f32("x_scale2", 0.05), f32("c_scale", [0.5, 0.01, 2.0, 1e-3]),
             fp8_tensor("w_fp8", w_codes, elem), f32("w_scale", w_scale),
             fp8_tensor("m_fp8", m_codes, elem), f32("m_scale", 0.01), fp8_tensor("zp", np.zeros((), np.uint8), elem),
             fp8_tensor("zp4", np.zeros(4, np.uint8), elem), f32("i_scale", 0.1),
             numpy_helper.from_array(np.array(0, np.int8), "i_zp")]
    g = helper.make_graph(nodes, "small", [vi("x", [2, 3, 6, 5]), vi("cond", [], T.BOOL)],
                          [vi("x_dq", [2, 3, 6, 5]), vi("conv_dq", [2, 4, 6, 5]), vi("mm", [2, 3, 6, 8]),
                           vi("x_i8_dq", [2, 3, 6, 5]), vi("branch", [2, 3, 6, 5])], inits)
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 19)])
    model.ir_version = 9
    return model


def edge_input():
    r = np.random.default_rng(2)
    x = (r.normal(0, 4, (2, 3, 6, 5)) * np.exp2(r.integers(-12, 6, (2, 3, 6, 5)))).astype(np.float32)
    x.reshape(-1)[:12] = [np.nan, np.inf, -np.inf, -0.0, 0.0, 1e6, -1e6, 22.4, 22.40001, -22.4,
                          1e-30, -np.float32(2.0 ** -20)]
    return x


@pytest.mark.parametrize("saturate", [1, 0])
@pytest.mark.parametrize("fmt", sorted(FP8))
def test_small_model_bit_identical_to_onnxruntime(fmt, saturate):
    model = small_model(fmt, saturate)
    for cond in (True, False):
        feeds = {"x": edge_input(), "cond": np.array(cond)}
        assert_same_bits(emulated_run(model, feeds), ort_run(model, feeds))


def test_rewritten_structure_and_checker():
    model = small_model()
    before = model.SerializeToString()
    rewritten = copy.deepcopy(model)
    result = EmulateQDQ()(rewritten)
    assert result.modified and model.SerializeToString() == before
    ops_ = [(n.op_type, n.name) for n in rewritten.graph.node]
    assert ops_ == [("FakeQuant", "x_fq"), ("Identity", "x_dq2_alias"), ("Dequantize", "w_dq"),
                    ("Conv", "conv"), ("FakeQuant", "conv_fq"), ("Dequantize", "m_dq"), ("MatMul", "mm"),
                    ("QuantizeLinear", "x_i8"), ("DequantizeLinear", "x_i8_dq"), ("If", "if")]
    attrs = {n.name: {a.name: helper.get_attribute_value(a) for a in n.attribute} for n in rewritten.graph.node}
    assert attrs["x_fq"] == {"format": b"e4m3", "axis": 1, "saturate": 1}
    assert attrs["w_dq"] == {"format": b"e4m3", "axis": 0}
    then = next(a.g for a in rewritten.graph.node[-1].attribute if a.name == "then_branch")
    assert [(n.op_type, n.name) for n in then.node] == [("FakeQuant", "x_fq_1"), ("Neg", "b_neg")]
    inits = {t.name: t for t in rewritten.graph.initializer}
    assert "w_fp8" not in inits and inits["w_fp8_u8"].data_type == T.UINT8
    assert "zp" not in inits and "zp4" not in inits and "i_zp" in inits  # the FP8 zero point went with its nodes
    assert ops.opset_import() in rewritten.opset_import
    ops.register_onnx_schemas()
    onnx.checker.check_model(rewritten, full_check=True)
    again = copy.deepcopy(model)
    EmulateQDQ()(again)
    assert again.SerializeToString() == rewritten.SerializeToString()  # deterministic
    assert EmulateQDQ()(rewritten).modified is False


def test_int8_and_unrecognised_qdq_are_left_alone():
    elem = T.FLOAT8E4M3FN
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "s", "i_zp"], ["xi"], name="int8_q"),
        helper.make_node("DequantizeLinear", ["xi", "s", "i_zp"], ["yi"], name="int8_dq"),
        # Q output also a graph output; DQ with another scale; nonzero zero point.
        helper.make_node("QuantizeLinear", ["x", "s", "zp"], ["xq"], name="out_q"),
        helper.make_node("DequantizeLinear", ["xq", "s", "zp"], ["y1"], name="out_dq"),
        helper.make_node("QuantizeLinear", ["x", "s", "zp"], ["xq2"], name="other_q"),
        helper.make_node("DequantizeLinear", ["xq2", "s2", "zp"], ["y2"], name="other_dq"),
        helper.make_node("QuantizeLinear", ["x", "s", "zp1"], ["xq3"], name="nz_q"),
        helper.make_node("DequantizeLinear", ["xq3", "s", "zp1"], ["y3"], name="nz_dq"),
    ]
    inits = [f32("s", 0.1), f32("s2", 0.2), numpy_helper.from_array(np.array(0, np.int8), "i_zp"),
             fp8_tensor("zp", np.zeros((), np.uint8), elem), fp8_tensor("zp1", np.array(0x38, np.uint8), elem)]
    g = helper.make_graph(nodes, "g", [vi("x", [4])], [vi("yi", [4]), vi("y1", [4]), vi("xq", [4], elem),
                                                        vi("y2", [4]), vi("y3", [4])], inits)
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 19)])
    before = model.SerializeToString()
    p = EmulateQDQ()
    assert p(model).modified is False and model.SerializeToString() == before
    assert {name for name, _ in p.skipped} == {"int8_q", "out_q", "other_q", "nz_q"}
    # An INT8-only model is not an FP8 model: onnxruntime runs it.
    assert not has_native_fp8_qdq(fp8onnx.compile(CNN, calibration=CALIB, format="int8"))


def test_blocked_quantization_is_left_alone():
    elem = T.FLOAT8E4M3FN
    codes = np.full((4, 4), 0x38, np.uint8)
    node = helper.make_node("DequantizeLinear", ["w", "s"], ["y"], name="blocked", axis=1, block_size=2)
    g = helper.make_graph([node], "g", [], [vi("y", [4, 4])], [fp8_tensor("w", codes, elem),
                                                               f32("s", np.ones((4, 2)))])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 21)])
    before = model.SerializeToString()
    assert EmulateQDQ()(model).modified is False and model.SerializeToString() == before


def test_weight_read_by_two_dequantizes_gets_one_uint8_copy():
    elem = T.FLOAT8E5M2
    codes = np.array([[0x3C, 0x80], [0x7B, 0x01]], np.uint8)  # 1, -0, max, smallest subnormal
    nodes = [helper.make_node("DequantizeLinear", ["w", "s"], ["w1"], name="dq1"),
             helper.make_node("DequantizeLinear", ["w", "s"], ["w2"], name="dq2"),
             helper.make_node("Add", ["w1", "w2"], ["y"], name="add")]
    g = helper.make_graph(nodes, "g", [], [vi("y", [2, 2])], [fp8_tensor("w", codes, elem), f32("s", 0.5)])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 19)])
    rewritten = copy.deepcopy(model)
    assert EmulateQDQ()(rewritten).modified
    assert [t.name for t in rewritten.graph.initializer] == ["s", "w_u8"]
    assert_same_bits(InferenceSession(rewritten.SerializeToString(), fold_constants=False).run(None, {}),
                     ort_run(model, {}))


@pytest.fixture(scope="module")
def digits():
    return {f: fp8onnx.compile(CNN, calibration=CALIB, format=f) for f in ("e4m3", "e5m2")}


@pytest.mark.parametrize("fmt", ["e4m3", "e5m2"])
def test_compiled_digits_cnn_bit_identical(digits, fmt):
    q = digits[fmt]
    before = q.SerializeToString()
    feeds = {"input": TEST["input"]}
    ref = session_for(q, ort_qdq=True)
    fast = session_for(q)
    assert isinstance(fast, InferenceSession) and isinstance(ref, ort.InferenceSession)
    assert_same_bits(fast.run(None, feeds), ref.run(None, feeds))
    assert q.SerializeToString() == before  # session_for rewrites a copy
    rewritten = copy.deepcopy(q)
    EmulateQDQ()(rewritten)
    assert not any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in rewritten.graph.node)
    onnx.checker.check_model(rewritten, full_check=True)


def test_mixed_native_and_emulated_model_bit_identical():
    # E3M4 Gemm as ai.fp8onnx ops (folded by the runtime, as before) beside native E4M3.
    mixed = fp8onnx.compile(CNN, calibration=CALIB, recipe={"format": "e4m3", "op_types": {"Gemm": "e3m4"}})
    feeds = {"input": TEST["input"][:200]}
    assert_same_bits(session_for(mixed).run(None, feeds), session_for(mixed, ort_qdq=True).run(None, feeds))


def test_off_switches(digits, monkeypatch):
    from fp8onnx.zoo import ort_session

    data = digits["e4m3"].SerializeToString()
    assert isinstance(ort_session(data), InferenceSession)
    assert isinstance(ort_session(data, ort_qdq=True), ort.InferenceSession)
    assert isinstance(ort_session(onnx.load(CNN).SerializeToString()), ort.InferenceSession)  # float
    # The onnxruntime path still keeps the FP8-unsafe rewrites off: the Relu before a Q stays.
    x = TEST["input"][:50]
    both = [s.run(None, {"input": x})[0] for s in (ort_session(data), ort_session(data, ort_qdq=True))]
    assert_same_bits(both[:1], both[1:])
    monkeypatch.setenv(ORT_QDQ_ENV, "1")
    assert isinstance(session_for(digits["e4m3"]), ort.InferenceSession)
    assert isinstance(ort_session(data), ort.InferenceSession)
    assert isinstance(session_for(digits["e4m3"], ort_qdq=False), InferenceSession)


def test_zoo_metric_unchanged_on_the_fast_path(digits, zoo_entry):
    from fp8onnx.zoo import ort_session

    entry = zoo_entry("digits_cnn")
    q = digits["e4m3"]
    slow = entry.evaluate(q, n=200, session_factory=lambda b: ort_session(b, ort_qdq=True))
    assert entry.evaluate(q, n=200) == slow


@pytest.mark.slow
def test_ppocr_cls_e4m3_bit_identical(zoo_entry):
    """A real pretrained model: PP-OCR's direction classifier, compiled E4M3 with calibration."""
    entry = zoo_entry("ppocr_cls")
    q = fp8onnx.compile(entry.load(), calibration=list(entry.calib_feeds(32)), format="e4m3",
                        **entry.compile_options)
    fast, ref = session_for(q), session_for(q, ort_qdq=True)
    assert isinstance(fast, InferenceSession)
    n = 0
    for feeds in entry.eval_feeds(64):
        assert_same_bits(fast.run(None, feeds), ref.run(None, feeds))
        n += 1
    assert n > 0
