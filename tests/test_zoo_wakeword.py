"""The oww_embedding zoo entry: openWakeWord's speech-embedding CNN on espeak-ng clips of
prose and wake phrases.

The independent reference is the package's own ``AudioFeatures._get_embeddings`` (its
melspectrogram model, transform and windowing) for the pipeline, and the truth of what
each clip says for the metric."""
from __future__ import annotations

import numpy as np

from fp8onnx.zoo import wakeword as ww
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
