"""openWakeWord's speech-embedding CNN (``openwakeword/resources/models/embedding_model.onnx``
from ``openwakeword`` 0.4.0, the last release that ships its models in the wheel).

The model is Google's ``speech_embedding`` network as openWakeWord deploys it: a tf2onnx
export (opset 13, NHWC input with a dynamic batch) of 20 Conv layers with LeakyReLU,
``Max`` clamps, MaxPool and one BatchNormalization, mapping 76 frames of a 32-band log-mel
spectrogram (0.775 s of audio) to a 96-dimensional embedding. openWakeWord's wake-word
models are small heads over the last 16-34 of these embeddings, so every head reads what
this CNN computes: it is the audio CNN of the zoo. (``oww_timer``, in ``wakeword_head.py``,
quantizes one head instead, on these clips.)

The pipeline is openwakeword's ``AudioFeatures._get_embeddings`` (a test checks it against
the package): 16-bit PCM at 16 kHz, ``melspectrogram.onnx`` (FP32), ``x / 10 + 2``, windows
of 76 frames every 8 frames (80 ms), then the model under test. Five of the package's
heads (FP32) score each clip: ``alexa``, ``hey_jarvis``, ``hey_marvin``, ``weather``
("what's the weather ...") and ``timer`` (a 7-way softmax; its score is 1 - P(no timer));
a head detects its phrase where its score, over the clip's sliding windows, reaches 0.5
(openwakeword's default threshold). ``hey_mycroft`` is left out: FP32 misses espeak's
rendering of it.

Real input: clips read by espeak-ng (``vad.synthesize``) in six voices and four speeds:
words of CPython documentation prose (``prose.py``: calibration and evaluation clips read
disjoint paragraphs) and, in five of every eight clips, one wake phrase before or after
them, with gaps of silence or real recorded non-speech sound (``vad._gap``), varied levels
and low noise. The truth of a clip is the phrase it holds (or none).

Metric: detection accuracy over (clip, head) pairs against that truth: a clip with "hey
jarvis" must trigger ``hey_jarvis`` and no other head. ``last_details`` adds the accuracy
of the decisions against FP32's, the mean absolute head-score difference and the mean
cosine of the embeddings to FP32's::

    >>> fp8onnx.zoo.get("oww_embedding").evaluate()      # doctest: +SKIP
    0.98...
"""
from __future__ import annotations

import zlib
from functools import lru_cache
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Tuple

import numpy as np

from . import prose, vad
from .base import Feeds, ZooEntry, check_split, ort_session, package_file

__all__ = ["WakeWordEmbeddingEntry", "HEADS", "clips", "phrases", "windows", "head_windows", "score", "head_scores"]

PIP = "pip install openwakeword==0.4.0"
HINT = f"openwakeword ({PIP})"  # 0.4.0: later releases download their models at run time
MODELS = ("openwakeword", "resources", "models")
INPUT = "input_1"
SR = vad.SR
WINDOW, STEP = 76, 8                 # AudioFeatures._get_embeddings' defaults
THRESHOLD = 0.5                      # openwakeword's default detection threshold
#: head -> (model file, phrases espeak reads for it)
HEADS: Dict[str, Tuple[str, Tuple[str, ...]]] = {
    "alexa": ("alexa_v0.1.onnx", ("alexa",)),
    "hey_jarvis": ("hey_jarvis_v0.1.onnx", ("hey jarvis",)),
    "hey_marvin": ("hey_marvin_v0.1.onnx", ("hey marvin",)),
    "weather": ("weather_v0.1.onnx", ("what's the weather like today", "what is the weather")),
    "timer": ("timer_v0.1.onnx", ("set a timer for five minutes", "set a timer for ten minutes")),
}
#: What clip i holds: LABELS[i % 8] (None: prose only).
LABELS = ("alexa", "hey_jarvis", None, "hey_marvin", "weather", None, "timer", None)
VOICES = vad.VOICES
SPEEDS = (140, 160, 175, 190)
PROSE_WORDS = (3, 9)                 # words of prose per clip, drawn in this range
LEAD = 2.0                           # seconds of quiet before each clip: the stream's history

Clip = Tuple[np.ndarray, Optional[str]]   # (float32 audio at 16 kHz in [-1, 1], head or None)


def model_path(name: str) -> Path:
    return package_file(*MODELS, name, hint=HINT)


@lru_cache(maxsize=1)
def _melspec():
    return ort_session(model_path("melspectrogram.onnx").read_bytes())


@lru_cache(maxsize=None)
def _head(name: str):
    return ort_session(model_path(HEADS[name][0]).read_bytes())


def windows(audio: np.ndarray) -> np.ndarray:
    """The embedding model's input for ``audio`` (float32 in [-1, 1] at 16 kHz), as
    openwakeword's ``AudioFeatures._get_embeddings`` builds it: [windows, 76, 32, 1]."""
    pcm = (np.clip(audio, -1, 1) * 32767).astype(np.int16).astype(np.float32)[None]
    spec = np.squeeze(_melspec().run(None, {"input": pcm})[0]) / 10 + 2
    starts = range(0, spec.shape[0] - WINDOW + 1, STEP)
    return np.stack([spec[s:s + WINDOW] for s in starts])[..., None].astype(np.float32)


def head_windows(embeddings: np.ndarray, n: int) -> np.ndarray:
    """A head's inputs at every position of a clip's [windows, 96] embeddings: [positions,
    n, 96]. A head that reads more embeddings than the clip has sees the first one repeated
    before it: the clip's quiet lead, as a stream's history would hold."""
    if len(embeddings) < n:
        embeddings = np.concatenate([np.repeat(embeddings[:1], n - len(embeddings), 0), embeddings])
    return np.stack([embeddings[t - n:t] for t in range(n, len(embeddings) + 1)]).astype(np.float32)


def score(probs: np.ndarray) -> np.ndarray:
    """A head's wake score from its [positions, classes] output: the sigmoid of a one-phrase
    head, 1 - P(class 0, no phrase) of a multi-class one (timer)."""
    return probs[:, 0] if probs.shape[1] == 1 else 1.0 - probs[:, 0]


def head_scores(embeddings: np.ndarray) -> Dict[str, np.ndarray]:
    """Each head's score at every position of a clip's [windows, 96] embeddings (see
    head_windows)."""
    out = {}
    for name in HEADS:
        session = _head(name)
        inp = session.get_inputs()[0]
        stack = head_windows(embeddings, inp.shape[1])
        out[name] = score(np.concatenate([session.run(None, {inp.name: row[None]})[0] for row in stack]))
    return out


@lru_cache(maxsize=None)
def _spoken(split: str, i: int) -> Tuple[np.ndarray, Optional[str], Optional[str]]:
    """Clip ``i`` of ``split``: (audio, head or None, the wake phrase read or None)."""
    label, phrase = LABELS[i % len(LABELS)], None
    rng = np.random.default_rng(zlib.crc32(f"wakeword/{split}/{i}".encode()))
    voice, speed = VOICES[i % len(VOICES)], SPEEDS[(i // len(VOICES)) % len(SPEEDS)]
    words = prose.sentences(split, i + 1)[i].split()[:int(rng.integers(*PROSE_WORDS, endpoint=True))]
    parts = [vad.synthesize(" ".join(words), voice, speed)]
    if label is not None:
        options = HEADS[label][1]
        phrase = options[int(rng.integers(len(options)))]
        gap = vad._gap(rng, rng.uniform(0.2, 0.7), int(rng.integers(0, 3)))
        said = vad.synthesize(phrase, voice, speed)
        parts = [said, gap, parts[0]] if rng.random() < 0.5 else [parts[0], gap, said]
    lead = vad._gap(rng, LEAD, int(rng.integers(0, 3))) * 0.3
    tail = vad._gap(rng, rng.uniform(0.5, 1.2), 0)
    x = np.concatenate([lead] + parts + [tail]) * rng.uniform(0.2, 1.0)
    x += rng.normal(0, rng.choice([0.0005, 0.002, 0.005]), len(x))
    return np.clip(x, -1, 1).astype(np.float32), label, phrase


def _clip(split: str, i: int) -> Clip:
    return _spoken(split, i)[:2]


def phrases(split: str, n: int) -> Tuple[Optional[str], ...]:
    """The wake phrase each of the first ``n`` clips of ``split`` reads (None: prose only)."""
    check_split(split)
    return tuple(_spoken(split, i)[2] for i in range(len(prose.sentences(split, n))))


def clips(split: str, n: int) -> Tuple[Clip, ...]:
    """The first ``n`` clips of ``split`` (fewer if the prose runs out); clip ``i`` depends
    only on ``split`` and ``i``, so a smaller ``n`` gives a prefix of a larger one."""
    check_split(split)
    return tuple(_clip(split, i) for i in range(len(prose.sentences(split, n))))


@lru_cache(maxsize=None)
def _windows(split: str, i: int) -> np.ndarray:
    return windows(_clip(split, i)[0])


class WakeWordEmbeddingEntry(ZooEntry):
    """openWakeWord's speech-embedding CNN; metric: wake-word detection accuracy."""

    name = "oww_embedding"
    domain, family = "audio", "cnn"
    source = "openwakeword 0.4.0 (package file openwakeword/resources/models/embedding_model.onnx)"
    install_hint = PIP
    metric_name = "wake-word detection accuracy over (clip, head) vs truth (5 FP32 heads, score >= 0.5)"
    default_eval_n = 64
    package_model, package_hint = MODELS + ("embedding_model.onnx",), HINT
    requires = (("scipy", vad.SCIPY_HINT),)

    def check_available(self) -> None:
        super().check_available()   # the model file (find_spec), then scipy
        vad._espeak()

    def clips(self, split: str, n: int) -> Tuple[Clip, ...]:
        self.check_available()
        return clips(split, n)

    def _feeds(self, split: str, n: int) -> Iterator[Feeds]:
        for i in range(len(self.clips(split, n))):
            yield {INPUT: _windows(split, i)}

    def calib_feeds(self, n: int) -> Iterator[Feeds]:
        """One feed per calibration clip: all its 76-frame windows in the batch."""
        return self._feeds("calib", n)

    def eval_feeds(self, n: int) -> Iterator[Feeds]:
        return self._feeds("eval", n)

    def embeddings(self, session, split: str, n: int) -> List[np.ndarray]:
        """Per clip of ``split``, [windows, 96] embeddings under ``session``."""
        out = []
        for feed in self._feeds(split, n):
            y = session.run(None, feed)[0]
            out.append(y.reshape(len(y), -1))
        return out

    def _evaluate(self, session, n: int) -> float:
        split = getattr(self, "split", "eval")
        labels = [label for _, label in self.clips(split, n)]
        ref = self._fp32_reference(("emb", n), lambda s: self.embeddings(s, split, n))
        ref_scores = self._fp32_reference(("scores", n), lambda s: [head_scores(e) for e in ref])
        got = self.embeddings(session, split, n)
        got_scores = [head_scores(e) for e in got]
        right = agree = pairs = 0
        diff = []
        for label, g, r in zip(labels, got_scores, ref_scores):
            for head in HEADS:
                fired, fired32 = bool(g[head].max() >= THRESHOLD), bool(r[head].max() >= THRESHOLD)
                right += fired == (head == label)
                agree += fired == fired32
                pairs += 1
                diff.append(np.abs(g[head] - r[head]).mean())
        cos = [float(np.mean(np.sum(a * b, 1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-12)))
               for a, b in zip(got, ref)]
        self.last_details = {"decision_agreement": agree / pairs, "mean_abs_score_diff": float(np.mean(diff)),
                             "embedding_cosine": float(np.mean(cos)), "pairs": pairs}
        return right / pairs


def wakeword_entries():
    from .wakeword_head import WakeWordHeadEntry   # it imports this module

    return [WakeWordEmbeddingEntry(), WakeWordHeadEntry()]
