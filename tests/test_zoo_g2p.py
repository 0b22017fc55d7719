"""The g2p_en zoo entry: g2p_en's GRU encoder-decoder (its checkpoint, rebuilt and exported
with torch) on words of CPython's documentation prose.

The independent references: g2p_en's own numpy ``G2p.predict`` (its module imported
with stand-ins for nltk and inflect, which it imports at the top but needs only for
tokenizing, tagging, CMUdict and numbers, none of which ``predict`` touches); the torch
model for the export; homographs.en and a few words of known ARPAbet for the whole
FP32 pipeline."""
from __future__ import annotations

import importlib
import sys
import types

import numpy as np
import pytest

from fp8onnx import zoo
from fp8onnx.zoo import g2p as gp
from fp8onnx.zoo import prose
from fp8onnx.zoo.facts import describe
from fp8onnx.zoo.fp8eval import fp8_vs_fp32

ZOO_ENTRY = "g2p_en"   # the conftest fixtures entry and fp32 read it


def _stand_ins() -> dict:
    """Modules g2p_en imports at the top, enough for ``G2p()`` to build offline."""
    nltk = types.ModuleType("nltk")
    nltk.pos_tag = lambda words: [(w, "NN") for w in words]
    nltk.download = lambda *a, **k: pytest.fail("g2p_en tried to download")
    nltk.data = types.SimpleNamespace(find=lambda path: path)
    corpus = types.ModuleType("nltk.corpus")
    corpus.cmudict = types.SimpleNamespace(dict=dict)   # empty: every word goes to predict
    tokenize = types.ModuleType("nltk.tokenize")
    tokenize.TweetTokenizer = lambda: types.SimpleNamespace(tokenize=str.split)
    nltk.corpus, nltk.tokenize = corpus, tokenize
    inflect = types.ModuleType("inflect")
    inflect.engine = lambda: None
    return {"nltk": nltk, "nltk.corpus": corpus, "nltk.tokenize": tokenize, "inflect": inflect}


@pytest.fixture(scope="module")
def reference(entry):
    """g2p_en's ``G2p`` instance, its module imported with the stand-ins even where nltk is
    installed (it would look for its corpora, and download them); the package's modules
    are dropped again afterwards so nothing else sees them."""
    before = set(sys.modules)
    with pytest.MonkeyPatch.context() as mp:
        for name, module in _stand_ins().items():
            mp.setitem(sys.modules, name, module)
        yield importlib.import_module("g2p_en.g2p").G2p()
        for name in set(sys.modules) - before:
            if name.split(".")[0] == "g2p_en":
                del sys.modules[name]


def _predict_with_logits(ref, word):
    """``ref.predict(word)`` and the logits of each decoder step it ran (from the hidden
    states its own grucell returned, through its own fc_w and fc_b)."""
    states = []
    cell = ref.grucell

    def keep(x, h, w_ih, *rest):
        out = cell(x, h, w_ih, *rest)
        if w_ih is ref.dec_w_ih:
            states.append(out)
        return out

    ref.grucell = keep
    try:
        phonemes = ref.predict(word)
    finally:
        del ref.grucell   # the instance attribute; the method shows through again
    return phonemes, np.concatenate(states) @ ref.fc_w.T + ref.fc_b


def test_graph_is_unrolled_matmuls(entry):
    """One MatMul (the encoder's input projection over all steps) and a Gemm per
    recurrence and per decoder input and output projection; no GRU, Loop or Scan."""
    d = describe(entry.load())
    ops = d["ops"]
    assert ops["MatMul"] == 1 and ops["Gemm"] == (gp.STEPS) + 3 * gp.MAX_PHONEMES - 1   # step 0: b_hh only
    assert ops["Tanh"] == gp.STEPS + gp.MAX_PHONEMES and ops["ArgMax"] == gp.MAX_PHONEMES
    assert ops["Where"] == gp.STEPS - 1 + gp.MAX_PHONEMES   # the pad mask, the -1 after </s>
    assert not {"GRU", "LSTM", "Loop", "Scan", "If"} & set(ops) and not d["subgraph_nodes"]
    assert d["inputs"] == {gp.INPUT: {"dtype": "int64", "shape": ["batch", gp.STEPS]}}
    assert d["outputs"] == {gp.OUTPUT: ["batch", gp.MAX_PHONEMES], gp.LOGITS: ["batch", gp.MAX_PHONEMES, 74]}


def test_vocabularies_and_ids_are_g2p_ens(reference):
    assert gp.GRAPHEMES == tuple(reference.graphemes) and gp.PHONEMES == tuple(reference.phonemes)
    ids = gp.encode(["ab", "zebra"])
    assert ids.tolist() == [[3, 4, 2] + [0] * 18, [28, 7, 4, 20, 3, 2] + [0] * 15]
    # Its encode embeds the same ids: rows of enc_emb.
    np.testing.assert_array_equal(reference.encode("zebra")[0], reference.enc_emb[ids[1, :6]])
    with pytest.raises(ValueError, match="lowercase letters"):
        gp.encode(["Word"])
    with pytest.raises(ValueError, match="lowercase letters"):
        gp.encode(["a" * 21])


def test_pipeline_equals_g2p_en_predict(entry, fp32, reference):
    """Every one of 300 eval words (in the entry's batches of 32, so rows of different
    lengths share a run): the same phonemes as predict, and the logits of every step it
    ran within 1e-4 (measured 2.8e-5 on logits up to 33: float32 sums in another order;
    the smallest margin between the two best logits of a step is 1.4e-3)."""
    words = entry.words("eval", 300)
    assert len(words) == 300
    feeds = list(entry.eval_feeds(300))
    assert [len(f[gp.INPUT]) for f in feeds] == [32] * 9 + [12]
    worst = 0.0
    for start, feed in zip(range(0, 300, gp.BATCH), feeds):
        ids, logits = fp32.run([gp.OUTPUT, gp.LOGITS], feed)
        for word, seq, row in zip(words[start:start + gp.BATCH], gp.sequences(ids), logits):
            phonemes, theirs = _predict_with_logits(reference, word)
            assert [gp.PHONEMES[p] for p in seq] == phonemes, word
            steps = len(theirs)   # the phonemes and </s>
            assert steps == len(phonemes) + 1
            worst = max(worst, float(np.abs(row[:steps] - theirs).max()))
    assert worst <= 1e-4, worst


def test_export_equals_the_torch_model(entry, fp32):
    torch = pytest.importorskip("torch")
    net = gp.load_torch_model(torch)
    x = gp.encode(entry.words("eval", 64))
    with torch.no_grad():
        want_ids, want = (t.numpy() for t in net(torch.from_numpy(x)))
    got_ids, got = fp32.run([gp.OUTPUT, gp.LOGITS], {gp.INPUT: x})
    np.testing.assert_array_equal(got_ids, want_ids)
    np.testing.assert_allclose(got, want, atol=1e-4)


def test_pad_rows_do_not_change_a_word(fp32):
    """The mask is exact: a word alone, padded, gives the bitwise same logits as in a
    batch with the longest word there is (all 21 steps present)."""
    alone = fp32.run([gp.LOGITS], {gp.INPUT: gp.encode(["interpreter"])})[0]
    mixed = fp32.run([gp.LOGITS], {gp.INPUT: gp.encode(["interpreter", "a" * 20, "xy"])})[0]
    np.testing.assert_allclose(mixed[0], alone[0], atol=1e-6)


def _homographs(reference):
    return {w: (p1, p2) for w, (p1, p2, _) in reference.homograph2features.items()
            if gp._WORD.fullmatch(w)}


def test_fp32_pronounces_known_words(fp32, reference):
    """Common words whose CMUdict pronunciation is certain, exactly; and the headwords of
    g2p_en's homographs.en (which it never sends to the network): one of their two
    pronunciations for 64% of the 371, 80% if stress marks are ignored (measured)."""
    known = {"cat": "K AE1 T", "dog": "D AO1 G", "string": "S T R IH1 NG",
             "computer": "K AH0 M P Y UW1 T ER0", "function": "F AH1 NG K SH AH0 N",
             "value": "V AE1 L Y UW0", "list": "L IH1 S T"}
    assert gp.pronounce(fp32, list(known)) == [p.split() for p in known.values()]
    homographs = _homographs(reference)
    assert len(homographs) == 371
    # The entry's own reading of homographs.en (its truth_accuracy) is g2p_en's.
    assert gp.homographs() == {w: (tuple(a), tuple(b)) for w, (a, b) in homographs.items()}
    said = gp.pronounce(fp32, list(homographs))
    hits = [p in pair for p, pair in zip(said, homographs.values())]
    assert 0.58 <= np.mean(hits) <= 0.75, np.mean(hits)
    without_stress = [[s.rstrip("012") for s in p] for p in said]
    plain = [[[s.rstrip("012") for s in p] for p in pair] for pair in homographs.values()]
    assert np.mean([p in pair for p, pair in zip(without_stress, plain)]) >= 0.75


def test_words_are_distinct_normalised_and_the_splits_disjoint(entry):
    calib, evaluation = entry.words("calib", 10 ** 6), entry.words("eval", 10 ** 6)
    assert len(calib) > 1500 and 500 < len(evaluation) < 700   # measured 1636 and 590
    assert len(set(calib)) == len(calib) and len(set(evaluation)) == len(evaluation)
    assert not set(calib) & set(evaluation)
    assert all(gp._WORD.fullmatch(w) for w in calib + evaluation)
    assert entry.words("eval", 10) == evaluation[:10]
    in_calib_text = " ".join(prose.paragraphs("calib")).lower()
    assert not [w for w in evaluation[:200] if f" {w} " in in_calib_text]
    # g2p_en's normalisation: underscores go before tokenizing, inner hyphens or
    # apostrophes keep a token whole (then not alphabetic), periods split; a token with
    # a digit is one g2p_en spells out first, so it is not a word here.
    assert gp._TOKEN.findall(gp._normalise("The __init__() of os.path, built-in; don't utf8 or 42.")) == [
        "the", "init", "of", "os", "path", "built-in", "don't", "utf8", "or", "42"]
    assert {"init", "os", "path"} <= set(calib + evaluation)
    assert not {"don", "utf", "nd"} & set(calib + evaluation)


def test_edit_distance():
    assert gp.edit_distance("kitten", "sitting") == 3
    assert gp.edit_distance((), (1, 2)) == 2 and gp.edit_distance((1, 2, 3), (1, 2, 3)) == 0
    assert gp.edit_distance((1, 2, 3), (2, 3)) == 1


class _Misspeak:
    """FP32 with the first phoneme of every ``every``-th word of a run replaced by 'B'."""

    def __init__(self, session, every: int):
        self.session, self.every = session, every

    def run(self, names, feeds):
        outs = self.session.run(names, feeds)
        ids = outs[0].copy()
        ids[::self.every, 0] = gp.PHONEMES.index("B")
        return [ids] + outs[1:]


def test_fp32_metric_and_its_details(entry, fp32):
    n = 64
    assert entry.evaluate(n=n) == 1.0
    truth = entry.last_details.pop("truth_accuracy")
    assert entry.last_details == {"word_agreement": 1.0, "phoneme_agreement": 1.0, "words": n, "truth_words": 371}
    # The same share of homographs.en as g2p_en's own pipeline gives (test_fp32_pronounces_known_words).
    assert 0.58 <= truth <= 0.75
    # Every 4th word of each batch of 32 wrong in one phoneme; none starts with B (checked).
    first = [seq[0] for f in entry.eval_feeds(n) for seq in gp.sequences(fp32.run([gp.OUTPUT], f)[0])]
    assert gp.PHONEMES.index("B") not in first
    assert entry.evaluate(n=n, session_factory=lambda _: _Misspeak(fp32, 4)) == 0.75
    lengths = [len(s) for f in entry.eval_feeds(n) for s in gp.sequences(fp32.run([gp.OUTPUT], f)[0])]
    assert entry.last_details["phoneme_agreement"] == pytest.approx(1 - 16 / sum(lengths))


def test_missing_package_is_a_skip(monkeypatch, entry):
    """g2p_en gone: loading (even with the ONNX file cached), checking, evaluating and
    calibrating all raise the one ZooSkip naming the pip command."""
    assert entry.onnx_path().exists()
    monkeypatch.setitem(sys.modules, "g2p_en", None)   # find_spec says "not installed"
    e = gp.G2pEntry()
    for call in (e.load, lambda: e.evaluate(n=4), e.check_available, lambda: next(iter(e.calib_feeds(1)))):
        with pytest.raises(zoo.ZooSkip) as skip:
            call()
        assert str(skip.value) == "skipped: install g2p_en (pip install --no-deps g2p_en==2.1.0)"


def test_e4m3_compiles_end_to_end(entry):
    """E4M3 on 32 calibration words, the default 400 eval words: relative loss measured
    0.105 (phoneme agreement 0.959): one rounding in 40 recurrent steps can flip a
    greedy choice and the rest of the word follows it; the flips are words FP32 is unsure
    of, so accuracy against homographs.en's pronunciations stays FP32's."""
    r = fp8_vs_fp32(entry, calib_n=32, format="e4m3")
    assert r["fp32"] == 1.0 and r["details"]["words"] == entry.default_eval_n
    assert 0.03 <= r["relative_loss"] <= 0.16, r
    assert r["details"]["phoneme_agreement"] >= 0.93, r
    # Against true pronunciations nothing is lost: 0.6415 of homographs.en, as FP32 (measured).
    assert r["details"]["truth_accuracy"] >= 0.63, r


@pytest.mark.slow
def test_fp8_formats_rank_by_mantissa_bits(entry):
    """More mantissa bits, fewer changed words: E3M4 < E4M3 < E5M2 (measured relative
    losses 0.0575, 0.105, 0.1675 with 32 calibration words)."""
    loss = {fmt: fp8_vs_fp32(entry, calib_n=32, format=fmt)["relative_loss"] for fmt in ("e3m4", "e4m3", "e5m2")}
    assert 0 < loss["e3m4"] < loss["e4m3"] < loss["e5m2"] <= 0.25, loss
