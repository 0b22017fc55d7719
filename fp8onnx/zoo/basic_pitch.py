"""Spotify's basic-pitch note transcriber (``basic_pitch/saved_models/icassp_2022/nmp.onnx``
from ``basic-pitch`` 0.4.0) on J. S. Bach chorales from music21's corpus, synthesized.

The model is a tf2onnx export (opset 15 with an ``ai.onnx.ml`` import) of the ICASSP 2022
"NMP" network: 2 s of mono audio at 22050 Hz ([batch, 43844, 1]) through a harmonic CQT
front end built inside the graph (Conv-based filter banks, Pad, Reshape, Log and a
ReduceMax normalisation) and a small CNN to three posteriorgrams at 86 frames per second:
note [b, 172, 88] and onset [b, 172, 88] over the piano's semitones, contour [b, 172, 264]
at a third of a semitone. It is the zoo's music model.

The pipeline is basic-pitch's ``inference.run_inference`` in numpy (a test checks it
against the package's ``get_audio_input``, ``unwrap_output`` and ``predict``):
15 frames of zeros before the audio, windows of 43844 samples every 36164 (30 frames of
overlap), then the outputs of each window less 15 frames at either end, concatenated and
cut to the audio's length. Notes come from the package's own
``note_creation.model_output_to_notes`` with ``predict``'s defaults (onset 0.5, frame 0.3,
notes of at least 127.7 ms, inferred onsets, the melodia trick), imported without
tensorflow.

Real input: the four-voice Bach chorales of music21's corpus (calibration and evaluation
read disjoint chorale files), each voice rendered by a small additive synthesizer (six
harmonics at 1/k^3 of the fundamental, 10 ms attack, a 1.5 s exponential decay, 40 ms
release, a level per voice varied per clip from a fixed seed) at 84, 96 or 108 quarter
notes a minute. A clip holds the notes that start in a chorale's first 8 s, played to
their end; its truth is those notes (MIDI pitch, onset and offset in seconds), voices in
unison counted once. Brighter tones (harmonics at 0.6^k) make basic-pitch add many
notes an octave or a twelfth above the played ones (FP32 note F1 0.72 instead of 0.88).

Metric: note F1 against the score with mir_eval's ``transcription.match_notes`` (onset
within 50 ms, same pitch, offsets ignored), pooled over the clips. ``last_details`` adds
precision, recall, the frame F1 of the note posteriorgram (>= 0.3) against the score's
piano roll, and the note F1 against FP32's notes. FP32 finds nearly every note of the
score (recall 0.998 on the 24 evaluation clips); its errors are extra notes a harmonic
above the played ones (precision 0.78)::

    >>> fp8onnx.zoo.get("basic_pitch").evaluate()      # doctest: +SKIP
    0.878...
"""
from __future__ import annotations

import logging
import zlib
from contextlib import contextmanager
from functools import lru_cache
from typing import Dict, Iterator, List, Tuple

import numpy as np

from .base import Feeds, ZooEntry, check_split, require

__all__ = ["BasicPitchEntry", "chorales", "score_notes", "synthesize", "clips", "windows",
           "unwrap", "transcribe", "notes", "note_matches", "frame_times", "piano_roll"]

PIP = "pip install --no-deps basic-pitch==0.4.0"
HINT = f"basic-pitch ({PIP})"   # --no-deps: its dependencies pull tensorflow, which it does not need for ONNX
MODEL = ("basic_pitch", "saved_models", "icassp_2022", "nmp.onnx")
MUSIC21_HINT = "music21 (pip install music21)"
#: What ``basic_pitch.note_creation`` imports besides numpy and scipy.
NOTE_CREATION_REQUIRES = (("pretty_midi", "pretty-midi (pip install pretty-midi)"),
                          ("mir_eval", "mir-eval (pip install mir-eval)"),
                          ("resampy", "resampy (pip install resampy)"),
                          ("librosa", "librosa (pip install librosa)"))
INPUT = "serving_default_input_2:0"
#: Output names in the order basic-pitch's ``Model.predict`` gives them.
OUTPUTS = {"note": "StatefulPartitionedCall:1", "onset": "StatefulPartitionedCall:2",
           "contour": "StatefulPartitionedCall:0"}

# basic_pitch/constants.py and inference.run_inference
SR = 22050
FFT_HOP = 256
FPS = SR // FFT_HOP                          # 86: ANNOTATIONS_FPS
N_SAMPLES = 2 * SR - FFT_HOP                 # 43844: AUDIO_N_SAMPLES
N_OVERLAP_FRAMES = 30
OVERLAP = N_OVERLAP_FRAMES * FFT_HOP         # 7680 samples
HOP = N_SAMPLES - OVERLAP                    # 36164 samples between windows
MIDI_OFFSET = 21                             # pitch of the posteriorgrams' first row (A0)

# predict's defaults
ONSET_THRESHOLD, FRAME_THRESHOLD = 0.5, 0.3
MIN_NOTE_MS = 127.70
MIN_NOTE_FRAMES = int(np.round(MIN_NOTE_MS / 1000 * (SR / FFT_HOP)))   # 11

ONSET_TOLERANCE = 0.05                       # seconds: mir_eval's (and MIREX's) default

SEGMENT = 8.0                                # seconds in which a clip's notes start
TEMPI = (84, 96, 108)                        # quarter notes per minute, clip i takes TEMPI[i % 3]
HARMONICS = 1.0 / np.arange(1, 7) ** 3       # amplitude of harmonic k (see the module docstring)
ATTACK, RELEASE, DECAY = 0.010, 0.040, 1.5   # seconds (DECAY: e-folding time while held)
VOICE_LEVELS = (1.0, 0.75, 0.75, 0.9)        # soprano, alto, tenor, bass
PEAK = 0.5

#: A note of the score or of a transcription: (MIDI pitch, onset s, offset s), as rows.
Notes = np.ndarray
Clip = Tuple[np.ndarray, Notes]              # (float32 audio at 22050 Hz, truth notes)


# --- the data: chorales, their notes, the synthesizer ----------------------------------------

@lru_cache(maxsize=1)
def _files() -> Tuple[str, ...]:
    """Corpus paths of music21's Bach pieces in MusicXML, in name order."""
    corpus = require("music21", MUSIC21_HINT).corpus
    return tuple(f"bach/{p.name}" for p in sorted(corpus.getComposer("bach"), key=lambda p: p.name)
                 if p.suffix == ".mxl")


@lru_cache(maxsize=None)
def score_notes(chorale: str) -> Tuple[Tuple[int, int, float, float], ...]:
    """(voice, MIDI pitch, onset, offset) of every note of ``chorale`` (a corpus path), in
    quarter notes from its start, ties merged; voice 0 is the top part."""
    music21 = require("music21", MUSIC21_HINT)
    score = music21.corpus.parse(chorale)
    score.stripTies(inPlace=True)   # a copy would cost twice the parse
    out = []
    for voice, part in enumerate(score.parts):
        for n in part.flatten().notes:
            length = float(n.quarterLength)
            if length <= 0:      # grace notes have no time of their own
                continue
            start = float(n.offset)
            out.extend((voice, int(p.midi), start, start + length) for p in n.pitches)
    return tuple(sorted(out, key=lambda t: (t[2], t[0], t[1])))


def _voices(chorale: str) -> int:
    return 1 + max((v for v, *_ in score_notes(chorale)), default=-1)


def chorales(split: str, n: int) -> Tuple[str, ...]:
    """The first ``n`` four-voice chorales of ``split`` (fewer if the corpus runs out).
    Evaluation reads the even-numbered MusicXML files of the corpus in name order,
    calibration the odd ones, so no chorale is in both; files are parsed only as far as
    ``n`` needs (music21 takes ~0.1 s a chorale)."""
    check_split(split)
    out = []
    for path in _files()[0 if split == "eval" else 1::2]:
        if len(out) == n:
            break
        if _voices(path) == len(VOICE_LEVELS):
            out.append(path)
    return tuple(out)


def synthesize(notes, levels=VOICE_LEVELS, sr: int = SR) -> np.ndarray:
    """float32 audio of ``notes`` ((voice, MIDI pitch, onset s, offset s) rows): additive
    tones, each with its attack, an exponential decay while held and a release after its
    offset, voice ``v`` at ``levels[v]``; scaled to a peak of PEAK."""
    notes = list(notes)
    end = max(off for _, _, _, off in notes) + RELEASE
    out = np.zeros(int(np.ceil(end * sr)) + 1, np.float64)
    for voice, pitch, onset, offset in notes:
        start = int(round(onset * sr))
        held = max(1, int(round(offset * sr)) - start)
        t = np.arange(held + int(RELEASE * sr)) / sr
        env = np.minimum(1.0, t / ATTACK) * np.exp(-t / DECAY)
        tail = t >= held / sr
        env[tail] *= np.maximum(0.0, 1.0 - (t[tail] - held / sr) / RELEASE)
        f0 = 440.0 * 2.0 ** ((pitch - 69) / 12)
        tone = sum(a * np.sin(2 * np.pi * f0 * (k + 1) * t)
                   for k, a in enumerate(HARMONICS) if f0 * (k + 1) < sr / 2)
        out[start:start + len(t)] += levels[voice] * env * tone
    return (PEAK * out / np.abs(out).max()).astype(np.float32)


def _truth(played) -> Notes:
    """The notes to find in ``played`` rows: one per (pitch, onset), since voices in unison
    attack one note the model cannot tell apart (the longer one kept)."""
    best: Dict[Tuple[int, float], float] = {}
    for _, pitch, onset, offset in played:
        key = (pitch, round(onset, 6))
        best[key] = max(best.get(key, 0.0), offset)
    rows = sorted(((p, on, off) for (p, on), off in best.items()), key=lambda r: (r[1], r[0]))
    return np.array(rows, np.float64).reshape(-1, 3)


@lru_cache(maxsize=None)
def _clip(split: str, i: int) -> Clip:
    chorale = chorales(split, i + 1)[i]
    beat = 60.0 / TEMPI[i % len(TEMPI)]
    played = [(v, p, on * beat, off * beat) for v, p, on, off in score_notes(chorale) if on * beat < SEGMENT]
    # a level per voice that differs between clips but not between runs
    rng = np.random.default_rng(zlib.crc32(f"basic_pitch/{split}/{i}".encode()))
    levels = np.array(VOICE_LEVELS) * rng.uniform(0.8, 1.2, len(VOICE_LEVELS))
    return synthesize(played, levels), _truth(played)


def clips(split: str, n: int) -> Tuple[Clip, ...]:
    """The first ``n`` clips of ``split``: clip ``i`` is the start of the split's chorale
    ``i``, so a smaller ``n`` gives a prefix of a larger one."""
    check_split(split)
    return tuple(_clip(split, i) for i in range(len(chorales(split, n))))


# --- the pipeline: basic-pitch's windowing, stitching and note creation -----------------------

def windows(audio: np.ndarray) -> np.ndarray:
    """The model's input for ``audio`` (float32 at 22050 Hz) as ``inference.get_audio_input``
    builds it: OVERLAP / 2 zeros in front, windows of N_SAMPLES every HOP samples, the
    last one zero-padded; [windows, 43844, 1] float32."""
    x = np.concatenate([np.zeros(OVERLAP // 2, np.float32), np.asarray(audio, np.float32)])
    starts = range(0, len(x), HOP)
    out = np.zeros((len(starts), N_SAMPLES, 1), np.float32)
    for row, s in enumerate(starts):
        chunk = x[s:s + N_SAMPLES]
        out[row, :len(chunk), 0] = chunk
    return out


def unwrap(output: np.ndarray, audio_length: int) -> np.ndarray:
    """``inference.unwrap_output``: [windows, 172, bins] to [frames, bins], each window less
    half the overlap at either end, cut to the frames of ``audio_length`` samples."""
    half = N_OVERLAP_FRAMES // 2
    kept = output[:, half:-half, :]
    frames = int(np.floor(audio_length * (FPS / SR)))
    return kept.reshape(-1, kept.shape[2])[:frames]


def transcribe(session, audio: np.ndarray) -> Dict[str, np.ndarray]:
    """{"note", "onset", "contour"} posteriorgrams of ``audio`` under ``session``, stitched."""
    got = session.run(list(OUTPUTS.values()), {INPUT: windows(audio)})
    return {k: unwrap(v, len(audio)) for k, v in zip(OUTPUTS, got)}


@contextmanager
def _quiet_root_logger():
    """basic_pitch/__init__ warns through ``logging.warning`` about each backend it lacks
    (tensorflow, coremltools, tflite): a handler stops that from configuring the root
    logger, and the disable keeps the warnings out of the user's log."""
    root = logging.getLogger()
    guard = logging.NullHandler()
    root.addHandler(guard)
    previous = root.manager.disable
    logging.disable(logging.WARNING)
    try:
        yield
    finally:
        logging.disable(previous)
        root.removeHandler(guard)


@lru_cache(maxsize=1)
def _note_creation():
    for module, hint in NOTE_CREATION_REQUIRES:
        require(module, hint)
    with _quiet_root_logger():
        return require("basic_pitch.note_creation", HINT)


def notes(output: Dict[str, np.ndarray]) -> Notes:
    """(MIDI pitch, onset s, offset s) of the notes basic-pitch's ``model_output_to_notes``
    creates from stitched posteriorgrams with ``predict``'s defaults, by onset. Pitch bends
    are left out: they change no note."""
    _, events = _note_creation().model_output_to_notes(
        dict(output), onset_thresh=ONSET_THRESHOLD,
        frame_thresh=FRAME_THRESHOLD, min_note_len=MIN_NOTE_FRAMES, include_pitch_bends=False)
    rows = sorted(((int(p), float(on), float(off)) for on, off, p, _, _ in events), key=lambda r: (r[1], r[0]))
    return np.array(rows, np.float64).reshape(-1, 3)


def note_matches(ref: Notes, est: Notes) -> int:
    """How many notes of ``est`` mir_eval's ``match_notes`` pairs one-to-one with notes of
    ``ref``: onset within 50 ms, pitch within 50 cents (the same MIDI note), offsets ignored."""
    if len(ref) == 0 or len(est) == 0:
        return 0
    transcription = require("mir_eval", NOTE_CREATION_REQUIRES[1][1]).transcription

    def hz(rows):
        return 440.0 * 2.0 ** ((rows[:, 0] - 69) / 12)

    return len(transcription.match_notes(ref[:, 1:], hz(ref), est[:, 1:], hz(est),
                                         onset_tolerance=ONSET_TOLERANCE, offset_ratio=None))


def frame_times(n_frames: int) -> np.ndarray:
    """Seconds of the stitched frames, as basic-pitch times its notes
    (``note_creation.model_frames_to_time``)."""
    return np.asarray(_note_creation().model_frames_to_time(n_frames), np.float64)


def piano_roll(truth: Notes, n_frames: int) -> np.ndarray:
    """[frames, 88] bool: where a note of ``truth`` sounds at the stitched frames' times."""
    t = frame_times(n_frames)[:, None]
    roll = np.zeros((n_frames, 88), bool)
    for pitch, onset, offset in truth:
        roll[:, int(pitch) - MIDI_OFFSET] |= ((t >= onset) & (t < offset))[:, 0]
    return roll


def _f1(hits: float, n_ref: float, n_est: float) -> Tuple[float, float, float]:
    precision = hits / n_est if n_est else 0.0
    recall = hits / n_ref if n_ref else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return precision, recall, f1


class BasicPitchEntry(ZooEntry):
    """Spotify's basic-pitch (ICASSP 2022 NMP); metric: note F1 against the chorale scores."""

    name = "basic_pitch"
    domain, family = "audio", "cnn"
    source = "basic-pitch 0.4.0 (package file basic_pitch/saved_models/icassp_2022/nmp.onnx)"
    install_hint = PIP
    metric_name = "note F1 vs score (onset 50 ms, pitch, no offsets; basic-pitch's note creation)"
    default_eval_n = 24
    package_model, package_hint = MODEL, HINT
    requires = (("music21", MUSIC21_HINT),) + NOTE_CREATION_REQUIRES

    def clips(self, split: str, n: int) -> Tuple[Clip, ...]:
        self.check_available()
        return clips(split, n)

    def _feeds(self, split: str, n: int) -> Iterator[Feeds]:
        for audio, _ in self.clips(split, n):
            yield {INPUT: windows(audio)}

    def calib_feeds(self, n: int) -> Iterator[Feeds]:
        """One feed per calibration clip: all its windows in the batch."""
        return self._feeds("calib", n)

    def eval_feeds(self, n: int) -> Iterator[Feeds]:
        return self._feeds("eval", n)

    def transcriptions(self, session, split: str, n: int) -> List[Tuple[Dict[str, np.ndarray], Notes]]:
        """Per clip of ``split``: (stitched posteriorgrams, notes) under ``session``."""
        out = []
        for audio, _ in self.clips(split, n):
            output = transcribe(session, audio)
            out.append((output, notes(output)))
        return out

    def _evaluate(self, session, n: int) -> float:
        split = self.split
        truths = [truth for _, truth in self.clips(split, n)]
        ref = self._fp32_reference(("notes", n), lambda s: [est for _, est in self.transcriptions(s, split, n)])
        hits = agree = n_truth = n_est = n_ref = 0
        frame_hits = frame_truth = frame_est = 0
        for truth, fp32_notes, (output, est) in zip(truths, ref, self.transcriptions(session, split, n)):
            hits += note_matches(truth, est)
            agree += note_matches(fp32_notes, est)
            n_truth, n_est, n_ref = n_truth + len(truth), n_est + len(est), n_ref + len(fp32_notes)
            roll = piano_roll(truth, len(output["note"]))
            active = output["note"] >= FRAME_THRESHOLD
            frame_hits += int((roll & active).sum())
            frame_truth, frame_est = frame_truth + int(roll.sum()), frame_est + int(active.sum())
        precision, recall, f1 = _f1(hits, n_truth, n_est)
        self.last_details = {"precision": precision, "recall": recall,
                             "frame_f1": _f1(frame_hits, frame_truth, frame_est)[2],
                             "f1_vs_fp32": _f1(agree, n_ref, n_est)[2], "notes": n_truth}
        return f1


def basic_pitch_entries():
    return [BasicPitchEntry()]
