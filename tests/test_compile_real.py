"""Compilation of real pretrained models nobody here wrote, on real inputs.

PP-OCRv4 (rapidocr-onnxruntime, in the dev extra so these run in CI): opset 11/12,
weights in Constant nodes, dynamic shapes, Paddle's decomposed HardSwish and LayerNorm.
The task metric comes from the zoo entry (OCR text agreement, recognition character
accuracy, classifier label agreement).
"""
import numpy as np
import onnx
import pytest
from onnx import TensorProto

import onnx_builders as B
from fp8onnx import zoo
from fp8onnx.api import compile_model


def native_session(data):
    import onnxruntime as ort

    return ort.InferenceSession(data, providers=["CPUExecutionProvider"], disabled_optimizers=B.ORT_FP8_UNSAFE)


def check_all_weights_fp8(src, q, fmt_type):
    weighted = [n for n in src.graph.node if n.op_type in ("Conv", "ConvTranspose", "MatMul", "Gemm")]
    inits = {t.name: t for t in q.graph.initializer}
    producers = {o: n for n in q.graph.node for o in n.output}
    n_fp8 = 0
    for n in q.graph.node:
        if n.op_type not in ("Conv", "ConvTranspose", "MatMul", "Gemm"):
            continue
        w = producers.get(n.input[1])
        if w is not None and w.op_type == "DequantizeLinear" and inits[w.input[0]].data_type == fmt_type:
            n_fp8 += 1
    return n_fp8, len(weighted)


@pytest.mark.parametrize("scheme", ["standard", "extended"])
def test_ppocr_cls_e4m3(zoo_entry, scheme):
    e = zoo_entry("ppocr_cls")
    src = e.load()
    res = compile_model(src, calibration=list(e.calib_feeds(16)), format="e4m3", scheme=scheme)
    q = res.model
    onnx.checker.check_model(q, full_check=True)
    n_fp8, n_weighted = check_all_weights_fp8(src, q, TensorProto.FLOAT8E4M3FN)
    # every Conv/MatMul with a constant weight holds FP8 weights
    assert n_fp8 == n_weighted - sum(1 for f in res.plan.float_nodes
                                     if f.op_type in ("Conv", "ConvTranspose", "MatMul", "Gemm"))
    assert n_fp8 >= 50
    feeds = next(iter(e.eval_feeds(1)))
    y0 = B.ort_run(src, feeds)
    y = B.ort_run(q, feeds)
    cos = float((y0 * y).sum() / np.linalg.norm(y0) / np.linalg.norm(y))
    assert cos > 0.98, cos
    assert zoo.relative_loss(e.evaluate(), e.evaluate(q, session_factory=native_session)) <= 0.07


def test_ppocr_rec_e4m3_and_e3m4_keep_the_text(zoo_entry):
    e = zoo_entry("ppocr_rec")
    src = e.load()
    calib = list(e.calib_feeds(12))
    m32 = e.evaluate()
    for fmt in ("e4m3", "e3m4"):
        q = compile_model(src, calibration=calib, format=fmt).model
        factory = native_session if fmt == "e4m3" else None
        if factory is None:
            from fp8onnx.runtime import InferenceSession
            factory = InferenceSession
        mq = e.evaluate(q, session_factory=factory)
        assert zoo.relative_loss(m32, mq) < 0.01, (fmt, m32, mq)


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["e4m3", "e3m4"])
def test_ppocr_det_finds_the_text(zoo_entry, fmt):
    e = zoo_entry("ppocr_det")
    src = e.load()
    q = compile_model(src, calibration=list(e.calib_feeds(4)), format=fmt).model
    from fp8onnx.runtime import InferenceSession
    factory = native_session if fmt == "e4m3" else InferenceSession
    assert zoo.relative_loss(e.evaluate(), e.evaluate(q, session_factory=factory)) <= 0.05


def test_yolov8n_e3m4_keep_first_restores_the_boxes(zoo_entry):
    # Measured (E3M4, 16 calibration images): box agreement with FP32 0.830 with every
    # layer FP8, 0.967 with the first Conv in float; confident boxes 0.94 -> 1.0. The first
    # Conv reads 8-bit pixels, which a 4-bit mantissa rounds to 16 levels per octave, and
    # its edge kernels cancel what is left.
    from fp8onnx.zoo.fp8eval import fp8_vs_fp32

    e = zoo_entry("nudenet_yolov8n")
    plain = fp8_vs_fp32(e, calib_n=16, format="e3m4")["fp8"]
    first = fp8_vs_fp32(e, calib_n=16, format="e3m4", keep_first=True)
    assert first["fp8"] >= plain + 0.08
    assert first["fp8"] >= 0.95
    # With least-error weight scales as well (coverage study, 32 images: 1.000, every box).
    both = fp8_vs_fp32(e, calib_n=16, format="e3m4", keep_first=True, weight_calib_method="mse")
    assert both["fp8"] >= 0.97
