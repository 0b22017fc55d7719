"""End-to-end compilation through the Python API, checked against ONNX Runtime and FP32."""
import os

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnx_builders as B
import fp8onnx
from fp8onnx import formats
from fp8onnx.api import compile_model
from fp8onnx.errors import UserError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CNN = os.path.join(ROOT, "models", "digits_cnn.onnx")
CNN_FOLD = os.path.join(ROOT, "models", "digits_cnn_bnfold.onnx")
MLP = os.path.join(ROOT, "models", "digits_mlp.onnx")
CALIB = os.path.join(ROOT, "models", "data", "digits_calib.npz")
TEST = np.load(os.path.join(ROOT, "models", "data", "digits_test.npz"))


def accuracy(logits):
    return float((logits.argmax(1) == TEST["label"]).mean())


def fp8_initializers(model):
    return {t.name: t for t in model.graph.initializer
            if t.data_type in (TensorProto.FLOAT8E4M3FN, TensorProto.FLOAT8E5M2, TensorProto.FLOAT8E4M3FNUZ,
                               TensorProto.FLOAT8E5M2FNUZ, TensorProto.INT8, TensorProto.UINT8)}


@pytest.mark.parametrize("fmt", ["e4m3", "e5m2", "e4m3fnuz", "e5m2fnuz", "int8"])
@pytest.mark.parametrize("path", [CNN, CNN_FOLD, MLP], ids=["cnn", "cnn_bnfold", "mlp"])
def test_native_formats_accuracy_and_weights(path, fmt):
    res = compile_model(path, calibration=CALIB, format=fmt)
    q = res.model
    onnx.checker.check_model(q, full_check=True)
    fmt_obj = formats.get(fmt)
    # every Conv/Gemm/MatMul weight now is an FP8 (INT8) initializer behind a per-channel DQ
    weights = [t for t in q.graph.initializer if t.data_type == fmt_obj.onnx_type and len(t.dims) >= 2]
    n_weighted = sum(1 for n in onnx.load(path).graph.node if n.op_type in ("Conv", "Gemm", "MatMul"))
    assert len(weights) == n_weighted
    fp32 = accuracy(B.ort_run(onnx.load(path), {"input": TEST["input"]}))
    acc = accuracy(B.ort_run(q, {"input": TEST["input"]}))
    # E5M2's 2 mantissa bits cost a few points on these small nets; the others stay close.
    assert acc >= fp32 - (0.06 if fmt.startswith("e5m2") else 0.02), (fmt, acc, fp32)


def test_e3m4_emulated_through_custom_ops_matches_kernel_reference():
    q = compile_model(CNN_FOLD, calibration=CALIB, format="e3m4").model
    assert {n.domain for n in q.graph.node if n.op_type in ("FakeQuant", "Dequantize")} == {"ai.fp8onnx"}
    assert not any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in q.graph.node)
    acc = accuracy(B.fp8_run(q, {"input": TEST["input"]}))
    assert acc >= 0.98
    # the same graph emitted as emulate for e4m3 agrees with ORT's native Q/DQ execution
    q_emul = compile_model(CNN_FOLD, calibration=CALIB, format="e4m3", emit="emulate").model
    q_nat = compile_model(CNN_FOLD, calibration=CALIB, format="e4m3", emit="qdq").model
    x = {"input": TEST["input"][:64]}
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    nat = ort.InferenceSession(q_nat.SerializeToString(), so).run(None, x)[0]
    np.testing.assert_allclose(B.fp8_run(q_emul, x), nat, rtol=1e-5, atol=1e-5)


def test_mixed_formats_e3m4_weights_e4m3_activations():
    q = compile_model(CNN_FOLD, calibration=CALIB, weight_format="e3m4", activation_format="e4m3").model
    ops = {(n.domain, n.op_type) for n in q.graph.node}
    assert ("ai.fp8onnx", "Dequantize") in ops and ("", "QuantizeLinear") in ops
    assert ("ai.fp8onnx", "FakeQuant") not in ops
    assert accuracy(B.fp8_run(q, {"input": TEST["input"]})) >= 0.98


def test_deterministic_bytes_and_user_model_untouched():
    src = onnx.load(CNN)
    before = src.SerializeToString()
    a = fp8onnx.compile(src, calibration=CALIB, format="e4m3", scheme="extended")
    b = fp8onnx.compile(CNN, calibration=CALIB, format="e4m3", scheme="extended")
    assert src.SerializeToString() == before
    assert a.SerializeToString(deterministic=True) == b.SerializeToString(deterministic=True)


def test_netron_friendly_names_docstrings_and_metadata():
    q = compile_model(CNN_FOLD, calibration=CALIB, format="e4m3").model
    names = {n.name for n in q.graph.node}
    assert {"input_q", "input_dq", "conv1.weight_dq"} <= names
    dq = next(n for n in q.graph.node if n.name == "input_dq")
    assert "e4m3" in dq.doc_string and "amax" in dq.doc_string and "scale" in dq.doc_string
    meta = {p.key: p.value for p in q.metadata_props}
    recipe = fp8onnx.recipe.Recipe.from_dict(__import__("json").loads(meta["fp8onnx.recipe"]))
    assert recipe.weight_format == "e4m3" and recipe.scheme == "standard"
    assert "conv" in __import__("json").loads(meta["fp8onnx.scheme"])["units"]
    # the float weights are gone: about 4x smaller
    src = onnx.load(CNN_FOLD)
    assert q.ByteSize() < 0.35 * src.ByteSize()
    assert len({n.name for n in q.graph.node}) == len(q.graph.node)


def test_activation_scale_is_amax_over_format_max():
    q = compile_model(MLP, calibration=CALIB, format="e4m3").model
    init = {t.name: t for t in q.graph.initializer}
    first_q = next(n for n in q.graph.node if n.op_type == "QuantizeLinear")
    scale = float(numpy_helper.to_array(init[first_q.input[1]]))
    x = np.load(CALIB)["input"]
    assert scale == pytest.approx(float(np.abs(x).max()) / 448.0, rel=1e-6)


def test_weight_codes_equal_kernel_quantization_per_channel():
    q = compile_model(CNN_FOLD, calibration=CALIB, format="e4m3").model
    src = {t.name: numpy_helper.to_array(t) for t in onnx.load(CNN_FOLD).graph.initializer}
    init = {t.name: t for t in q.graph.initializer}
    w = src["conv2.weight"]
    scale = numpy_helper.to_array(init["conv2.weight_scale"])
    np.testing.assert_array_equal(scale, (np.abs(w).reshape(w.shape[0], -1).max(1) / np.float32(448)).astype(np.float32))
    codes = np.frombuffer(init["conv2.weight_e4m3"].raw_data, np.uint8).reshape(w.shape)
    import ml_dtypes
    ref = (w / scale[:, None, None, None]).astype(ml_dtypes.float8_e4m3fn).view(np.uint8)
    np.testing.assert_array_equal(codes, ref)


def test_attention_block_standard_and_extended_run_close_to_fp32():
    m = B.attention_block()
    r = B.rng(1)
    calib = [{"x": r.normal(size=(2, 5, 16)).astype(np.float32)} for _ in range(8)]
    x = {"x": r.normal(size=(3, 5, 16)).astype(np.float32)}
    y0 = B.ort_run(m, x)
    for scheme in ("standard", "extended"):
        res = compile_model(m, calibration=calib, format="e4m3", scheme=scheme)
        y = B.ort_run(res.model, x)
        cos = float((y0 * y).sum() / np.linalg.norm(y0) / np.linalg.norm(y))
        assert cos > 0.99, (scheme, cos)
    ops = [n.op_type for n in res.model.graph.node]
    assert ops.count("QuantizeLinear") >= 7  # x, q, kt, probs, v, ctx, residual inputs, ...


def test_old_opset_constant_weights_and_if_subgraph():
    r = B.rng(2)
    w_main = r.normal(size=(4, 6)).astype(np.float32)
    then_g = helper.make_graph(
        [helper.make_node("Constant", [], ["w_then"], value=numpy_helper.from_array(r.normal(size=(6, 3)).astype(np.float32))),
         helper.make_node("MatMul", ["h", "w_then"], ["t_out"])], "then", [], [B.vi("t_out", None)])
    else_g = helper.make_graph(
        [helper.make_node("Constant", [], ["w_else"], value=numpy_helper.from_array(r.normal(size=(6, 3)).astype(np.float32))),
         helper.make_node("MatMul", ["h", "w_else"], ["e_out"])], "else", [], [B.vi("e_out", None)])
    m = B.model([
        helper.make_node("Constant", [], ["w_main"], value=numpy_helper.from_array(w_main)),
        helper.make_node("MatMul", ["x", "w_main"], ["h0"]),
        helper.make_node("Relu", ["h0"], ["h"]),
        helper.make_node("If", ["cond"], ["y"], then_branch=then_g, else_branch=else_g),
    ], [B.vi("x", ["N", 4]), B.vi("cond", [], TensorProto.BOOL)], [B.vi("y", None)], opset=11)
    calib = [{"x": r.normal(size=(3, 4)).astype(np.float32), "cond": np.array(i % 2 == 0)} for i in range(6)]
    res = compile_model(m, calibration=calib, format="e4m3")
    q = res.model
    onnx.checker.check_model(q, full_check=True)
    assert q.opset_import[0].version >= 19
    branch = next(n for n in q.graph.node if n.op_type == "If")
    for a in branch.attribute:
        assert any(t.data_type == TensorProto.FLOAT8E4M3FN for t in a.g.initializer), a.name
    for cond in (True, False):
        feeds = {"x": r.normal(size=(5, 4)).astype(np.float32), "cond": np.array(cond)}
        y0, y = B.ort_run(m, feeds), B.ort_run(q, feeds)
        assert np.abs(y - y0).max() < 0.1 * np.abs(y0).max() + 1e-3


def test_missing_calibration_names_the_choices():
    with pytest.raises(UserError, match="--calib data.npz"):
        compile_model(CNN)


def test_float16_layers_of_a_mixed_model_stay_float_with_the_reason():
    # onnxruntime's converter: float16 inside, conv1 and fc2 (and the I/O) kept float32.
    from onnxruntime.transformers.float16 import convert_float_to_float16

    mixed = convert_float_to_float16(onnx.load(CNN), keep_io_types=True, node_block_list=["conv1", "fc2"])
    res = compile_model(mixed, calibration=CALIB)
    onnx.checker.check_model(res.model, full_check=True)
    status = {d.node: d for d in res.plan.units}
    assert {n for n, d in status.items() if d.status == "quantized"} == {"conv1", "fc2"}
    for n in ("conv2", "conv3", "fc1"):
        assert status[n].status == "float" and status[n].precision == "FLOAT16"
        assert any("FLOAT16, not float32" in note for note in status[n].notes), status[n].notes
    # conv1's weight is FP8 now; the float16 weights are untouched.
    inits = {t.name: t for t in res.model.graph.initializer}
    assert inits["conv2.weight"].data_type == TensorProto.FLOAT16
    assert "conv1.weight" not in inits
    acc = accuracy(B.ort_run(res.model, {"input": TEST["input"]}))
    assert acc >= accuracy(B.ort_run(mixed, {"input": TEST["input"]})) - 0.02


def test_weights_only_model_needs_no_calibration():
    m = B.model([helper.make_node("Gather", ["table", "ids"], ["emb"], name="embed")],
                [B.vi("ids", [3], TensorProto.INT64)], [B.vi("emb", [3, 4])],
                [B.init("table", B.rng().normal(size=(10, 4)).astype(np.float32))])
    q = compile_model(m).model
    ids = {"ids": np.array([0, 3, 9], np.int64)}
    np.testing.assert_allclose(B.ort_run(q, ids), B.ort_run(m, ids), rtol=0.07, atol=1e-3)


def test_bn_calib_option_updates_batchnorm_and_reports_it():
    src = onnx.load(CNN)
    res = compile_model(CNN, calibration=CALIB, format="e5m2", bn_calib=True)
    assert len(res.report["bn_calibration"]["layers"]) == 3
    before = {t.name: numpy_helper.to_array(t) for t in src.graph.initializer}
    after = {t.name: numpy_helper.to_array(t) for t in res.model.graph.initializer}
    bn = next(n for n in res.model.graph.node if n.op_type == "BatchNormalization")
    assert not np.array_equal(before[bn.input[3]], after[bn.input[3]])  # running mean moved
    assert accuracy(B.ort_run(res.model, {"input": TEST["input"]})) >= 0.98
    meta = {p.key: p.value for p in res.model.metadata_props}
    assert __import__("json").loads(meta["fp8onnx.recipe"])["bn_calib"] is True
