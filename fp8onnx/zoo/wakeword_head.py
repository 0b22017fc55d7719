"""openWakeWord's "timer" wake-phrase head (``openwakeword/resources/models/timer_v0.1.onnx``
from ``openwakeword`` 0.4.0, the last release that ships its models in the wheel).

Of the package's heads this one has the most to quantize: a PyTorch export (opset 13) of
Flatten, three Gemm layers each followed by ReLU (3264 -> 128 -> 128 -> 7, 435k weights,
the largest head), and a Softmax over seven classes: no timer, then 1, 5, 10, 20, 30 minute
and 1 hour timers (the class names are the output's name). It reads the last 34 speech
embeddings (3.4 s of audio), more than any other head. ``alexa`` and ``weather`` are the same MLP
over 16 / 22 embeddings with one sigmoid output; ``hey_marvin`` and ``hey_jarvis`` add
decomposed LayerNorms (jarvis also an ``If``-gated verifier MLP that runs only above 0.5,
so calibration would barely reach it); ``hey_mycroft``, an LSTM, misses espeak's speech.

The pipeline is openwakeword's (a test checks it against the package's streaming
``Model.predict``): the clips, melspectrogram and embedding windows of ``wakeword.py``,
with the FP32 embedding CNN computing the head's input; the head runs at every position of
a clip (``wakeword.head_windows``). The file fixes the batch dimension to 1; the entry
makes it free (nothing else changes), so one feed holds all positions of a clip. The
embeddings are the expensive part: they are computed once per clip and kept in
``cache_dir("oww_timer")``, named after a hash of the embedding CNN's input windows and
the package version.

Real input: ``wakeword.clips``: espeak-ng reading CPython documentation prose in six voices
and four speeds, one clip in eight also reading "set a timer for five / ten minutes", the
others another wake phrase or nothing; calibration and evaluation clips read disjoint
paragraphs.

Metric: detection accuracy per clip against truth, as ``oww_embedding`` defines it: the
head's score (1 - P(no timer)) reaching 0.5 somewhere in a clip holding the timer phrase,
nowhere in the others. ``last_details`` adds agreement with FP32's decisions, the mean
absolute score difference and, over the timer clips detected, how often the class at the
peak is the duration said (5 or 10 minutes)::

    >>> fp8onnx.zoo.get("oww_timer").evaluate()      # doctest: +SKIP
    0.96...
"""
from __future__ import annotations

import hashlib
import os
from functools import lru_cache
from typing import Dict, Iterator, List

import numpy as np
import onnx

from . import vad
from . import wakeword as ww
from .base import Feeds, ZooEntry, cache_dir, check_split, ort_session, package_version

__all__ = ["WakeWordHeadEntry", "CLASSES", "embeddings", "features"]

HEAD = "timer"
#: The class each timer phrase asks for (the model's output name maps 2 -> "5_minute_timer").
CLASSES: Dict[str, int] = {"set a timer for five minutes": 2, "set a timer for ten minutes": 3}
POSITIONS = "positions"              # the freed batch dimension: a clip's head positions


@lru_cache(maxsize=1)
def _embedder():
    return ort_session(ww.model_path("embedding_model.onnx").read_bytes())


@lru_cache(maxsize=None)
def embeddings(split: str, i: int) -> np.ndarray:
    """FP32 [windows, 96] embeddings of clip ``i`` of ``split``, from the disk cache when
    the same audio was embedded before by the same package version."""
    check_split(split)
    # Keyed by the embedding CNN's own input (not the audio), so a change anywhere in the
    # feature pipeline (melspectrogram, scaling, windowing) misses the cache.
    w = ww._windows(split, i)     # shared with oww_embedding in one process
    key = hashlib.sha1(w.tobytes() + package_version("openwakeword").encode()).hexdigest()[:24]
    path = cache_dir("oww_timer") / f"emb-{key}.npy"
    if path.exists():
        return np.load(path)
    emb = _embedder().run(None, {ww.INPUT: w})[0].reshape(len(w), -1).astype(np.float32)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        np.save(f, emb)
    os.replace(tmp, path)     # atomic: a concurrent reader never sees half a file
    return emb


def features(split: str, i: int, n: int = 34) -> np.ndarray:
    """The head's input at every position of clip ``i``: [positions, n, 96]."""
    return ww.head_windows(embeddings(split, i), n)


class WakeWordHeadEntry(ZooEntry):
    """openWakeWord's timer head (MLP over 34 embeddings); metric: detection accuracy."""

    name = "oww_timer"
    domain, family = "audio", "mlp"
    source = "openwakeword 0.4.0 (package file openwakeword/resources/models/timer_v0.1.onnx)"
    install_hint = ww.PIP
    metric_name = "timer wake-phrase detection accuracy per clip vs truth (FP32 embeddings, score >= 0.5)"
    default_eval_n = 128
    package_model, package_hint = ww.MODELS + (ww.HEADS[HEAD][0],), ww.HINT
    requires = (("scipy", vad.SCIPY_HINT),)

    def check_available(self) -> None:
        super().check_available()   # the model file (find_spec), then scipy
        vad._espeak()

    def _load(self) -> onnx.ModelProto:
        model = super()._load()
        for value in (model.graph.input[0], model.graph.output[0]):
            value.type.tensor_type.shape.dim[0].dim_param = POSITIONS
        onnx.checker.check_model(model)
        return model

    def window(self) -> int:
        """How many embeddings the head reads (34)."""
        return self._proto().graph.input[0].type.tensor_type.shape.dim[1].dim_value

    def _feeds(self, split: str, n: int) -> Iterator[Feeds]:
        inp, window = self.io_names()[0], self.window()
        for i in range(len(ww.clips(split, n))):
            yield {inp: features(split, i, window)}

    def calib_feeds(self, n: int) -> Iterator[Feeds]:
        """One feed per calibration clip: the head's input at all its positions."""
        return self._feeds("calib", n)

    def eval_feeds(self, n: int) -> Iterator[Feeds]:
        return self._feeds("eval", n)

    def probabilities(self, session, split: str, n: int) -> List[np.ndarray]:
        """Per clip of ``split``, the [positions, 7] class probabilities under ``session``."""
        return [session.run(None, feed)[0] for feed in self._feeds(split, n)]

    def _evaluate(self, session, n: int) -> float:
        split = getattr(self, "split", "eval")
        truth = ww.phrases(split, n)
        ref = self._fp32_reference(("probs", n), lambda s: self.probabilities(s, split, n))
        got = self.probabilities(session, split, n)
        right = agree = classed = timers = 0
        diff = []
        for phrase, g, r in zip(truth, got, ref):
            s, s32 = ww.score(g), ww.score(r)
            fired, fired32 = bool(s.max() >= ww.THRESHOLD), bool(s32.max() >= ww.THRESHOLD)
            said = phrase in CLASSES
            right += fired == said
            agree += fired == fired32
            diff.append(float(np.abs(s - s32).mean()))
            if said and fired:
                timers += 1
                classed += int(np.argmax(g[int(np.argmax(s)), 1:])) + 1 == CLASSES[phrase]
        self.last_details = {"decision_agreement": agree / len(got), "mean_abs_score_diff": float(np.mean(diff)),
                             "class_accuracy": classed / timers if timers else float("nan"),
                             "timer_clips_detected": timers, "clips": len(got)}
        return right / len(got)

