"""The ppocrv6_rec zoo entry: rapidocr 3.10's PP-OCRv6 small recogniser reading rendered
lines of CPython's prose. Our pre/post-processing equals rapidocr's own TextRecognizer,
accuracy is scored against the rendered truth, and FP8 models keep reading."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from conftest import entry_or_skip
from fp8onnx import zoo
from fp8onnx.zoo import prose
from fp8onnx.zoo.ocr import LINE_WIDTH, render_line
from fp8onnx.zoo.ppocrv6 import ppocrv6_entries, preprocess


@pytest.fixture(scope="module")
def ocr():
    return entry_or_skip("ppocrv6_rec")   # rapidocr is in the dev extra: fails where missing


@pytest.fixture(scope="module")
def recognizer(ocr):
    """rapidocr's own TextRecognizer on the same model file, as RapidOCR builds it."""
    import rapidocr
    from rapidocr import RapidOCR

    path = Path(rapidocr.__file__).parent / "models" / "PP-OCRv6_rec_small.onnx"
    engine = RapidOCR(params={"Rec.model_path": str(path), "Global.use_det": False,
                              "Global.use_cls": False, "Global.log_level": "critical"})
    return engine._load_rec_model()


def test_entry_fields():
    (e,) = ppocrv6_entries()
    assert (e.name, e.domain, e.family) == ("ppocrv6_rec", "cv", "transformer")
    assert e.install_hint == "pip install rapidocr" and e.default_eval_n == 24


def test_model_is_float_cnn_plus_attention_with_its_character_list(ocr):
    model = ocr.load()
    assert [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")] == [11]
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("Conv") == 57 and ops.count("MatMul") == 13 and ops.count("Softmax") == 3
    assert not {"QuantizeLinear", "ConvInteger", "MatMulInteger"} & set(ops)
    dims = [d.dim_param or d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    assert model.graph.input[0].name == "x" and dims[1:3] == [3, 48]
    chars = ocr.decoder().chars
    assert len(chars) == 18710 and chars[0] == "<blank>" and chars[-1] == " "
    x = next(iter(ocr.eval_feeds(1)))
    y = zoo.ort_session(model.SerializeToString()).run(None, x)[0]
    # one step per 8 input columns, one score per class, softmax-normalised
    assert y.shape == (1, x["x"].shape[3] // 8, len(chars))
    np.testing.assert_allclose(y.sum(axis=2), 1.0, atol=1e-4)


def test_feeds_equal_rapidocr_preprocessing(ocr, recognizer):
    """Bit-exact against TextRecognizer.resize_norm_img for a batch of one line, narrow
    lines (padded to 320) and wide ones (floored width) alike."""
    texts = prose.lines("calib", 20, LINE_WIDTH) + prose.lines("eval", 20, LINE_WIDTH)
    widths = set()
    for text in texts:
        img = render_line(text)
        h, w = img.shape[:2]
        ref = recognizer.resize_norm_img(img, max(320 / 48, w * 1.0 / h))
        ours = preprocess(img)
        assert ours.shape == (1,) + ref.shape and ours.dtype == np.float32
        np.testing.assert_array_equal(ours[0], ref)
        widths.add(ref.shape[2] == 320)
    assert widths == {True, False}
    first = next(iter(ocr.calib_feeds(1)))["x"]
    np.testing.assert_array_equal(first, preprocess(render_line(texts[0])))


def test_fp32_text_equals_rapidocr_text_recognizer(ocr, recognizer):
    """Independent reference: rapidocr 3.10's TextRecognizer (its session, resize and
    CTCLabelDecode), one line per call so that no batch padding differs."""
    from rapidocr.ch_ppocr_rec import TextRecInput

    n = 16
    texts = prose.lines("eval", n, LINE_WIDTH)
    session = zoo.ort_session(ocr.load().SerializeToString())
    ours = [ocr.recognize(session, feeds) for feeds in ocr.eval_feeds(n)]
    theirs = [recognizer(TextRecInput(img=render_line(t))).txts[0] for t in texts]
    assert ours == theirs
    # measured: 15/16 read exactly ('"__debug_"' for '"__debug__"' in line 8)
    assert sum(o == t for o, t in zip(ours, texts)) >= 13


def test_fp32_accuracy_against_rendered_lines(ocr):
    # measured: 0.9987 on the 24 default eval lines, 0.9994 on 100, 0.9967 on 300
    assert ocr.evaluate() >= 0.99


def test_metric_falls_for_a_broken_model(ocr):
    class Rolled:   # every step's scores shifted by one class: all characters wrong
        def __init__(self, data):
            self.inner = zoo.ort_session(data)

        def run(self, names, feeds):
            return [np.roll(o, 1, axis=-1) for o in self.inner.run(names, feeds)]

    assert ocr.evaluate(n=8, session_factory=Rolled) < 0.3


@pytest.mark.parametrize("fmt,max_loss", [
    # measured (calib 32, the 24 default eval lines, FP32 0.9987): E4M3 0.9962 (loss
    # 0.0025), E3M4 0.9964 (0.0023); on 300 eval lines (FP32 0.9967) both 0.9937 (0.003)
    ("e4m3", 0.01),
    ("e3m4", 0.01),
])
def test_fp8_compile_keeps_reading(ocr, fmt, max_loss):
    import fp8onnx
    from fp8onnx.zoo.fp8eval import fp8_vs_fp32

    # every Conv and MatMul (attention and head included) is quantized: the loss below
    # is that of a real FP8 model, not of a float one
    r = fp8onnx.compile_model(ocr.load(), format=fmt, calibration=list(ocr.calib_feeds(8)))
    assert r.report["summary"]["quantized_by_op"] == {"Conv": {fmt: 57}, "MatMul": {fmt: 13}}
    res = fp8_vs_fp32(ocr, calib_n=32, format=fmt)
    assert res["fp32"] >= 0.99 and res["fp8"] >= 0.98
    assert res["relative_loss"] <= max_loss
