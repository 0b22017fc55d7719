"""g2p_en's grapheme-to-phoneme GRU encoder-decoder (``g2p_en/checkpoint20.npz``, g2p_en 2.1.0).

g2p_en pronounces a word found neither in its homograph list nor in CMUdict with a small
seq2seq network that its ``G2p.predict`` runs in numpy: the word's letters (ids 3-28)
and ``</s>`` (id 2) are embedded (29 x 256) and read by a GRU encoder (hidden 256);
its last state starts a GRU decoder fed ``<s>`` (phoneme id 2), then greedily its own
previous prediction, through the output projection 256 -> 74 ARPAbet phonemes and
specials, until it predicts ``</s>`` (id 3) or has made 20 predictions.

The package is never imported: its ``__init__`` imports nltk and downloads corpora.
The checkpoint is found with ``find_spec``, the network rebuilt in plain torch exactly as
``predict`` computes it (PyTorch's GRU cell: gates r, z, n in that order, ``n =
tanh(x W_in + b_in + r * (h W_hn + b_hn))``), and exported once to ONNX (opset 17) in
``cache_dir("g2p_en")``. The loops are unrolled, each cell a Gemm for the recurrence
plus Sigmoid/Tanh, so the compiler quantizes every recurrent matmul and the hidden
state it reads, with a scale per step; an ONNX GRU node would get FP8 weights, but its
hidden state stays inside the node, in float, where calibration cannot see it.
The exported graph: 1 MatMul (the encoder's input projection, all steps at once), 80
Gemm, 82 Sigmoid, 41 Tanh, 20 ArgMax, 40 Where, 829 nodes, 835k weights.

Batching without changing a result: input ``graphemes`` int64 [batch, 21] holds
g2p_en's own ids, ``list(word) + ["</s>"]``, followed by ``<pad>`` (0). The encoder
is unrolled for 21 steps (words of 2-20 letters, ``MAX_LETTERS``) and at a pad
position keeps its state unchanged (a Where, not a blend), so each row's final state is
exactly that of g2p_en's ``len(word) + 1`` steps. The encoder's input projection is one
MatMul over all steps. The decoder runs its 20 steps for every row; outputs are
``phonemes`` int64 [batch, 20], the greedy ids with -1 from the first ``</s>`` on (what
``predict`` returns, as ids), and ``logits`` float32 [batch, 20, 74].

Real input: the distinct words of CPython's documentation prose (``prose.py``),
normalised as ``G2p.__call__`` does before ``predict`` (lowercased, characters other than
``a-z ' . , ? ! -`` dropped, so ``__init__`` gives ``init``, split into tokens), keeping
tokens of 2-20 letters (none with a digit, which g2p_en would spell out first).
Calibration reads the calibration paragraphs' words; evaluation the evaluation
paragraphs' words that the calibration side never holds, which leaves rarer words
(``assertionerror``, ``coroutines``, ``setattr``): the out-of-vocabulary words g2p_en
sends to this network.

Metric: the share of evaluation words whose phoneme sequence equals the FP32 model's;
``last_details`` adds the phoneme agreement, 1 - (total edit distance to FP32's
sequences) / (their total length), and ``truth_accuracy``: the share of the 371
alphabetic headwords of g2p_en's ``homographs.en`` pronounced as one of the two
pronunciations it lists (FP32: 0.64). Agreement with FP32 counts every greedy choice that
flips; accuracy against a true pronunciation, the paper's kind of metric, counts only
flips that turn a right answer wrong, and most flips are words FP32 is unsure of::

    >>> fp8onnx.zoo.get("g2p_en").evaluate()      # doctest: +SKIP
    1.0
"""
from __future__ import annotations

import os
import re
import warnings
from functools import lru_cache
from pathlib import Path
from typing import Dict, Iterator, List, Sequence, Tuple

import numpy as np
import onnx

from . import prose
from .ocr import edit_distance
from .base import EXPORT_HINT, ExportedEntry, Feeds, ZooEntry, check_split, keep_export, ort_session, package_file, require

__all__ = ["G2pEntry", "export_g2p", "build_g2p", "load_torch_model", "load_weights", "words", "homographs", "encode",
           "sequences", "pronounce", "GRAPHEMES", "PHONEMES"]

PIP = "pip install --no-deps g2p_en==2.1.0"
HINT = f"g2p_en ({PIP})"   # --no-deps: nltk and inflect are needed only by what is not used here
WEIGHTS = ("g2p_en", "checkpoint20.npz")
HOMOGRAPHS = ("g2p_en", "homographs.en")
ONNX_NAME = "g2p_en.{version}.opset17.v1.onnx"   # bump v1 when the export changes
INPUT, OUTPUT, LOGITS = "graphemes", "phonemes", "logits"

# g2p_en/g2p.py: G2p.__init__ and predict
GRAPHEMES = ("<pad>", "<unk>", "</s>") + tuple("abcdefghijklmnopqrstuvwxyz")
PHONEMES = ("<pad>", "<unk>", "<s>", "</s>") + tuple(
    "AA0 AA1 AA2 AE0 AE1 AE2 AH0 AH1 AH2 AO0 AO1 AO2 AW0 AW1 AW2 AY0 AY1 AY2 B CH D DH EH0 EH1 "
    "EH2 ER0 ER1 ER2 EY0 EY1 EY2 F G HH IH0 IH1 IH2 IY0 IY1 IY2 JH K L M N NG OW0 OW1 OW2 OY0 "
    "OY1 OY2 P R S SH T TH UH0 UH1 UH2 UW UW0 UW1 UW2 V W Y Z ZH".split())
PAD, WORD_END = 0, 2        # grapheme ids of <pad> and </s>
START, STOP = 2, 3          # phoneme ids of <s> and </s>
MAX_PHONEMES = 20           # predict's decoder steps
MIN_LETTERS, MAX_LETTERS = 2, 20
STEPS = MAX_LETTERS + 1     # encoder steps: the letters and </s>
AFTER_STOP = -1             # what ``phonemes`` holds from the first </s> on
BATCH = 32                  # words per feed


# --- words ---------------------------------------------------------------------------------

def _normalise(text: str) -> str:
    """G2p.__call__'s normalisation up to tokenizing, digits kept: it spells numbers out
    first (inflect, ``utf8`` -> ``utfeight``), which is not modelled here, so a token
    holding a digit is dropped later instead. The prose is ASCII: no accents to strip."""
    return re.sub(r"[^ a-z0-9'.,?!\-]", "", text.lower())


# TweetTokenizer keeps a word with inner apostrophes or hyphens as one token ("don't",
# "built-in") and splits at periods ("os.path" -> "os", ".", "path"); such tokens reach
# predict whole, so they are matched whole here and then dropped as not purely alphabetic.
_TOKEN = re.compile(r"[a-z0-9]+(?:['\-][a-z0-9]+)*")
_WORD = re.compile(f"[a-z]{{{MIN_LETTERS},{MAX_LETTERS}}}")


@lru_cache(maxsize=None)
def _split_words(split: str) -> Tuple[str, ...]:
    found: Dict[str, None] = {}
    for paragraph in prose.paragraphs(split):
        for token in _TOKEN.findall(_normalise(paragraph)):
            if _WORD.fullmatch(token):
                found[token] = None
    return tuple(found)


def words(split: str, n: int) -> List[str]:
    """The first ``n`` distinct words of ``split`` in prose order; an evaluation word never
    occurs in the calibration paragraphs (a word of both belongs to calibration)."""
    check_split(split)
    pool = _split_words(split)
    if split == "eval":
        calib = set(_split_words("calib"))
        pool = tuple(w for w in pool if w not in calib)
    return list(pool[:n])


@lru_cache(maxsize=1)
def homographs() -> Dict[str, Tuple[Tuple[str, ...], Tuple[str, ...]]]:
    """{headword: (pronunciation 1, pronunciation 2)} of homographs.en (``WORD|P1|P2|POS``
    lines), the headwords this network can read (lowercase letters only)."""
    out = {}
    for line in package_file(*HOMOGRAPHS, hint=HINT).read_text().splitlines():
        if line.startswith("#") or not line.strip():
            continue
        word, p1, p2, _ = line.split("|")
        if _WORD.fullmatch(word.lower()):
            out[word.lower()] = (tuple(p1.split()), tuple(p2.split()))
    return out


def encode(batch: Sequence[str]) -> np.ndarray:
    """int64 [len(batch), 21]: each word's g2p_en ids, then </s>, then <pad>."""
    out = np.full((len(batch), STEPS), PAD, np.int64)
    for row, word in enumerate(batch):
        if not _WORD.fullmatch(word):
            raise ValueError(f"g2p_en: {word!r} is not {MIN_LETTERS}-{MAX_LETTERS} lowercase letters")
        out[row, :len(word)] = [GRAPHEMES.index(c) for c in word]
        out[row, len(word)] = WORD_END
    return out


def sequences(phonemes: np.ndarray) -> List[Tuple[int, ...]]:
    """Each row of ``phonemes`` as the phoneme ids predict returns (up to the first </s>)."""
    return [tuple(int(p) for p in row[row != AFTER_STOP]) for row in np.asarray(phonemes)]


def pronounce(session, batch: Sequence[str]) -> List[List[str]]:
    """ARPAbet phonemes of each word, as g2p_en's ``predict`` gives them, under ``session``."""
    ids = session.run([OUTPUT], {INPUT: encode(batch)})[0]
    return [[PHONEMES[p] for p in seq] for seq in sequences(ids)]


# --- the model -----------------------------------------------------------------------------

def load_weights() -> Dict[str, np.ndarray]:
    """The checkpoint's arrays by name (enc_emb, enc_w_ih, ..., fc_b), float32."""
    with np.load(package_file(*WEIGHTS, hint=HINT)) as npz:
        return {k: npz[k] for k in npz.files}


def build_g2p(torch, weights: Dict[str, np.ndarray]):
    """g2p_en's encoder-decoder as a torch module holding ``weights``: [batch, 21] ids ->
    (phoneme ids [batch, 20], logits [batch, 20, 74])."""
    nn, F = torch.nn, torch.nn.functional

    class G2p(nn.Module):
        def __init__(self):
            super().__init__()
            self.hidden = int(weights["enc_w_hh"].shape[1])
            for k, v in weights.items():
                setattr(self, k, nn.Parameter(torch.from_numpy(np.asarray(v, np.float32)), requires_grad=False))

        def cell(self, xi, h, w_hh, b_hh):
            """g2p_en's grucell given the input projection ``xi = x W_ih^T + b_ih``; ``h``
            None is the zero state, whose recurrence is exactly ``b_hh``: a Gemm would
            hand the compiler an all-zero activation to scale."""
            hh = b_hh.expand_as(xi) if h is None else F.linear(h, w_hh, b_hh)
            # Python ints: the tracer would compute the split points from shapes at run time.
            xi_r, xi_z, xi_n = xi.split(self.hidden, -1)
            hh_r, hh_z, hh_n = hh.split(self.hidden, -1)
            r, z = torch.sigmoid(xi_r + hh_r), torch.sigmoid(xi_z + hh_z)
            n = torch.tanh(xi_n + r * hh_n)
            return (1 - z) * n if h is None else (1 - z) * n + z * h

        def forward(self, ids):
            present = (ids != PAD).unsqueeze(-1)
            xi = F.linear(F.embedding(ids, self.enc_emb), self.enc_w_ih, self.enc_b_ih)
            # Every word has a first letter, so step 0 needs no mask.
            h = self.cell(xi[:, 0], None, self.enc_w_hh, self.enc_b_hh)
            for t in range(1, STEPS):
                h = torch.where(present[:, t], self.cell(xi[:, t], h, self.enc_w_hh, self.enc_b_hh), h)
            token = torch.full_like(ids[:, 0], START)
            stopped = torch.zeros_like(present[:, 0, 0])
            out, logits = [], []
            for _ in range(MAX_PHONEMES):
                xi = F.linear(F.embedding(token, self.dec_emb), self.dec_w_ih, self.dec_b_ih)
                h = self.cell(xi, h, self.dec_w_hh, self.dec_b_hh)
                logits.append(F.linear(h, self.fc_w, self.fc_b))
                token = logits[-1].argmax(-1)   # first of equal maxima, as numpy's argmax
                stopped = stopped | (token == STOP)
                out.append(torch.where(stopped, AFTER_STOP, token))
            return torch.stack(out, 1), torch.stack(logits, 1)

    return G2p()


def load_torch_model(torch):
    """The network with g2p_en's weights, in eval mode."""
    return build_g2p(torch, load_weights()).eval()


def _fold_constants(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` with its Constant nodes folded into initializers: the tracer writes each
    unrolled step's indices and split sizes as Constant nodes (226 of them), which bury
    the 829 real nodes in Netron."""
    import onnx_graphsurgeon as gs

    graph = gs.import_onnx(model)
    graph.fold_constants().cleanup().toposort()
    return gs.export_onnx(graph)


def export_g2p(path: Path) -> Path:
    """Export g2p_en's network, weights from its checkpoint, to ONNX at ``path`` (needs
    torch; g2p_en itself is not imported)."""
    torch = require("torch", EXPORT_HINT)
    net = load_torch_model(torch)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    example = torch.from_numpy(encode(words("calib", 4)))
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")   # the legacy exporter's deprecation notice
        torch.onnx.export(net, (example,), str(tmp), input_names=[INPUT], output_names=[OUTPUT, LOGITS],
                          dynamic_axes={INPUT: {0: "batch"}, OUTPUT: {0: "batch"}, LOGITS: {0: "batch"}},
                          opset_version=17, dynamo=False)
        # Other words and another batch size than traced: the 3 shortest and 6 longest of
        # 200 words, so rows of all lengths are padded differently.
        check_words = sorted(words("calib", 200), key=len)
        check = torch.from_numpy(encode(check_words[:3] + check_words[-6:]))
        want_ids, want = (t.numpy() for t in net(check))
    model = _fold_constants(onnx.load(tmp))
    onnx.checker.check_model(model)
    got_ids, got = ort_session(model.SerializeToString()).run([OUTPUT, LOGITS], {INPUT: check.numpy()})
    if not np.array_equal(got_ids, want_ids):
        tmp.unlink(missing_ok=True)
        raise RuntimeError("g2p_en ONNX export predicts other phonemes than torch")
    return keep_export(tmp, path, got, want, atol=1e-4, what="g2p_en", model=model)


# --- the entry -----------------------------------------------------------------------------

class G2pEntry(ExportedEntry):
    """g2p_en's GRU encoder-decoder, unrolled; metric: word agreement with FP32."""

    name = "g2p_en"
    domain, family = "nlp", "rnn"
    source = "g2p_en 2.1.0 (package file g2p_en/checkpoint20.npz, rebuilt and exported with torch)"
    install_hint = PIP
    metric_name = "word agreement vs FP32 (same phoneme sequence)"
    default_eval_n = 400
    package_model, package_hint = WEIGHTS, HINT
    onnx_name = ONNX_NAME

    def export(self, path: Path) -> None:
        export_g2p(path)

    def words(self, split: str, n: int) -> List[str]:
        self.check_available()
        return words(split, n)

    def _feeds(self, split: str, n: int) -> Iterator[Feeds]:
        batch = self.words(split, n)
        for i in range(0, len(batch), BATCH):
            yield {INPUT: encode(batch[i:i + BATCH])}

    def calib_feeds(self, n: int) -> Iterator[Feeds]:
        """``n`` calibration words, 32 to a feed, as int64 [batch, 21] g2p_en ids."""
        return self._feeds("calib", n)

    def eval_feeds(self, n: int) -> Iterator[Feeds]:
        return self._feeds("eval", n)

    def transcribe(self, session, n: int) -> List[Tuple[int, ...]]:
        """Phoneme ids of each of the scored split's first ``n`` words under ``session``."""
        return [s for f in self.split_feeds(n) for s in sequences(session.run([OUTPUT], f)[0])]

    def _evaluate(self, session, n: int) -> float:
        ref = self._fp32_reference(("phonemes", n), lambda s: self.transcribe(s, n))
        got = self.transcribe(session, n)
        errors = sum(edit_distance(a, b) for a, b in zip(got, ref))
        truth = homographs()
        heads = list(truth)
        said = [tuple(p) for i in range(0, len(heads), BATCH) for p in pronounce(session, heads[i:i + BATCH])]
        details = {"word_agreement": float(np.mean([a == b for a, b in zip(got, ref)])),
                   "phoneme_agreement": max(0.0, 1.0 - errors / sum(len(r) for r in ref)),
                   "words": len(ref),
                   "truth_accuracy": float(np.mean([p in truth[w] for p, w in zip(said, heads)])),
                   "truth_words": len(heads)}
        self.last_details = details
        return details["word_agreement"]


def g2p_entries() -> List[ZooEntry]:
    return [G2pEntry()]
