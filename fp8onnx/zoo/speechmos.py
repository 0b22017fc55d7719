"""Microsoft's speech-quality predictors DNSMOS P.835 (plain and personalized) and PLCMOS v2
(``speechmos`` wheel).

``dnsmos``: ``speechmos/dnsmos_models/sig_bak_ovr.onnx``, the DNSMOS P.835 model
(keras2onnx, opset 12, 287k weights): the STFT as two 1-D Convs (real and imaginary DFT
kernels, 161 x 320), magnitude and log power in the graph (Mul/Add/Sqrt/Pow/Max/Log),
7 Conv 3x3 + ReLU with 3 MaxPools, a global ReduceMax and 3 dense layers (MatMul+Add).
Input ``input_1`` float32 [N, 144160]: 9.01 s of 16 kHz audio in [-1, 1]; output
``Identity:0`` [N, 3]: raw SIG, BAK, OVRL. speechmos's ``DNSMOS.__call__`` is followed
exactly (``dnsmos_scores``): a clip shorter than 9.01 s is doubled until it is long
enough, cut into 9.01 s segments every second, the raw outputs mapped through the
package's P.835 polynomials (``get_polyfit_val``, not personalized) and averaged over
segments. The P.808 mel model speechmos also runs is not in the zoo: ranking noise levels
is not its task (FP32 orders 74% of the pairs, and a copy with every weight perturbed by
0.3 of its std orders 87%), so that metric could not tell a worse model from a better one.

``pdnsmos``: ``speechmos/pdnsmos_models/sig_bak_ovr.onnx``, personalized DNSMOS P.835:
the same network trained anew to also penalise interfering talkers, with its own
(cubic) polynomials (``get_polyfit_val`` with ``is_personalized_MOS``); the same clips,
segments and metric as ``dnsmos``. FP32 ranks 0.833 of the default pairs by BAK.

``plcmos``: ``speechmos/plcmos_models/plcmos_v2.onnx``, the PLCMOS v2 packet-loss
concealment rater (PyTorch export, opset 11, 299k weights): 4 Conv + LeakyReLU with 3
MaxPools, 2 GRU layers, then 12 Gemm + LeakyReLU layers that also read a rater embedding,
and a Sigmoid scaled to the MOS range. Inputs
``degraded_audio`` float32 [B, 1, frames, 257] (log power of a 512-point Hamming STFT,
hop 256, divided by 20: speechmos's ``stft_transform``, here ``plc_features``) and
``rater_embed`` float32 [B, 64]; output ``plcmos`` [B]. speechmos averages 15 runs with
random rater embeddings from ``np.random.normal``; here the 15 embeddings come from
``np.random.RandomState(RATER_SEED)`` (the same draws as speechmos after
``np.random.seed(RATER_SEED)``) and run as one batch of 15.

Real input: speech synthesized by espeak-ng (``vad.synthesize``) from CPython's
documentation prose (``prose.py``: calibration and evaluation read disjoint paragraphs)
in six voices at four speeds, sentences trimmed to their voiced stretch and joined with
0.3 s pauses, at a random level. Each utterance is degraded in five known, ordered
amounts (``LEVELS``): for DNSMOS (9.01 s clips) real recorded non-speech sound added at
SNR clean / 30 / 20 / 10 / 0 dB (CPython's guitar plucks or scipy's test tone, as in
``vad``); for PLCMOS (6 s clips) packet loss, 0 / 5 / 10 / 20 / 30 % of 20 ms frames
zeroed (nested: a higher rate loses a superset of frames). ``n`` counts clips; clip
``k`` is utterance ``k // 5`` at level ``k % 5``.

Metric: pairwise ranking accuracy against the known degradation: over all pairs of
clips of one utterance, the share where the less degraded clip scores strictly higher
(DNSMOS: BAK, the background-noise score; PLCMOS: its MOS). On the default 60 eval clips
(12 utterances, 120 pairs) FP32 scores 0.925 (DNSMOS BAK; OVRL 0.90, SIG 0.675: noise is
not what SIG rates) and 1.0 (PLCMOS). ``last_details`` adds the agreement with FP32 (mean absolute
score difference, Pearson r) and, for DNSMOS, the ranking accuracy of OVRL and SIG::

    >>> fp8onnx.zoo.get("plcmos").evaluate()      # doctest: +SKIP
    1.0
"""
from __future__ import annotations

import itertools
import zlib
from functools import lru_cache
from typing import Dict, Iterator, List, Sequence, Tuple

import numpy as np

from . import prose, vad
from .base import Feeds, ZooEntry, ZooSkip, check_split

__all__ = ["DNSMOSEntry", "PersonalizedDNSMOSEntry", "PLCMOSEntry", "speech", "add_noise",
           "drop_packets", "dnsmos_clips", "plcmos_clips", "dnsmos_segments", "dnsmos_polyfit",
           "dnsmos_scores", "pdnsmos_scores", "plc_features", "rater_embeddings", "plcmos_scores",
           "rank_accuracy"]

PIP = "pip install speechmos==0.0.1.1"
HINT = f"speechmos ({PIP})"
SR = vad.SR
LEVELS = 5                               # degradations per utterance, best first
SNRS = (None, 30.0, 20.0, 10.0, 0.0)     # DNSMOS: additive real sound, None = clean
LOSS_RATES = (0.0, 0.05, 0.10, 0.20, 0.30)  # PLCMOS: share of 20 ms frames zeroed
PACKET = 320                             # 20 ms at 16 kHz
INPUT_LENGTH = 9.01                      # speechmos/dnsmos.py: seconds per DNSMOS segment
SEGMENT = int(INPUT_LENGTH * SR)         # 144160 samples
PLC_SECONDS = 6.0
SENTENCES = 6                            # prose sentences reserved per utterance
RATER_ROUNDS, RATER_SEED = 15, 0         # speechmos PLCMOS embed_rounds; our fixed seed
# speechmos/dnsmos.py get_polyfit_val: raw (SIG, BAK, OVRL) -> P.835 MOS
POLY_SIG = (-0.08397278, 1.22083953, 0.0052439)
POLY_BAK = (-0.13166888, 1.60915514, -0.39604546)
POLY_OVR = (-0.06766283, 1.11546468, 0.04602535)
P835 = (POLY_SIG, POLY_BAK, POLY_OVR)
# ... and with is_personalized_MOS (the personalized model's own polynomials)
P835_PERSONALIZED = ((-0.01019296, 0.02751166, 1.19576786, -0.24348726),
                     (-0.04976499, 0.44276479, -0.1644611, 0.96883132),
                     (-0.00533021, 0.005101, 1.18058466, -0.11236046))

Clip = Tuple[np.ndarray, int, int]       # (float32 audio at 16 kHz, utterance, level)


@lru_cache(maxsize=None)
def speech(split: str, i: int, seconds: float = INPUT_LENGTH) -> np.ndarray:
    """Utterance ``i`` of ``split``: espeak sentences (voiced stretch, 0.3 s pauses) until
    ``seconds`` are filled, cut to exactly that many samples, at a random level."""
    check_split(split)
    want = int(seconds * SR)
    texts = prose.sentences(split, SENTENCES * (i + 1))[SENTENCES * i:]
    voice, speed = vad.VOICES[i % len(vad.VOICES)], vad.SPEEDS[(i // 2) % len(vad.SPEEDS)]
    parts: List[np.ndarray] = []
    for text in texts:
        parts += [vad.trim_voiced(vad.synthesize(text, voice, speed)), np.zeros(int(0.3 * SR), np.float32)]
        if sum(map(len, parts)) >= want:
            break
    x = np.concatenate(parts)[:want]
    x = np.pad(x, (0, want - len(x)))     # only if the prose ran short
    gain = np.random.default_rng(zlib.crc32(f"speechmos/{split}/{i}".encode())).uniform(0.25, 1.0)
    # peak at most 0.5: headroom so that the 0 dB mix rarely needs clipping to [-1, 1]
    return (x * gain / (np.abs(x).max() + 1e-9) * 0.5).astype(np.float32)


def add_noise(clean: np.ndarray, noise: np.ndarray, snr_db) -> np.ndarray:
    """``clean`` plus ``noise`` scaled to ``snr_db`` (mean power over the clip; None =
    clean), clipped to [-1, 1] as DNSMOS requires."""
    if snr_db is None:
        return clean.copy()
    scale = np.sqrt(np.mean(clean.astype(np.float64) ** 2) / np.mean(noise.astype(np.float64) ** 2)
                    / 10 ** (snr_db / 10))
    return np.clip(clean + scale * noise, -1, 1).astype(np.float32)


def drop_packets(clean: np.ndarray, order: np.ndarray, rate: float) -> np.ndarray:
    """``clean`` with the first ``rate`` share of the 20 ms packets in ``order`` zeroed."""
    out = clean.copy()
    for p in order[:int(round(rate * len(order)))]:
        out[p * PACKET:(p + 1) * PACKET] = 0.0
    return out


@lru_cache(maxsize=None)
def _dnsmos_group(split: str, u: int) -> Tuple[np.ndarray, ...]:
    clean = speech(split, u)
    rng = np.random.default_rng(zlib.crc32(f"dnsmos/{split}/{u}".encode()))
    # guitar plucks or the test tone, alternately (vad's real recorded sounds)
    noise = vad._gap(rng, len(clean) / SR + 0.1, 1 + u % 2)[:len(clean)]
    if not noise.any():   # a Python built without its test package and no scipy test data
        raise ZooSkip("skipped: no recorded sounds (CPython's test/audiodata, scipy's io test data)")
    return tuple(add_noise(clean, noise, snr) for snr in SNRS)


@lru_cache(maxsize=None)
def _plcmos_group(split: str, u: int) -> Tuple[np.ndarray, ...]:
    clean = speech(split, u)[:int(PLC_SECONDS * SR)]
    rng = np.random.default_rng(zlib.crc32(f"plcmos/{split}/{u}".encode()))
    order = rng.permutation(len(clean) // PACKET)
    return tuple(drop_packets(clean, order, rate) for rate in LOSS_RATES)


def _clips(group, split: str, n: int) -> Tuple[Clip, ...]:
    check_split(split)
    return tuple((group(split, k // LEVELS)[k % LEVELS], k // LEVELS, k % LEVELS) for k in range(n))


def dnsmos_clips(split: str, n: int) -> Tuple[Clip, ...]:
    """The first ``n`` DNSMOS clips of ``split`` (clip k: utterance k // 5 at SNRS[k % 5])."""
    return _clips(_dnsmos_group, split, n)


def plcmos_clips(split: str, n: int) -> Tuple[Clip, ...]:
    """The first ``n`` PLCMOS clips of ``split`` (clip k: utterance k // 5, LOSS_RATES[k % 5])."""
    return _clips(_plcmos_group, split, n)


def dnsmos_segments(audio: np.ndarray) -> np.ndarray:
    """[segments, 144160] float32: speechmos's doubling of short audio and 9.01 s windows
    every second (float arithmetic kept as the package has it: a window one sample short
    is skipped)."""
    while len(audio) < SEGMENT:
        audio = np.append(audio, audio)
    hops = int(np.floor(len(audio) / SR) - INPUT_LENGTH) + 1
    segs = [audio[int(i * SR):int((i + INPUT_LENGTH) * SR)] for i in range(hops)]
    return np.stack([s for s in segs if len(s) >= SEGMENT]).astype(np.float32)


def dnsmos_polyfit(raw: np.ndarray, polys=P835) -> np.ndarray:
    """[..., 3] raw (SIG, BAK, OVRL) -> P.835 MOS by speechmos's polynomials."""
    raw = np.asarray(raw, np.float64)
    return np.stack([np.polyval(p, raw[..., j]) for j, p in enumerate(polys)], -1)


def dnsmos_scores(session, audio: Sequence[np.ndarray], batch: int = 4, polys=P835) -> np.ndarray:
    """[clips, 3] (SIG, BAK, OVRL) per clip: polyfit of each segment's output, averaged.
    Small batches: one 9 s segment's first 2-D Conv output alone is 74 MB."""
    segs = [dnsmos_segments(a) for a in audio]
    flat = np.concatenate(segs)
    raw = np.concatenate([session.run(None, {"input_1": flat[i:i + batch]})[0]
                          for i in range(0, len(flat), batch)])
    mos = dnsmos_polyfit(raw, polys)
    bounds = np.cumsum([0] + [len(s) for s in segs])
    return np.stack([mos[a:b].mean(axis=0) for a, b in zip(bounds[:-1], bounds[1:])])


def pdnsmos_scores(session, audio: Sequence[np.ndarray], batch: int = 4) -> np.ndarray:
    """``dnsmos_scores`` with the personalized model's polynomials."""
    return dnsmos_scores(session, audio, batch, P835_PERSONALIZED)


def plc_features(audio: np.ndarray) -> np.ndarray:
    """[frames, 257] float32: speechmos's ``stft_transform`` (Hamming 512, hop 256, frames
    starting 256 samples before the signal, log power floored 120 dB under the smallest
    non-zero bin, divided by 20)."""
    fsize, hop = 512, 256
    window = np.hamming(fsize + 1)[:-1]
    nframe = -(-(len(audio) + hop) // hop)
    pad = np.zeros((nframe - 1) * hop + fsize, audio.dtype)
    pad[hop:hop + len(audio)] = audio
    frames = np.lib.stride_tricks.sliding_window_view(pad, fsize)[::hop][:nframe] * window
    power = np.abs(np.fft.rfft(frames, n=fsize)) ** 2
    zero = power == 0
    logp = np.empty_like(power)
    if zero.all():
        logp.fill(-80 / 10 / np.log10(np.e))
    else:
        logp[~zero] = np.log(power[~zero])
        logp[zero] = np.log(power[~zero].min()) - 120 / 10 / np.log10(np.e)
    return np.float32(logp / 20.0)


@lru_cache(maxsize=1)
def rater_embeddings() -> np.ndarray:
    """[15, 64] float32: the 15 rater embeddings speechmos draws after np.random.seed(0)."""
    return np.random.RandomState(RATER_SEED).normal(size=(RATER_ROUNDS, 64)).astype(np.float32)


def _plc_feed(audio: np.ndarray) -> Feeds:
    feat = plc_features(audio)[None, None]
    return {"degraded_audio": np.repeat(feat, RATER_ROUNDS, axis=0), "rater_embed": rater_embeddings()}


def plcmos_scores(session, audio: Sequence[np.ndarray]) -> np.ndarray:
    """[clips, 1] PLCMOS per clip: mean over the 15 rater embeddings (one batch)."""
    return np.array([[session.run(None, _plc_feed(a))[0].reshape(-1).mean()] for a in audio])


def rank_accuracy(scores: np.ndarray, utterance: np.ndarray, level: np.ndarray) -> float:
    """Share of same-utterance pairs whose less degraded clip (lower level) scores strictly higher."""
    right = total = 0
    for a, b in itertools.combinations(range(len(scores)), 2):
        if utterance[a] != utterance[b]:
            continue
        hi, lo = (a, b) if level[a] < level[b] else (b, a)
        right += scores[hi] > scores[lo]
        total += 1
    return float(right / total) if total else float("nan")


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    if len(a) < 2 or a.std() == 0 or b.std() == 0:
        return 0.0
    return float(np.corrcoef(a, b)[0, 1])


class _SpeechMOSEntry(ZooEntry):
    """Shared parts: clips from ``_clip_fn``, scores from ``_score_fn``, ranking metric
    on column ``_metric_col`` of the scores."""

    domain = "audio"
    install_hint = PIP
    package_hint = HINT
    requires = (("scipy", vad.SCIPY_HINT),)
    default_eval_n = 60                   # 12 utterances x 5 levels
    score_names: Tuple[str, ...] = ()
    _metric_col = 0

    def check_available(self) -> None:
        super().check_available()         # the model file (find_spec, no import), scipy
        vad._espeak()

    def clips(self, split: str, n: int) -> Tuple[Clip, ...]:
        self.check_available()
        return type(self)._clip_fn(split, n)

    def _feeds(self, split: str, n: int) -> Iterator[Feeds]:
        raise NotImplementedError

    def calib_feeds(self, n: int) -> Iterator[Feeds]:
        """Feeds of the first ``n`` calibration clips (see the subclass's ``_feeds``)."""
        return self._feeds("calib", n)

    def eval_feeds(self, n: int) -> Iterator[Feeds]:
        return self._feeds("eval", n)

    def scores(self, session, split: str, n: int) -> np.ndarray:
        """[clips, len(score_names)] scores of the first ``n`` clips of ``split`` under ``session``."""
        return type(self)._score_fn(session, [a for a, _, _ in self.clips(split, n)])

    def _evaluate(self, session, n: int) -> float:
        if n < 2:
            raise ValueError(f"{self.name}: n={n}: ranking needs at least 2 clips of one utterance")
        split = self.split
        ref = self._fp32_reference(("scores", n), lambda s: self.scores(s, split, n))
        got = self.scores(session, split, n)
        clips = self.clips(split, n)
        utt = np.array([u for _, u, _ in clips])
        lvl = np.array([j for _, _, j in clips])
        details: Dict[str, float] = {"mean_abs_diff_vs_fp32": float(np.abs(got - ref).mean())}
        for j, name in enumerate(self.score_names):
            details[f"{name}_rank_accuracy"] = rank_accuracy(got[:, j], utt, lvl)
            details[f"{name}_pearson_vs_fp32"] = _pearson(got[:, j], ref[:, j])
        self.last_details = details
        return details[f"{self.score_names[self._metric_col]}_rank_accuracy"]


class DNSMOSEntry(_SpeechMOSEntry):
    """DNSMOS P.835 (opset 12, in-graph spectrogram + 9 Conv); metric: BAK ranking vs SNR."""

    name = "dnsmos"
    family = "cnn"
    source = "speechmos (package file speechmos/dnsmos_models/sig_bak_ovr.onnx)"
    metric_name = "pairwise ranking accuracy of BAK vs known SNR (clean/30/20/10/0 dB)"
    package_model = ("speechmos", "dnsmos_models", "sig_bak_ovr.onnx")
    score_names = ("sig", "bak", "ovrl")
    _metric_col = 1
    _clip_fn = staticmethod(dnsmos_clips)
    _score_fn = staticmethod(dnsmos_scores)

    def _feeds(self, split: str, n: int) -> Iterator[Feeds]:
        """One feed per clip (its segments). Not one per utterance's five clips: the first
        2-D Conv's output for five clips is 5 x 128 x ~900 x 161 floats (354 MB), one
        tensor that BatchNorm calibration and tuning's per-layer runs hold at once, and
        that failed the coverage study's 8 GB address-space cap."""
        for audio, _, _ in self.clips(split, n):
            yield {"input_1": dnsmos_segments(audio)}


class PersonalizedDNSMOSEntry(DNSMOSEntry):
    """Personalized DNSMOS P.835: the same network trained to also penalise interfering
    talkers (its own weights and polynomials); metric: BAK ranking vs SNR."""

    name = "pdnsmos"
    source = "speechmos (package file speechmos/pdnsmos_models/sig_bak_ovr.onnx)"
    package_model = ("speechmos", "pdnsmos_models", "sig_bak_ovr.onnx")
    _score_fn = staticmethod(pdnsmos_scores)


class PLCMOSEntry(_SpeechMOSEntry):
    """PLCMOS v2 (opset 11, 4 Conv + 2 GRU + Gemm head); metric: ranking vs packet loss."""

    name = "plcmos"
    family = "rnn"                        # Conv front end, but 2 GRU layers carry the time axis
    source = "speechmos (package file speechmos/plcmos_models/plcmos_v2.onnx)"
    metric_name = "pairwise ranking accuracy of PLCMOS vs known packet loss (0-30%)"
    package_model = ("speechmos", "plcmos_models", "plcmos_v2.onnx")
    score_names = ("plcmos",)
    _clip_fn = staticmethod(plcmos_clips)
    _score_fn = staticmethod(plcmos_scores)

    def _feeds(self, split: str, n: int) -> Iterator[Feeds]:
        """One feed per clip: its features repeated for the 15 rater embeddings."""
        for audio, _, _ in self.clips(split, n):
            yield _plc_feed(audio)


def speechmos_entries():
    return [DNSMOSEntry(), PLCMOSEntry(), PersonalizedDNSMOSEntry()]
