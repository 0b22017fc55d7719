"""The oww_embedding and oww_timer zoo entries: openWakeWord's speech-embedding CNN and its
timer head on espeak-ng clips of prose and wake phrases.

The independent references are the package's own ``AudioFeatures._get_embeddings`` (its
melspectrogram model, transform and windowing) and its streaming ``Model.predict_clip``
for the pipelines, and the truth of what each clip says for the metrics."""
from __future__ import annotations

import numpy as np
import pytest
from conftest import entry_or_skip

from fp8onnx import zoo
from fp8onnx.zoo import wakeword as ww
from fp8onnx.zoo import wakeword_head as wh
from fp8onnx.zoo.fp8eval import fp8_vs_fp32


ZOO_ENTRY = "oww_embedding"   # the conftest fixtures entry and fp32 read it


def test_pipeline_equals_openwakewords_audio_features(entry, fp32):
    from openwakeword.utils import AudioFeatures

    features = AudioFeatures()
    for audio, _ in entry.clips("eval", 4)[1:4]:
        pcm = (np.clip(audio, -1, 1) * 32767).astype(np.int16)
        want = features._get_embeddings(pcm)                          # [windows, 96]
        spec = features._get_melspectrogram(pcm)
        ours = ww.windows(audio)
        assert ours.shape == (len(want), 76, 32, 1) and ours.dtype == np.float32
        np.testing.assert_array_equal(ours[3, :, :, 0], spec[24:100].astype(np.float32))
        got = fp32.run(None, {ww.INPUT: ours})[0].reshape(len(ours), -1)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_clips_are_deterministic_prefixes_with_the_label_cycle(entry):
    small, large = entry.clips("eval", 3), entry.clips("eval", 9)
    for (a, la), (b, lb) in zip(small, large):
        np.testing.assert_array_equal(a, b)
        assert la == lb
    assert [label for _, label in large] == [ww.LABELS[i % len(ww.LABELS)] for i in range(9)]
    calib = entry.clips("calib", 3)
    assert all(len(a) != len(b) or not np.array_equal(a, b) for (a, _), (b, _) in zip(calib, small))
    for audio, _ in large:
        assert audio.dtype == np.float32 and np.abs(audio).max() <= 1.0 and len(audio) > 2.5 * ww.SR


def test_fp32_detects_what_the_clips_say(entry, fp32):
    """The metric means something: FP32 fires each head on most clips holding its phrase and
    rarely on clips without it (so FP8 can lose accuracy in both directions)."""
    n = 48
    clips = entry.clips("eval", n)
    scores = [ww.head_scores(e) for e in entry.embeddings(fp32, "eval", n)]
    for head in ww.HEADS:
        fired = np.array([s[head].max() >= ww.THRESHOLD for s in scores])
        said = np.array([label == head for _, label in clips])
        assert said.sum() >= 5
        assert fired[said].mean() >= 0.5, (head, fired[said].mean())
        assert fired[~said].mean() <= 0.1, (head, fired[~said].mean())
    accuracy = entry.evaluate(n=n)
    assert 0.93 <= accuracy < 1.0
    assert entry.last_details["decision_agreement"] == 1.0 and entry.last_details["embedding_cosine"] > 0.9999


def test_fp8_keeps_detection_and_e5m2_embeds_worst(entry):
    """E4M3 keeps the detections within a few decisions of FP32; E5M2's two mantissa bits
    move the embeddings more than E4M3 (the paper's ranking, measured here)."""
    runs = {fmt: fp8_vs_fp32(entry, calib_n=16, eval_n=32, format=fmt, emit="emulate")
            for fmt in ("e4m3", "e5m2")}
    details = runs["e4m3"]["details"]
    assert runs["e4m3"]["relative_loss"] <= 0.02 and details["decision_agreement"] >= 0.95
    assert 0.9 < details["embedding_cosine"] < 1.0
    assert runs["e5m2"]["details"]["embedding_cosine"] < details["embedding_cosine"]


# -- oww_timer: the timer head quantized, FP32 embeddings as its input ----------------------

@pytest.fixture(scope="module")
def head():
    return entry_or_skip("oww_timer")   # fails, not skips, where the test extras are installed


@pytest.fixture(scope="module")
def head_fp32(head):
    return zoo.ort_session(head.load().SerializeToString())


def test_timer_scores_equal_openwakewords_streaming_model(head, head_fp32):
    """openwakeword's own ``Model.predict_clip`` (streaming, 80 ms chunks, the unmodified
    file at batch 1) gives the scores of our pipeline. Its mel buffer gets 5 frames from the
    first chunk and 8 from each next, so chunk k's last window starts at frame 8k - 71: one
    hop (160 samples) after our window k - 9, and its 34-embedding head input ends there."""
    from openwakeword.model import Model

    audio_clips = ww.clips("eval", 15)
    embed = zoo.ort_session(ww.model_path("embedding_model.onnx").read_bytes())
    for i in (6, 14, 2):
        audio, label = audio_clips[i]
        pcm = (np.clip(audio, -1, 1) * 32767).astype(np.int16)
        model = Model(wakeword_model_paths=[str(ww.model_path("timer_v0.1.onnx"))])
        # the package names this model's classes "0".."6"; 0 is "no timer"
        theirs = np.array([1.0 - p["0"] for p in model.predict_clip(pcm, padding=0)])
        w = ww.windows(audio[160:])
        emb = embed.run(None, {ww.INPUT: w})[0].reshape(len(w), -1)
        ours = ww.score(head_fp32.run(None, {head.io_names()[0]: ww.head_windows(emb, head.window())})[0])
        k = np.arange(42, min(len(theirs), len(ours) + 42))
        assert len(k) > 40
        np.testing.assert_allclose(ours[k - 42], theirs[k], atol=0.01)
        assert (ours.max() >= ww.THRESHOLD) == (theirs[k].max() >= ww.THRESHOLD) == (label == "timer")


def test_timer_model_is_the_package_file_with_a_free_batch(head):
    import json

    import onnx
    import openwakeword

    ours, theirs = head.load(), onnx.load(ww.model_path("timer_v0.1.onnx"))
    assert [n.SerializeToString() for n in ours.graph.node] == [n.SerializeToString() for n in theirs.graph.node]
    assert ours.graph.initializer == theirs.graph.initializer
    assert [d.dim_param or d.dim_value for d in ours.graph.input[0].type.tensor_type.shape.dim] == \
        ["positions", 34, 96]
    assert [d.dim_value for d in theirs.graph.input[0].type.tensor_type.shape.dim] == [1, 34, 96]
    names = openwakeword.model_class_mappings["timer"]
    assert json.loads(ours.graph.output[0].name) == names
    assert {phrase: names[str(c)] for phrase, c in wh.CLASSES.items()} == {
        "set a timer for five minutes": "5_minute_timer", "set a timer for ten minutes": "10_minute_timer"}
    assert set(wh.CLASSES) == set(ww.HEADS["timer"][1])


def test_timer_feeds_are_cached_embeddings_of_disjoint_splits(head):
    calib, evals = list(head.calib_feeds(8)), list(head.eval_feeds(8))
    assert len(calib) == len(evals) == 8
    for split, feeds in (("calib", calib), ("eval", evals)):
        for i, feed in enumerate(feeds):
            (x,) = feed.values()
            n = len(ww.windows(ww.clips(split, i + 1)[i][0]))
            assert x.shape == (max(n - 33, 1), 34, 96) and x.dtype == np.float32
    for a in calib:
        for b in evals:
            (x,), (y,) = a.values(), b.values()
            assert x.shape != y.shape or not np.array_equal(x, y)
    # the disk cache holds what the embedding model computes now
    fresh = zoo.ort_session(ww.model_path("embedding_model.onnx").read_bytes()).run(
        None, {ww.INPUT: ww.windows(ww.clips("eval", 4)[3][0])})[0]
    np.testing.assert_array_equal(wh.embeddings("eval", 3), fresh.reshape(len(fresh), -1))


def test_timer_fp32_detects_what_the_clips_say(head, head_fp32):
    """FP32 fires on most clips reading a timer phrase, (nearly) never on the others, and
    names the duration said: the metric has room to drop both ways."""
    n = 48
    probs = head.probabilities(head_fp32, "eval", n)
    said = np.array([p in wh.CLASSES for p in ww.phrases("eval", n)])
    fired = np.array([ww.score(p).max() >= ww.THRESHOLD for p in probs])
    assert said.sum() == 6 and fired[said].mean() >= 0.5 and fired[~said].mean() <= 0.05
    accuracy = head.evaluate(n=n)
    assert accuracy == np.mean(fired == said) and 0.9 <= accuracy <= 1.0
    details = head.last_details
    assert details["decision_agreement"] == 1.0 and details["mean_abs_score_diff"] == 0.0
    assert details["class_accuracy"] >= 0.75


def test_timer_fp8_keeps_detections_and_e5m2_moves_scores_more(head):
    runs = {fmt: fp8_vs_fp32(head, calib_n=16, eval_n=48, format=fmt) for fmt in ("e4m3", "e5m2")}
    details = runs["e4m3"]["details"]
    assert runs["e4m3"]["relative_loss"] <= 0.03 and details["decision_agreement"] >= 0.95
    assert 0 < details["mean_abs_score_diff"] < 0.01
    assert runs["e5m2"]["details"]["mean_abs_score_diff"] > details["mean_abs_score_diff"]


def test_timer_metric_catches_a_damaged_head(head):
    import onnx

    fp32 = head.evaluate(n=48)
    model, rng = head.load(), np.random.default_rng(0)
    for init in model.graph.initializer:
        if init.name.endswith("weight"):   # the three Gemm weights, noise of their own spread
            w = onnx.numpy_helper.to_array(init)
            init.CopyFrom(onnx.numpy_helper.from_array(
                (w + rng.normal(0, w.std(), w.shape)).astype(np.float32), init.name))
    assert head.evaluate(model, n=48) <= fp32 - 0.2
    assert head.last_details["decision_agreement"] < 0.8
