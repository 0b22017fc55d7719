"""Silero VAD v5 voice-activity detector (``silero_vad/data/silero_vad.onnx`` from ``silero-vad``).

The model is a streaming recurrent net: STFT as a Conv, 4 Conv+ReLU encoder layers, an
LSTM cell (128 units) and a Conv+Sigmoid head, all inside ``If`` branches on the sample
rate (8 or 16 kHz; weights in Constant nodes of the subgraphs). One call reads one
chunk: ``input`` float32 [batch, 64 + 512] (the previous chunk's last 64 samples, then
512 new ones at 16 kHz), ``state`` float32 [2, batch, 128] and ``sr`` int64 scalar; it
returns ``output`` [batch, 1] (speech probability) and ``stateN``, fed to the next call.
A model specialized to 16 kHz (``fix_inputs={"sr": 16000}``, which inlines the Ifs on the
rate and lets calibration see the Convs' activations) has no ``sr`` input: ``stream``
then feeds none (the calibration feeds keep it; the compiler drops fixed inputs).
``stream`` does exactly what silero's ``OnnxWrapper.__call__`` does (zero state and
context at the start, context = last 64 samples of the previous input); a test checks it
against ``OnnxWrapper.audio_forward``. The ONNX file is found with ``find_spec``, never
by importing ``silero_vad``, whose ``__init__`` imports torch.

Real input: speech synthesized by espeak-ng from CPython's documentation prose
(``prose.py``: calibration and evaluation clips read disjoint paragraphs) in several
voices and speeds, resampled to 16 kHz, with gaps that hold silence or real recorded
non-speech sounds that ship with Python and scipy (CPython's ``test/audiodata``
guitar plucks, scipy's ``io/tests/data`` test tone), at varied levels, plus low noise.
Each clip holds two utterances; ``truth`` marks the frames where espeak's waveform is
non-silent (for a sanity check of the FP32 model, not the metric).

Metric: agreement of the speech/non-speech decision (probability >= 0.5) with FP32 over
all frames, as the F1 of the speech class; ``last_details`` adds the frame accuracy
against FP32, the mean absolute probability difference, and the frame accuracy against
the synthesized truth::

    >>> fp8onnx.zoo.get("silero_vad").evaluate()      # doctest: +SKIP
    1.0
"""
from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sysconfig
import tempfile
import zlib
from functools import lru_cache
from pathlib import Path
from types import MappingProxyType
from typing import Iterator, List, Tuple

import numpy as np
import onnx

from . import prose
from .base import Feeds, ZooEntry, ZooSkip, check_split, package_file

__all__ = ["SileroVADEntry", "onnx_path", "stream", "clips", "Clip", "trim_voiced"]

HINT = "silero-vad (pip install silero-vad)"
SCIPY_HINT = "scipy (pip install scipy)"
ESPEAK_HINT = "espeak-ng (apt-get install espeak-ng)"
SR = 16000
CHUNK, CONTEXT = 512, 64           # silero's sizes at 16 kHz
THRESHOLD = 0.5                    # silero's default speech threshold
VOICES = ("en-us", "en", "en+f3", "en+m3", "en-gb-x-rp", "en+f2")
SPEEDS = (135, 160, 185, 210)
MAX_WORDS = 10                     # short utterances: clips of ~8-14 s, ~60% speech

Clip = Tuple[np.ndarray, np.ndarray]   # (float32 audio at 16 kHz, bool speech per frame)


def onnx_path() -> Path:
    return package_file("silero_vad", "data", "silero_vad.onnx", hint=HINT)


def _espeak() -> str:
    exe = shutil.which("espeak-ng")
    if exe is None:
        raise ZooSkip(f"skipped: install {ESPEAK_HINT}")
    return exe


def _read_wav(path: Path) -> Tuple[int, np.ndarray]:
    """(rate, mono float32 in [-1, 1]) of a PCM/float WAV file."""
    import warnings

    from scipy.io import wavfile

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # espeak's and scipy's test headers are loose
        rate, x = wavfile.read(path)
    if x.dtype.kind in "iu":   # full scale of the stored width (uint8 is offset by 128)
        half = 2.0 ** (8 * x.dtype.itemsize - 1)
        x = (x.astype(np.float64) - (half if x.dtype.kind == "u" else 0.0)) / half
    x = x.astype(np.float32)
    return rate, (x.mean(axis=1) if x.ndim == 2 else x)


def _resample(x: np.ndarray, rate: int) -> np.ndarray:
    from math import gcd

    from scipy.signal import resample_poly

    g = gcd(SR, rate)
    return resample_poly(x, SR // g, rate // g).astype(np.float32)


def synthesize(text: str, voice: str, speed: int) -> np.ndarray:
    """espeak-ng's rendering of ``text`` at 16 kHz, float32."""
    with tempfile.TemporaryDirectory() as tmp:
        wav = Path(tmp, "s.wav")
        subprocess.run([_espeak(), "-v", voice, "-s", str(speed), "-w", str(wav), text],
                       check=True, capture_output=True)
        rate, x = _read_wav(wav)
    return _resample(x, rate)


@lru_cache(maxsize=1)
def _noises() -> Tuple[np.ndarray, ...]:
    """Real recorded non-speech sounds shipped with Python and scipy, at 16 kHz (missing
    files are skipped): guitar plucks from CPython's test/audiodata, scipy's test tone."""
    std = Path(sysconfig.get_paths()["stdlib"])
    files = [std / "test" / "audiodata" / "pluck-pcm16.wav"]
    spec = importlib.util.find_spec("scipy")
    if spec is not None and spec.submodule_search_locations:
        root = Path(list(spec.submodule_search_locations)[0], "io", "tests", "data")
        files.append(root / "test-44100Hz-le-1ch-4bytes.wav")
    out = []
    for f in files:
        try:
            rate, x = _read_wav(f)
        except (OSError, ValueError):
            continue
        x = _resample(x, rate)
        out.append(x / (np.abs(x).max() + 1e-9))
    return tuple(out)


def _gap(rng: np.random.Generator, seconds: float, kind: int) -> np.ndarray:
    """A non-speech gap: silence (kind 0) or repeats of a real recorded sound."""
    n = int(seconds * SR)
    out = np.zeros(n, np.float32)
    noises = _noises()
    if kind == 0 or not noises:
        return out
    sound = noises[(kind - 1) % len(noises)]
    pos = int(rng.integers(0, max(1, n // 4)))
    while pos < n:   # plucks or tone bursts at random intervals and levels
        piece = sound[:n - pos] * rng.uniform(0.1, 0.6)
        out[pos:pos + len(piece)] += piece
        pos += len(piece) + int(rng.integers(SR // 20, SR // 3))
    return out


def trim_voiced(x: np.ndarray, margin: float = 0.1) -> np.ndarray:
    """espeak's voiced stretch of ``x`` (see _speech_frames) with ``margin`` seconds either
    side: the utterance without the silence espeak leaves around it."""
    loud = np.flatnonzero(_speech_frames(x))
    if not len(loud):
        return x
    pad = int(margin * SR)
    return x[max(0, loud[0] - pad):loud[-1] + 1 + pad]


def _speech_frames(speech: np.ndarray) -> np.ndarray:
    """Per-sample mask of espeak's voiced stretch (first to last sample above 2% of peak)."""
    loud = np.flatnonzero(np.abs(speech) > 0.02 * np.abs(speech).max())
    mask = np.zeros(len(speech), bool)
    if len(loud):
        mask[loud[0]:loud[-1] + 1] = True
    return mask


def clips(split: str, n: int) -> Tuple[Clip, ...]:
    """The first ``n`` clips of ``split`` (fewer if the prose runs out); clip ``i`` depends
    only on ``split`` and ``i``, so a smaller ``n`` gives a prefix of a larger one."""
    check_split(split)
    count = len(prose.sentences(split, 2 * n)) // 2
    return tuple(_clip(split, i) for i in range(count))


@lru_cache(maxsize=None)
def _clip(split: str, i: int) -> Clip:
    """Gap, utterance, gap, utterance, gap, plus low noise; frame truth = more than half of
    the frame's 512 samples inside an utterance's voiced stretch."""
    sentences = prose.sentences(split, 2 * i + 2)[2 * i:]
    rng = np.random.default_rng(zlib.crc32(f"{split}/{i}".encode()))
    parts, marks = [], []
    for j, text in enumerate(sentences):
        k = 2 * i + j
        gap = _gap(rng, rng.uniform(0.8, 2.5), int(rng.integers(0, 3)))
        speech = synthesize(" ".join(text.split()[:MAX_WORDS]), VOICES[k % len(VOICES)],
                            SPEEDS[(k // 2) % len(SPEEDS)])
        parts += [gap, speech * rng.uniform(0.15, 1.0)]
        marks += [np.zeros(len(gap), bool), _speech_frames(speech)]
    tail = _gap(rng, rng.uniform(0.8, 2.5), int(rng.integers(0, 3)))
    x = np.concatenate(parts + [tail])
    x += rng.normal(0, rng.choice([0.0005, 0.002, 0.005]), len(x)).astype(np.float32)
    mask = np.concatenate(marks + [np.zeros(len(tail), bool)])
    frames = len(x) // CHUNK
    truth = mask[:frames * CHUNK].reshape(frames, CHUNK).mean(axis=1) > 0.5
    return np.clip(x, -1, 1).astype(np.float32), truth


def stream(session, audio: List[np.ndarray], record: bool = False):
    """Run ``session`` chunk by chunk over each clip, carrying state and context as
    silero's OnnxWrapper does; clips run side by side in the batch (shorter ones
    zero-padded, their extra frames dropped).

    Returns per-clip probability arrays [frames]; with ``record``, also per-clip
    (inputs [frames, 576], states [2, frames, 128]) as fed to the model.
    """
    frames = [len(a) // CHUNK for a in audio]
    steps, batch = max(frames), len(audio)
    x = np.zeros((batch, steps * CHUNK), np.float32)
    for b, a in enumerate(audio):
        x[b, :frames[b] * CHUNK] = a[:frames[b] * CHUNK]
    state = np.zeros((2, batch, 128), np.float32)
    context = np.zeros((batch, CONTEXT), np.float32)
    # A model compiled with fix_inputs={"sr": 16000} has no ``sr`` input any more.
    inputs_of = getattr(session, "get_inputs", None)
    sr = {} if inputs_of is not None and "sr" not in {i.name for i in inputs_of()} else {"sr": np.array(SR, np.int64)}
    probs = np.zeros((batch, steps), np.float32)
    inputs = np.zeros((steps, batch, CONTEXT + CHUNK), np.float32) if record else None
    states = np.zeros((steps, 2, batch, 128), np.float32) if record else None
    for t in range(steps):
        inp = np.concatenate([context, x[:, t * CHUNK:(t + 1) * CHUNK]], axis=1)
        if record:
            inputs[t], states[t] = inp, state
        out, state = session.run(["output", "stateN"], {"input": inp, "state": state, **sr})
        probs[:, t] = out[:, 0]
        context = inp[:, -CONTEXT:]
    result = [probs[b, :frames[b]] for b in range(batch)]
    if not record:
        return result
    rec = [(np.ascontiguousarray(inputs[:frames[b], b]),
            np.ascontiguousarray(states[:frames[b], :, b].transpose(1, 0, 2))) for b in range(batch)]
    return result, rec


class SileroVADEntry(ZooEntry):
    """Silero VAD (opset 16, If on the sample rate, LSTM); metric: decision F1 vs FP32."""

    name = "silero_vad"
    domain, family = "audio", "rnn"
    source = "silero-vad (package file silero_vad/data/silero_vad.onnx)"
    install_hint = "pip install silero-vad"
    metric_name = "speech-frame F1 vs FP32 decisions (p >= 0.5)"
    default_eval_n = 16
    requires = (("scipy", SCIPY_HINT),)
    # Deployed at 16 kHz: the If on sr is inlined, so calibration sees the network's tensors.
    compile_options = MappingProxyType({"fix_inputs": {"sr": 16000}})

    def check_available(self) -> None:
        onnx_path()                 # find_spec: importing silero_vad would import torch
        super().check_available()   # scipy
        _espeak()

    def _load(self) -> onnx.ModelProto:
        return onnx.load(onnx_path())

    def clips(self, split: str, n: int) -> Tuple[Clip, ...]:
        self.check_available()
        return clips(split, n)

    def _teacher_forced(self, split: str, n: int) -> Iterator[Feeds]:
        """One feed per clip: its chunks side by side in the batch, each with the state
        the FP32 model carried into it (rows of a batch are independent in this model)."""
        audio = [a for a, _ in self.clips(split, n)]
        _, rec = self._fp32_reference(("record", split, n), lambda s: stream(s, audio, record=True))
        for inputs, states in rec:
            yield {"input": inputs, "state": states, "sr": np.array(SR, np.int64)}

    def calib_feeds(self, n: int) -> Iterator[Feeds]:
        """``n`` calibration clips, one feed each (all chunks of a clip, FP32 states)."""
        return self._teacher_forced("calib", n)

    def eval_feeds(self, n: int) -> Iterator[Feeds]:
        return self._teacher_forced("eval", n)

    def probabilities(self, session, split: str, n: int) -> List[np.ndarray]:
        """Streamed speech probabilities per clip of ``split`` under ``session``."""
        return stream(session, [a for a, _ in self.clips(split, n)])

    def _evaluate(self, session, n: int) -> float:
        split = getattr(self, "split", "eval")
        ref = np.concatenate(self._fp32_reference(("probs", n), lambda s: self.probabilities(s, split, n)))
        got = np.concatenate(self.probabilities(session, split, n))
        truth = np.concatenate([t for _, t in self.clips(split, n)])
        a, b = got >= THRESHOLD, ref >= THRESHOLD
        denom = a.sum() + b.sum()
        f1 = 2 * float((a & b).sum()) / denom if denom else 1.0
        self.last_details = {"frame_agreement": float((a == b).mean()),
                             "mean_abs_prob_diff": float(np.abs(got - ref).mean()),
                             "truth_accuracy": float((a == truth).mean())}
        return f1


def vad_entries():
    return [SileroVADEntry()]
