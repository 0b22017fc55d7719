"""Resemblyzer's GE2E speaker encoder (3-layer LSTM on 40-band mel frames) from ``resemblyzer``.

The ``resemblyzer`` wheel (Apache-2.0) ships ``resemblyzer/pretrained.pt``: the
checkpoint of its ``VoiceEncoder``, a speaker-verification net trained with the GE2E
loss (LSTM 40 -> 256 -> 256 -> 256, then Linear 256 -> 256, ReLU and L2 normalisation
of the last layer's final hidden state). The first ``load()`` rebuilds that module with
torch's CPU build, loads the checkpoint's weights (``model_state``, less the GE2E
loss's ``similarity_weight``/``similarity_bias``), exports it to ONNX at opset 17 and
caches the file in ``cache_dir("resemblyzer")``; later loads need no torch. The package
itself is never imported: its ``audio`` module imports ``webrtcvad``, which imports
``pkg_resources`` (gone from setuptools 81 on), and librosa; the file is found with
``find_spec``.

Input ``mels`` float32 [batch, frames, 40]: mel power spectrogram frames (not log) of
16 kHz audio, 25 ms Hann windows every 10 ms, 40 Slaney mel bands, exactly
``resemblyzer.wav_to_mel_spectrogram`` (librosa's ``melspectrogram``; computed here with
numpy, ``mel_spectrogram``); output ``embedding`` float32 [batch, 256], unit length,
non-negative. An utterance is embedded as resemblyzer's ``embed_utterance`` does
(``embed_utterance`` here): cut into partials of 160 frames (1.6 s) at 1.3 per second,
the partials' embeddings averaged and L2-normalised. The input is power, not log: on the
real data its values span five decades and more (median ~7e-5, max ~10), the range the
first LSTM's input quantizer must cover.

Real input: speech synthesized by espeak-ng (``vad.synthesize``) from sentences of
CPython's documentation prose (``prose.py``: calibration and evaluation read disjoint
paragraphs) by eight espeak voices (accent + voice variant: the "speakers"), at three
speeds. resemblyzer's ``preprocess_wav`` is followed except for its webrtcvad silence
trimming: each utterance is cut to espeak's voiced stretch (plus 0.1 s either side), set
to a random level (espeak's ~-20 dBFS down by up to 30 dB) and normalised as the package
does (``normalize_volume``: quieter than -30 dBFS is raised to it); low noise is added.
One feed holds all partials of ``BATCH`` utterances; ``n`` counts utterances.

Metric: mean cosine similarity of each utterance embedding to FP32's. ``last_details``
adds the smallest such cosine, the mean cosine of the partial embeddings, the
nearest-speaker agreement with FP32 (each utterance assigned to the nearest voice
centroid of the other utterances, leave-one-out, under the model itself) and the
speaker accuracy of those assignments against the true voice (1.0 for FP32 on the
default 48 eval utterances)::

    >>> fp8onnx.zoo.get("resemblyzer").evaluate()      # doctest: +SKIP
    1.0
"""
from __future__ import annotations

import logging
import os
import warnings
import zlib
from functools import lru_cache
from pathlib import Path
from typing import Dict, Iterator, List, Tuple

import numpy as np
import onnx

from . import prose, vad
from .base import Feeds, EXPORT_HINT, ExportedEntry, check_split, keep_export, ort_session, require

__all__ = ["ResemblyzerEntry", "export_encoder", "mel_spectrogram", "mel_filters", "normalize_volume",
           "partial_slices", "partials", "speech", "level", "utterances", "embed_utterance"]

log = logging.getLogger(__name__)

PIP = "pip install torch==2.13.0 resemblyzer"
HINT = f"resemblyzer ({PIP})"
WEIGHTS = ("resemblyzer", "pretrained.pt")
ONNX_NAME = "voice_encoder.{version}.opset17.v1.onnx"   # bump v1 when the export changes
INPUT, OUTPUT = "mels", "embedding"

# resemblyzer/hparams.py
SR = 16000
N_FFT, HOP, N_MELS = 400, 160, 40          # 25 ms windows, 10 ms step
PARTIAL_FRAMES = 160                       # 1.6 s per partial utterance
RATE, MIN_COVERAGE = 1.3, 0.75             # embed_utterance's defaults
TARGET_DBFS = -30                          # audio_norm_target_dBFS
HIDDEN, LAYERS, EMBED = 256, 3, 256
INT16_MAX = 2 ** 15 - 1

VOICES = ("en-us+m1", "en-gb+f2", "en-gb-scotland+m3", "en-029+f4", "en-gb-x-rp+m7",
          "en-us-nyc+f3", "en-gb-x-gbclan+m5", "en+f5")
SPEEDS = (140, 165, 190)
MAX_WORDS = 20                             # ~5-7 s utterances, 5-8 partials each
MARGIN = 0.1                               # seconds kept around espeak's voiced stretch
BATCH = 4                                  # utterances per feed


# --- resemblyzer's preprocessing, in numpy -------------------------------------------------

def normalize_volume(wav: np.ndarray, target_dbfs: float = TARGET_DBFS) -> np.ndarray:
    """resemblyzer.audio.normalize_volume(wav, target_dbfs, increase_only=True)."""
    rms = np.sqrt(np.mean((wav * INT16_MAX) ** 2))
    change = target_dbfs - 20 * np.log10(rms / INT16_MAX)
    return wav if change < 0 else wav * (10 ** (change / 20))


# Slaney's mel scale (librosa's default, htk=False): linear below 1 kHz, log above.
_F_SP, _MIN_LOG_HZ = 200.0 / 3, 1000.0
_MIN_LOG_MEL, _LOGSTEP = _MIN_LOG_HZ / _F_SP, np.log(6.4) / 27.0


def _hz_to_mel(f: np.ndarray) -> np.ndarray:
    f = np.asarray(f, np.float64)
    return np.where(f >= _MIN_LOG_HZ, _MIN_LOG_MEL + np.log(np.maximum(f, 1e-10) / _MIN_LOG_HZ) / _LOGSTEP,
                    f / _F_SP)


def _mel_to_hz(m: np.ndarray) -> np.ndarray:
    m = np.asarray(m, np.float64)
    return np.where(m >= _MIN_LOG_MEL, _MIN_LOG_HZ * np.exp(_LOGSTEP * (m - _MIN_LOG_MEL)), _F_SP * m)


@lru_cache(maxsize=1)
def mel_filters() -> np.ndarray:
    """librosa.filters.mel(sr=16000, n_fft=400, n_mels=40): triangular Slaney filters from
    0 Hz to 8 kHz, area-normalised ("slaney"), [40, 201] float64."""
    fft_freqs = np.linspace(0, SR / 2, 1 + N_FFT // 2)
    mel_f = _mel_to_hz(np.linspace(_hz_to_mel(0.0), _hz_to_mel(SR / 2), N_MELS + 2))
    fdiff = np.diff(mel_f)
    ramps = mel_f[:, None] - fft_freqs[None, :]
    lower = -ramps[:-2] / fdiff[:-1, None]
    upper = ramps[2:] / fdiff[1:, None]
    weights = np.maximum(0, np.minimum(lower, upper))
    return weights * (2.0 / (mel_f[2:] - mel_f[:-2]))[:, None]


def mel_spectrogram(wav: np.ndarray) -> np.ndarray:
    """resemblyzer.wav_to_mel_spectrogram: librosa's power mel spectrogram (centred frames,
    zero padding, periodic Hann window), [frames, 40] float32 with frames = 1 + len // 160."""
    x = np.pad(np.asarray(wav, np.float64), N_FFT // 2)
    count = 1 + (len(x) - N_FFT) // HOP
    idx = np.arange(N_FFT)[None, :] + HOP * np.arange(count)[:, None]
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(N_FFT) / N_FFT)
    power = np.abs(np.fft.rfft(x[idx] * window, axis=1)) ** 2
    return (power @ mel_filters().T).astype(np.float32)


def partial_slices(n_samples: int) -> Tuple[List[slice], List[slice]]:
    """VoiceEncoder.compute_partial_slices(n_samples, rate=1.3, min_coverage=0.75):
    (waveform slices, mel-frame slices) of the 160-frame partials."""
    n_frames = int(np.ceil((n_samples + 1) / HOP))
    step = int(np.round((SR / RATE) / HOP))
    wav_slices, mel_slices = [], []
    for i in range(0, max(1, n_frames - PARTIAL_FRAMES + step + 1), step):
        mel_slices.append(slice(i, i + PARTIAL_FRAMES))
        wav_slices.append(slice(i * HOP, (i + PARTIAL_FRAMES) * HOP))
    last = wav_slices[-1]
    coverage = (n_samples - last.start) / (last.stop - last.start)
    if coverage < MIN_COVERAGE and len(mel_slices) > 1:
        wav_slices, mel_slices = wav_slices[:-1], mel_slices[:-1]
    return wav_slices, mel_slices


def partials(wav: np.ndarray) -> np.ndarray:
    """The mel partials ``embed_utterance`` feeds the encoder: [partials, 160, 40] float32
    (the waveform zero-padded to the last partial's end first, as resemblyzer does)."""
    wav_slices, mel_slices = partial_slices(len(wav))
    end = wav_slices[-1].stop
    if end >= len(wav):
        wav = np.pad(wav, (0, end - len(wav)))
    mel = mel_spectrogram(wav)
    return np.stack([mel[s] for s in mel_slices])


def embed_utterance(partial_embeds: np.ndarray) -> np.ndarray:
    """The utterance embedding from its partials' embeddings: mean, then L2 normalisation."""
    raw = partial_embeds.astype(np.float64).mean(axis=0)
    return raw / np.linalg.norm(raw)


# --- data ----------------------------------------------------------------------------------

Utterance = Tuple[np.ndarray, int]   # (float32 audio at 16 kHz, voice index)


def speech(split: str, i: int) -> Utterance:
    """espeak-ng's raw rendering of utterance ``i`` of ``split`` (before trimming, volume
    and noise): sentence ``i`` of the split's prose, cut to MAX_WORDS words, read by voice
    ``i % 8`` at speed ``SPEEDS[(i // 8) % 3]``."""
    text = prose.sentences(split, i + 1)[i]
    voice = i % len(VOICES)
    return vad.synthesize(" ".join(text.split()[:MAX_WORDS]), VOICES[voice],
                          SPEEDS[(i // len(VOICES)) % len(SPEEDS)]), voice


def _rng(split: str, i: int) -> np.random.Generator:
    return np.random.default_rng(zlib.crc32(f"resemblyzer/{split}/{i}".encode()))


def _gain(rng: np.random.Generator) -> float:
    """An utterance's level: espeak's (~-20 dBFS) down by up to 30 dB; its rng's first draw."""
    return float(rng.uniform(0.03, 1.0))


def level(split: str, i: int) -> float:
    """The gain utterance ``i`` of ``split`` gets before ``normalize_volume``."""
    return _gain(_rng(split, i))


@lru_cache(maxsize=None)
def _utterance(split: str, i: int) -> Utterance:
    """speech(split, i) cut to its voiced stretch, at a random level from espeak's (~-20
    dBFS) down by up to 30 dB, normalised as resemblyzer does (quieter than -30 dBFS:
    raised to it), plus low noise."""
    speech_, voice = speech(split, i)
    rng = _rng(split, i)
    x = normalize_volume(vad.trim_voiced(speech_, MARGIN).astype(np.float64) * _gain(rng))
    x = x + rng.normal(0, rng.choice([0.0, 0.0005, 0.002]), len(x))
    return np.clip(x, -1, 1).astype(np.float32), voice


def utterances(split: str, n: int) -> Tuple[Utterance, ...]:
    """The first ``n`` utterances of ``split`` (fewer if the prose runs out); utterance ``i``
    is sentence ``i`` of the split, voice ``i % 8``, so a smaller ``n`` gives a prefix."""
    check_split(split)
    return tuple(_utterance(split, i) for i in range(len(prose.sentences(split, n))))


@lru_cache(maxsize=None)
def _partials(split: str, i: int) -> np.ndarray:
    return partials(_utterance(split, i)[0])


# --- the model -----------------------------------------------------------------------------

def _weights_path() -> Path:
    from .base import package_file

    return package_file(*WEIGHTS, hint=HINT)


def export_encoder(path: Path) -> Path:
    """Export resemblyzer's VoiceEncoder, weights from the package's checkpoint, to ONNX at
    ``path`` (needs torch; resemblyzer itself is not imported)."""
    torch = require("torch", EXPORT_HINT)
    nn = torch.nn

    class VoiceEncoder(nn.Module):
        """resemblyzer.VoiceEncoder's network and forward()."""

        def __init__(self):
            super().__init__()
            self.lstm = nn.LSTM(N_MELS, HIDDEN, LAYERS, batch_first=True)
            self.linear = nn.Linear(HIDDEN, EMBED)
            self.relu = nn.ReLU()

        def forward(self, mels):
            _, (hidden, _) = self.lstm(mels)
            raw = self.relu(self.linear(hidden[-1]))
            return raw / torch.norm(raw, dim=1, keepdim=True)

    state = torch.load(_weights_path(), map_location="cpu", weights_only=True)["model_state"]
    state = {k: v for k, v in state.items() if not k.startswith("similarity_")}  # GE2E loss only
    net = VoiceEncoder().eval()
    net.load_state_dict(state, strict=True)
    example = torch.from_numpy(_partials("calib", 0)[:2].copy())
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")   # the tracer's notes on LSTM and batch_first
        torch.onnx.export(net, (example,), str(tmp), input_names=[INPUT], output_names=[OUTPUT],
                          dynamic_axes={INPUT: {0: "batch", 1: "frames"}, OUTPUT: {0: "batch"}},
                          opset_version=17, dynamo=False)
        check = torch.from_numpy(np.concatenate([_partials("calib", 1), _partials("calib", 2)])[:, :123].copy())
        want = net(check).numpy()
    got = ort_session(tmp.read_bytes()).run([OUTPUT], {INPUT: check.numpy()})[0]
    model = onnx.load(tmp)
    model.graph.output[0].type.tensor_type.shape.dim[1].dim_value = EMBED   # the tracer names it
    return keep_export(tmp, path, got, want, atol=1e-5, what="voice encoder", model=model)


def _centroid_assignments(emb: np.ndarray, voices: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """(rows whose voice has another utterance, the voice each is nearest): centroids of the
    other utterances of each voice (leave-one-out), by cosine."""
    rows = np.flatnonzero(np.array([(voices == v).sum() >= 2 for v in voices], bool))
    out = np.zeros(len(rows), np.int64)
    for k, i in enumerate(rows):
        best, pick = -np.inf, -1
        for v in np.unique(voices):
            others = (voices == v) & (np.arange(len(voices)) != i)
            if not others.any():
                continue
            c = emb[others].mean(axis=0)
            score = float(c @ emb[i]) / (np.linalg.norm(c) + 1e-12)
            if score > best:
                best, pick = score, v
        out[k] = pick
    return rows, out


class ResemblyzerEntry(ExportedEntry):
    """Resemblyzer's GE2E LSTM speaker encoder; metric: utterance-embedding cosine to FP32."""

    name = "resemblyzer"
    domain, family = "audio", "rnn"
    source = "resemblyzer (package file resemblyzer/pretrained.pt, exported with torch)"
    install_hint = PIP
    metric_name = "mean cosine to FP32 utterance embeddings"
    default_eval_n = 48
    package_model, package_hint = WEIGHTS, HINT
    onnx_name = ONNX_NAME
    requires = (("scipy", vad.SCIPY_HINT),)

    def check_available(self) -> None:
        """ZooSkip unless the checkpoint, scipy and espeak-ng are there and the ONNX file is
        cached or torch can build it."""
        super().check_available()   # the package's checkpoint (find_spec), scipy, then torch
        vad._espeak()

    def export(self, path: Path) -> None:
        export_encoder(path)

    def utterances(self, split: str, n: int) -> Tuple[Utterance, ...]:
        self.check_available()
        return utterances(split, n)

    def _feeds(self, split: str, n: int) -> Iterator[Feeds]:
        """All partials of ``BATCH`` utterances per feed: ``mels`` [partials, 160, 40]."""
        count = len(self.utterances(split, n))
        for start in range(0, count, BATCH):
            yield {INPUT: np.concatenate([_partials(split, i) for i in range(start, min(count, start + BATCH))])}

    def calib_feeds(self, n: int) -> Iterator[Feeds]:
        """``n`` calibration utterances, the partials of 4 to a feed."""
        return self._feeds("calib", n)

    def eval_feeds(self, n: int) -> Iterator[Feeds]:
        return self._feeds("eval", n)

    def embed(self, session, n: int) -> Tuple[np.ndarray, np.ndarray]:
        """(utterance embeddings [n, 256], partial embeddings [partials, 256]) of the scored
        split's first ``n`` utterances under ``session``."""
        split = self.split
        parts = np.concatenate([session.run([OUTPUT], f)[0] for f in self._feeds(split, n)])
        sizes = [len(_partials(split, i)) for i in range(len(utterances(split, n)))]
        bounds = np.cumsum([0] + sizes)
        utt = np.stack([embed_utterance(parts[a:b]) for a, b in zip(bounds[:-1], bounds[1:])])
        return utt, parts

    def _evaluate(self, session, n: int) -> float:
        ref, ref_parts = self._fp32_reference(("emb", n), lambda s: self.embed(s, n))
        got, parts = self.embed(session, n)
        cos = (got * ref).sum(1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(ref, axis=1) + 1e-12)
        pref, parts = ref_parts.astype(np.float64), parts.astype(np.float64)
        pcos = (parts * pref).sum(1) / (np.linalg.norm(parts, axis=1) * np.linalg.norm(pref, axis=1) + 1e-12)
        voices = np.array([v for _, v in utterances(self.split, n)])
        details: Dict[str, float] = {"min_cosine": float(cos.min()), "partial_cosine": float(pcos.mean())}
        rows, mine = _centroid_assignments(got, voices)
        if len(rows):
            _, theirs = _centroid_assignments(ref, voices)
            details["speaker_agreement"] = float((mine == theirs).mean())
            details["speaker_accuracy"] = float((mine == voices[rows]).mean())
        self.last_details = details
        return float(cos.mean())


def resemblyzer_entries():
    return [ResemblyzerEntry()]
