"""The silero_vad zoo entry: streaming exactly as silero's OnnxWrapper, a real VAD on
synthesized speech, teacher-forced feeds equal to the stream, disjoint splits, FP8 loss."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from fp8onnx import zoo
from fp8onnx.zoo import prose
from fp8onnx.zoo import vad


ZOO_ENTRY = "silero_vad"   # the conftest fixtures entry and fp32 read it


def test_stream_matches_silero_onnx_wrapper(entry, fp32):
    torch = pytest.importorskip("torch")
    from silero_vad.utils_vad import OnnxWrapper

    audio = [a for a, _ in entry.clips("eval", 2)]
    ours = vad.stream(fp32, audio)
    wrapper = OnnxWrapper(str(vad.onnx_path()), force_onnx_cpu=True)
    for a, p in zip(audio, ours):
        want = wrapper.audio_forward(torch.from_numpy(a), vad.SR).numpy()[0]
        # audio_forward pads the last partial chunk; the zoo drops it.
        np.testing.assert_allclose(p, want[:len(p)], atol=1e-5)


def test_fp32_is_a_real_vad_and_metric_can_fail(entry):
    assert entry.evaluate(n=8) == 1.0
    d = entry.last_details
    assert d["frame_agreement"] == 1.0 and d["mean_abs_prob_diff"] == 0.0
    assert d["truth_accuracy"] >= 0.9          # measured 0.95 on the 16 eval clips
    truth = np.concatenate([t for _, t in entry.clips("eval", 8)])
    assert 0.4 < truth.mean() < 0.75           # both speech and real non-speech gaps

    class Silent:
        def __init__(self, data):
            self.inner = zoo.ort_session(data)

        def run(self, names, feeds):
            out, state = self.inner.run(names, feeds)
            return [np.zeros_like(out), state]

    assert entry.evaluate(n=4, session_factory=Silent) == 0.0


def test_teacher_forced_feeds_reproduce_the_stream(entry, fp32):
    feeds = list(entry.calib_feeds(2))
    assert len(feeds) == 2
    streamed = vad.stream(fp32, [a for a, _ in entry.clips("calib", 2)])
    for f, p in zip(feeds, streamed):
        assert f["input"].shape == (len(p), 576) and f["state"].shape == (2, len(p), 128)
        assert f["sr"].dtype == np.int64 and f["sr"].shape == ()
        np.testing.assert_allclose(fp32.run(["output"], f)[0][:, 0], p, atol=1e-6)
    assert np.abs(feeds[0]["state"][:, 1:]).max() > 0.1   # real carried state, not zeros


def test_splits_use_different_sentences_and_audio(entry):
    cal, ev = prose.sentences("calib", 16), prose.sentences("eval", 16)
    assert not set(cal) & set(ev)
    a, b = entry.clips("calib", 2), entry.clips("eval", 2)
    assert len(a) == len(b) == 2 and a[0][0].shape != b[0][0].shape
    assert vad.clips("eval", 1)[0][0] is b[0][0]   # a smaller n is a prefix (cached)


def test_e4m3_emulated_keeps_decisions(entry):
    import fp8onnx
    from fp8onnx.runtime import InferenceSession

    r = fp8onnx.compile_model(entry.load(), format="e4m3", calibration=list(entry.calib_feeds(4)),
                              emit="emulate")
    # Both If branches' 6 Convs get FP8 weights (activations inside If bodies stay float).
    assert r.report["summary"]["quantized_by_op"] == {"Conv": {"e4m3": 12}, "LSTM": {"e4m3": 2}}  # weights only: in If branches
    f1 = entry.evaluate(r.model, n=8, session_factory=InferenceSession)
    # Measured on the 16 eval clips: F1 0.994, mean |dp| 0.008.
    assert f1 >= 0.97 and entry.last_details["mean_abs_prob_diff"] < 0.03


def test_missing_espeak_skips_with_hint(monkeypatch):
    # A system package, so not in tests/test_zoo.py's table of pip packages.
    e = zoo.get("silero_vad")
    monkeypatch.setattr(vad.shutil, "which", lambda name: None)
    with pytest.raises(zoo.ZooSkip, match=r"skipped: install espeak-ng \(apt-get install espeak-ng\)"):
        e.evaluate(n=1)


def test_loading_does_not_import_torch():
    code = ("import sys; from fp8onnx import zoo; e = zoo.get('silero_vad'); e.load(); "
            "assert 'torch' not in sys.modules and 'silero_vad' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_fixed_rate_inlines_the_ifs_and_keeps_the_float_outputs(entry, fp32):
    """fix_inputs={"sr": 16000}: the If on the rate and the If on the state's (static)
    first dim are inlined, so the 16 kHz network and its LSTM op sit in the main graph;
    the float outputs equal the original's on real feeds."""
    from fp8onnx.api import prepare
    from fp8onnx.passes import FixInputs

    m = entry.load()
    FixInputs({"sr": 16000})(m)
    m = prepare(m)
    ops = [n.op_type for n in m.graph.node]
    assert [v.name for v in m.graph.input] == ["input", "state"]
    assert ops.count("Conv") == 6 and ops.count("LSTM") == 1   # silero's LSTM is an ONNX LSTM op
    assert ops.count("If") < 6                                 # Ifs on dynamic dims remain
    specialized = zoo.ort_session(m.SerializeToString())
    for feed in entry.calib_feeds(2):
        want = fp32.run(None, feed)
        got = specialized.run(None, {k: v for k, v in feed.items() if k != "sr"})
        for a, b in zip(want, got):
            np.testing.assert_allclose(b, a, rtol=0, atol=1e-6)
    # streaming feeds no sr to the specialized model and gives the same decisions
    audio = [a for a, _ in entry.clips("eval", 1)]
    np.testing.assert_allclose(vad.stream(specialized, audio)[0], vad.stream(fp32, audio)[0], atol=1e-6)


def test_fixed_rate_quantizes_the_activations(entry):
    import fp8onnx
    from fp8onnx.runtime import InferenceSession

    r = fp8onnx.compile_model(entry.load(), fix_inputs={"sr": 16000}, format="e4m3",
                              calibration=list(entry.calib_feeds(4)), emit="emulate")
    # The 6 Convs and the LSTM of the 16 kHz network, now in the main graph: weights and
    # activations (the LSTM's other branch, on the state's shape, is gone with its If).
    assert r.report["summary"]["quantized_by_op"] == {"Conv": {"e4m3": 6}, "LSTM": {"e4m3": 1}}
    assert [(bool(u.weight_uses), bool(u.activation_uses), u.graph_path)
            for u in r.plan.units if u.status != "float"] == [(True, True, "main")] * 7
    assert [v.name for v in r.model.graph.input] == ["input", "state"]
    f1 = entry.evaluate(r.model, n=8, session_factory=InferenceSession)
    # Measured on the 16 eval clips with 32 calibration clips: F1 0.991, mean |dp| 0.010.
    assert f1 >= 0.95 and entry.last_details["mean_abs_prob_diff"] < 0.03
