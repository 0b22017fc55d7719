"""The zoo registry: entries load valid models, metrics are sane and can fail, splits
are disjoint, missing packages give ZooSkip with the install hint."""
from __future__ import annotations

import sys

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from fp8onnx import zoo
from fp8onnx.zoo import ocr, prose

ALL = zoo.names()


class _Wrap:
    """A session that post-processes another session's outputs (to break a model on purpose)."""

    def __init__(self, model, fn):
        self.inner, self.fn, self.calls = zoo.ort_session(model), fn, 0

    def run(self, names, feeds):
        self.calls += 1
        return [self.fn(o) for o in self.inner.run(names, feeds)]


def test_registry_lists_entries_and_rejects_unknown_name():
    assert {"digits_cnn", "digits_cnn_bnfold", "digits_mlp", "ppocr_det", "ppocr_rec",
            "ppocr_cls"} <= set(ALL)
    with pytest.raises(ValueError, match="unknown zoo entry 'nope'.*digits_cnn"):
        zoo.get("nope")


@pytest.mark.parametrize("name", ALL)
def test_entry_metadata(name):
    e = zoo.get(name)
    assert e.name == name
    assert e.domain in {"cv", "nlp", "audio"}
    assert e.family in {"cnn", "transformer", "rnn", "mlp"}
    assert e.source and e.metric_name
    assert e.install_hint == "" or e.install_hint.startswith("pip install ")


@pytest.mark.parametrize("name", ALL)
def test_entry_loads_checked_fp32_model(zoo_entry, name):
    e = zoo_entry(name)
    model = e.load()
    onnx.checker.check_model(model)
    assert model.graph.node
    model.graph.node.pop()            # load() hands out a copy: editing it changes nothing
    assert len(e.load().graph.node) == len(model.graph.node) + 1
    inp, _ = e.io_names()
    feeds = next(iter(e.calib_feeds(1)))
    assert inp in feeds and feeds[inp].dtype in (np.float32, np.int64)


@pytest.mark.parametrize("name,floor", [("digits_cnn", 0.98), ("digits_cnn_bnfold", 0.98),
                                        ("digits_mlp", 0.95)])
def test_digits_fp32_accuracy(zoo_entry, name, floor):
    e = zoo_entry(name)
    acc = e.evaluate()
    assert acc > floor
    # Accuracy recomputed independently of evaluate(): argmax over the whole test split.
    x = np.concatenate([f["input"] for f in e.eval_feeds(450)])
    logits = zoo.ort_session(e.load().SerializeToString()).run(["logits"], {"input": x})[0]
    assert acc == pytest.approx(float((logits.argmax(1) == e.eval_labels(450)).mean()))


def test_digits_bn_kept_and_folded_models_agree(zoo_entry):
    kept, folded = zoo_entry("digits_cnn"), zoo_entry("digits_cnn_bnfold")
    assert "BatchNormalization" in {n.op_type for n in kept.load().graph.node}
    assert "BatchNormalization" not in {n.op_type for n in folded.load().graph.node}
    x = np.concatenate([f["input"] for f in kept.eval_feeds(128)])
    a = zoo.ort_session(kept.load().SerializeToString()).run(["logits"], {"input": x})[0]
    b = zoo.ort_session(folded.load().SerializeToString()).run(["logits"], {"input": x})[0]
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def test_digits_metric_falls_for_a_broken_model(digits_cnn):
    model = digits_cnn.load()
    w = next(i for i in model.graph.initializer if i.name == "fc2.weight")
    w.CopyFrom(numpy_helper.from_array(-numpy_helper.to_array(w), w.name))
    assert digits_cnn.evaluate(model) < 0.2


def test_custom_session_factory_is_used(digits_mlp):
    made = []

    def factory(data):
        made.append(_Wrap(data, lambda o: o))
        return made[-1]

    assert digits_mlp.evaluate(n=100, session_factory=factory) == digits_mlp.evaluate(n=100)
    assert len(made) == 1 and made[0].calls == 2  # 100 images in batches of 64


def test_digits_calib_and_eval_images_are_disjoint(digits_cnn):
    calib = np.concatenate([f["input"] for f in digits_cnn.calib_feeds(256)])
    test = np.concatenate([f["input"] for f in digits_cnn.eval_feeds(450)])
    assert calib.shape == (256, 1, 8, 8) and test.shape == (450, 1, 8, 8)
    assert 0.0 <= calib.min() and calib.max() <= 1.0
    # sklearn's digits holds a few exact duplicate scans; the split may put one on each
    # side, but the calibration set is drawn from the training split only.
    seen = {row.tobytes() for row in test}
    assert sum(row.tobytes() in seen for row in calib) <= 2


def test_prose_splits_are_disjoint_and_real():
    cal, ev = prose.paragraphs("calib"), prose.paragraphs("eval")
    assert len(cal) > 100 and len(ev) > 100
    assert not set(cal) & set(ev)
    # Different paragraphs can still wrap to an identical line ("body of a coroutine
    # function."); that must stay rare.
    assert len(set(prose.lines("calib", 200)) & set(prose.lines("eval", 200))) <= 4
    assert any("statement" in p for p in ev)
    with pytest.raises(ValueError, match="split"):
        prose.paragraphs("train")


def test_char_accuracy_against_hand_computed_values():
    assert ocr.char_accuracy("kitten", "sitting") == pytest.approx(1 - 3 / 7)
    assert ocr.char_accuracy("", "") == 1.0
    assert ocr.char_accuracy("abc", "") == 0.0


def test_ppocr_rec_reads_rendered_prose(zoo_entry):
    e = zoo_entry("ppocr_rec")
    assert e.evaluate(n=12) > 0.9
    # Reversing the time axis of the CTC output reverses the text: the metric must drop.
    bad = e.evaluate(n=12, session_factory=lambda m: _Wrap(m, lambda o: o[:, ::-1]))
    assert bad < 0.5


def test_ppocr_cls_agreement(zoo_entry):
    e = zoo_entry("ppocr_cls")
    assert e.evaluate(n=16) == 1.0
    flipped = e.evaluate(n=16, session_factory=lambda m: _Wrap(m, lambda o: o[:, ::-1]))
    assert flipped == 0.0


def test_ppocr_det_agreement(zoo_entry):
    e = zoo_entry("ppocr_det")
    assert e.evaluate(n=1) == 1.0
    assert e.evaluate(n=1, session_factory=lambda m: _Wrap(m, np.zeros_like)) == 0.0
    # The FP32 pipeline itself reads the page close to the rendered ground truth.
    text = e.read_pages(zoo.ort_session(e.load().SerializeToString()), 1)[0]
    assert ocr.char_accuracy(text, "\n".join(prose.lines("eval", ocr.PAGE_LINES))) > 0.9


def test_ocr_calib_and_eval_feeds_differ(zoo_entry):
    e = zoo_entry("ppocr_rec")
    inp, _ = e.io_names()
    cal = {f[inp].tobytes() for f in e.calib_feeds(20)}
    ev = {f[inp].tobytes() for f in e.eval_feeds(20)}
    assert len(cal) == len(ev) == 20 and not cal & ev


def test_missing_package_raises_zooskip_with_install_hint(monkeypatch):
    monkeypatch.setitem(sys.modules, "rapidocr_onnxruntime", None)  # import now fails
    e = zoo.get("ppocr_rec")
    with pytest.raises(zoo.ZooSkip, match=r"skipped: install rapidocr-onnxruntime \(pip install rapidocr-onnxruntime\)"):
        e.load()
    with pytest.raises(zoo.ZooSkip):
        e.evaluate(n=1)


def test_cache_dir_follows_env(monkeypatch, tmp_path):
    monkeypatch.setenv("FP8ONNX_CACHE", str(tmp_path / "c"))
    assert zoo.cache_dir("x") == tmp_path / "c" / "x" and (tmp_path / "c" / "x").is_dir()


def test_relative_loss():
    assert zoo.relative_loss(0.8, 0.6) == pytest.approx(0.25)
    with pytest.raises(ValueError, match="FP32 metric is 0"):
        zoo.relative_loss(0.0, 0.5)
