"""The resemblyzer zoo entry: the GE2E speaker encoder that ``resemblyzer`` ships, exported
to ONNX, on espeak-ng speech from CPython documentation prose in eight voices.

Independent references are the package's own: ``VoiceEncoder`` (torch, the shipped
checkpoint) for the embeddings, ``wav_to_mel_spectrogram`` (librosa), ``normalize_volume``,
``compute_partial_slices`` and ``preprocess_wav`` for the preprocessing. Importing
resemblyzer imports webrtcvad, which imports ``pkg_resources``; setuptools 81 and later
have none, so the ``resemblyzer`` fixture supplies the one call webrtcvad makes
(``get_distribution(name).version``) from importlib.metadata when it is missing."""
from __future__ import annotations

import importlib.metadata
import importlib.util
import subprocess
import sys
import types

import numpy as np
import onnx
import pytest

from fp8onnx import zoo
from fp8onnx.zoo import prose
from fp8onnx.zoo import resemblyzer as rz


ZOO_ENTRY = "resemblyzer"   # the conftest fixtures entry and fp32 read it


@pytest.fixture(scope="module")
def resemblyzer(entry):
    """The resemblyzer package itself (see the module docstring for the pkg_resources shim)."""
    with pytest.MonkeyPatch.context() as mp:
        if importlib.util.find_spec("pkg_resources") is None:
            shim = types.ModuleType("pkg_resources")
            shim.get_distribution = lambda name: types.SimpleNamespace(version=importlib.metadata.version(name))
            mp.setitem(sys.modules, "pkg_resources", shim)
        import resemblyzer
        import resemblyzer.audio

        yield resemblyzer


@pytest.fixture(scope="module")
def encoder(resemblyzer):
    return resemblyzer.VoiceEncoder("cpu", verbose=False)


def test_mel_and_volume_equal_resemblyzers(entry, resemblyzer):
    import librosa

    np.testing.assert_allclose(rz.mel_filters(), librosa.filters.mel(sr=16000, n_fft=400, n_mels=40),
                               rtol=1e-5, atol=1e-9)
    for i in (0, 5, 10):                            # three voices
        wav, _ = rz.utterances("eval", i + 1)[i]
        ours, theirs = rz.mel_spectrogram(wav), resemblyzer.wav_to_mel_spectrogram(wav)
        assert ours.shape == theirs.shape == (1 + len(wav) // 160, 40) and ours.dtype == np.float32
        np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-6 * theirs.max())
        assert theirs.max() > 1.0 and np.median(theirs) < 1e-2     # power, not log: a wide range
    raw, _ = rz.speech("eval", 1)                  # espeak's level, ~-21 dBFS: left alone
    assert rz.normalize_volume(raw) is raw and resemblyzer.audio.normalize_volume(raw, -30, increase_only=True) is raw
    quiet = (raw * 0.05).astype(np.float32)          # raised to -30 dBFS
    np.testing.assert_allclose(rz.normalize_volume(quiet),
                               resemblyzer.audio.normalize_volume(quiet, -30, increase_only=True), rtol=1e-6)
    assert np.sqrt(np.mean(rz.normalize_volume(quiet) ** 2)) == pytest.approx(10 ** (-30 / 20), rel=1e-4)


def test_partial_slices_equal_voice_encoders(resemblyzer):
    for n in (100, 16000, 25599, 25600, 40000, 41000, 96123, 160000):
        want = resemblyzer.VoiceEncoder.compute_partial_slices(n, 1.3, 0.75)
        assert rz.partial_slices(n) == want, n


def test_onnx_embeddings_equal_voice_encoder(entry, fp32, encoder):
    """The exported model and embed_utterance against VoiceEncoder.embed_utterance on the
    same audio: partial embeddings, utterance embedding and the partials' count."""
    import torch

    for i in (0, 3, 6, 9):
        wav, _ = rz.utterances("eval", i + 1)[i]
        want, want_parts, slices = encoder.embed_utterance(wav, return_partials=True)
        mels = rz.partials(wav)
        assert mels.shape == (len(slices), 160, 40)
        parts = fp32.run(["embedding"], {"mels": mels})[0]
        np.testing.assert_allclose(parts, want_parts, atol=2e-5)
        np.testing.assert_allclose(rz.embed_utterance(parts), want, atol=2e-5)
        assert (parts >= 0).all() and np.allclose(np.linalg.norm(parts, axis=1), 1, atol=1e-5)
    # Variable length and batch too (the model's time axis is dynamic).
    feed = next(iter(entry.eval_feeds(4)))["mels"][:5, :97]
    with torch.no_grad():
        want = encoder(torch.from_numpy(feed.copy())).numpy()
    np.testing.assert_allclose(fp32.run(["embedding"], {"mels": feed})[0], want, atol=2e-5)


def test_data_close_to_resemblyzers_own_preprocessing(entry, fp32, encoder, resemblyzer):
    """The entry trims espeak's silences at the edges instead of running webrtcvad: the
    embeddings stay those of resemblyzer's full preprocess_wav of the raw speech at the
    same level (the entry adds low noise besides)."""
    cos = []
    for i in range(4):
        raw, _ = rz.speech("eval", i)
        want = encoder.embed_utterance(resemblyzer.preprocess_wav(raw * rz.level("eval", i)))
        got = rz.embed_utterance(fp32.run(["embedding"], {"mels": rz.partials(rz.utterances("eval", i + 1)[i][0])})[0])
        cos.append(float(got @ want))
    assert min(cos) > 0.97, cos      # measured 0.987-1.0 on the first 8


def test_fp32_metric_is_sane_and_can_fail(entry):
    assert entry.evaluate() == pytest.approx(1.0, abs=1e-6)
    d = entry.last_details
    # FP32 tells the eight espeak voices apart: every one of the 48 eval utterances is
    # nearest its own voice's centroid.
    assert d["speaker_accuracy"] == 1.0 and d["speaker_agreement"] == 1.0
    assert d["min_cosine"] == pytest.approx(1.0, abs=1e-6) and d["partial_cosine"] == pytest.approx(1.0, abs=1e-6)

    # Partial embeddings moved to other utterances: measured 0.76, speaker agreement 0.375.
    rolled = entry.evaluate(n=16, session_factory=lambda m: _Wrap(m, lambda o: np.roll(o, len(o) // 2, axis=0)))
    assert rolled < 0.85 and entry.last_details["speaker_agreement"] < 0.7
    # Embedding dimensions shuffled: measured 0.35.
    perm = np.random.default_rng(0).permutation(256)
    assert entry.evaluate(n=16, session_factory=lambda m: _Wrap(m, lambda o: o[:, perm])) < 0.5
    # Noise the size of the embedding's spread on each partial: measured 0.945.
    noisy = entry.evaluate(n=16, session_factory=lambda m: _Wrap(
        m, lambda o: o + np.random.default_rng(0).normal(0, o.std(), o.shape).astype(o.dtype)))
    assert 0.9 < noisy < 0.98 and entry.last_details["partial_cosine"] < 0.85


def test_splits_feeds_and_voices(entry):
    n = entry.default_eval_n
    cal, ev = prose.sentences("calib", 2 * n), prose.sentences("eval", 2 * n)
    assert not set(prose.paragraphs("calib")) & set(prose.paragraphs("eval"))
    assert len(set(cal) & set(ev)) <= 2        # disjoint paragraphs, a rare shared short sentence
    a, b = entry.utterances("calib", 8), entry.utterances("eval", 8)
    assert [v for _, v in a] == [v for _, v in b] == list(range(8))
    assert all(x.shape != y.shape or not np.array_equal(x, y) for (x, _), (y, _) in zip(a, b))
    assert all(x.dtype == np.float32 and 1.5 * 16000 < len(x) < 25 * 16000 for x, _ in a + b)
    assert rz.utterances("eval", 1)[0][0] is b[0][0]   # a smaller n is a prefix (cached)
    feeds = list(entry.calib_feeds(10))
    assert len(feeds) == 3 and all(set(f) == {"mels"} for f in feeds)
    sizes = [len(rz.partials(x)) for x, _ in entry.utterances("calib", 10)]
    assert [f["mels"].shape[0] for f in feeds] == [sum(sizes[:4]), sum(sizes[4:8]), sum(sizes[8:])]
    assert all(f["mels"].shape[1:] == (160, 40) and f["mels"].dtype == np.float32 for f in feeds)
    cal_rows = {r.tobytes() for f in feeds for r in f["mels"]}
    assert not cal_rows & {r.tobytes() for f in entry.eval_feeds(10) for r in f["mels"]}


def test_export_goes_to_the_cache(entry, monkeypatch, tmp_path):
    monkeypatch.setenv("FP8ONNX_CACHE", str(tmp_path))
    fresh = zoo.get("resemblyzer")
    model = fresh.load()
    path = fresh.onnx_path()
    assert path.exists() and path.parent == tmp_path / "resemblyzer"
    assert path.name == f"voice_encoder.{importlib.metadata.version('resemblyzer')}.opset17.v1.onnx"
    weights = rz._weights_path()
    assert tmp_path not in weights.parents and not list(weights.parent.glob("*.onnx"))
    onnx.checker.check_model(model)
    assert {o.version for o in model.opset_import if o.domain in ("", "ai.onnx")} == {17}
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("LSTM") == 3 and ops.count("Gemm") == 1
    dims = lambda v: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]  # noqa: E731
    assert dims(model.graph.input[0]) == ["batch", "frames", 40]
    assert dims(model.graph.output[0]) == ["batch", 256]


def test_uncached_export_without_torch_skips_with_hint(entry, monkeypatch, tmp_path):
    monkeypatch.setenv("FP8ONNX_CACHE", str(tmp_path))
    monkeypatch.setitem(sys.modules, "torch", None)
    e = zoo.get("resemblyzer")
    with pytest.raises(zoo.ZooSkip, match=r"skipped: install torch .*\(pip install torch==2\.13\.0\)"):
        e.check_available()
    with pytest.raises(zoo.ZooSkip):
        e.load()


def test_cached_model_runs_without_torch_or_the_package(entry):
    entry.load()   # the cached ONNX file exists from here on
    code = ("import sys; from fp8onnx import zoo; e = zoo.get('resemblyzer'); e.load(); "
            "assert e.evaluate(n=2) > 0.999; "
            "bad = {'torch', 'resemblyzer', 'librosa', 'webrtcvad'} & set(sys.modules); assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_missing_espeak_skips_with_hint(monkeypatch):
    from fp8onnx.zoo import vad

    monkeypatch.setattr(vad.shutil, "which", lambda name: None)
    with pytest.raises(zoo.ZooSkip, match=r"skipped: install espeak-ng \(apt-get install espeak-ng\)"):
        zoo.get("resemblyzer").evaluate(n=1)


def test_e4m3_compile_keeps_speaker_embeddings(entry):
    import fp8onnx
    from fp8onnx.runtime import InferenceSession

    r = fp8onnx.compile_model(entry.load(), format="e4m3", calibration=list(entry.calib_feeds(8)),
                              emit="emulate")
    assert r.report["summary"]["quantized_by_op"] == {"Gemm": {"e4m3": 1}, "LSTM": {"e4m3": 3}}
    cos = entry.evaluate(r.model, session_factory=InferenceSession)
    # Measured on the 48 eval utterances, 8 calibration utterances: cosine 0.9960, smallest
    # 0.988, every utterance still nearest the voice FP32 puts it with.
    assert 0.99 < cos < 1.0
    assert entry.last_details["min_cosine"] > 0.97 and entry.last_details["speaker_agreement"] == 1.0


class _Wrap:
    """A session that post-processes another session's outputs."""

    def __init__(self, model, fn):
        self.inner, self.fn = zoo.ort_session(model), fn

    def run(self, names, feeds):
        return [self.fn(o) for o in self.inner.run(names, feeds)]
