"""Real English prose for the text and OCR entries: CPython's own documentation.

``pydoc_data.topics`` ships with every CPython (it backs ``help("if")``): ~80 topics of
the language reference. Paragraphs of running prose are kept (headings, grammar rules
and code examples, which are indented, are dropped) and assigned to the ``calib`` or
``eval`` split by a CRC of their text, so the splits are disjoint even when a paragraph
repeats across topics, and stable across Python versions for unchanged paragraphs::

    >>> lines("eval", 3, width=36)   # doctest: +SKIP
    ['The "if" statement is used for', ...]
"""
from __future__ import annotations

import re
import textwrap
import zlib
from functools import lru_cache
from typing import List

from .base import check_split

__all__ = ["paragraphs", "lines", "sentences"]

# Typographic characters in the docs mapped to ASCII, which every model here reads.
_ASCII = str.maketrans({"\u2019": "'", "\u2018": "'", "\u201c": '"', "\u201d": '"',
                        "\u2014": "-", "\u2013": "-", "\u2026": "...", "\u00a0": " "})


@lru_cache(maxsize=None)
def _all_paragraphs() -> tuple:
    from pydoc_data.topics import topics

    out = []
    for key in sorted(topics):
        for block in topics[key].split("\n\n"):
            if not block.strip() or block.startswith((" ", "\t")):
                continue  # code, grammar and quoted blocks are indented
            body = [ln for ln in block.splitlines() if not re.fullmatch(r"[*=\-~^]+", ln.strip())]
            text = " ".join(" ".join(body).split()).translate(_ASCII)
            if len(text) < 60 or not text.isascii() or not text[0].isalpha():
                continue
            out.append(text)
    return tuple(dict.fromkeys(out))  # drop repeats, keep order


def paragraphs(split: str) -> List[str]:
    """Prose paragraphs of one split, ``"calib"`` or ``"eval"`` (disjoint, ~50/50)."""
    check_split(split)
    want = 1 if split == "eval" else 0
    return [p for p in _all_paragraphs() if zlib.crc32(p.encode()) % 2 == want]


def lines(split: str, n: int, width: int = 36) -> List[str]:
    """The first ``n`` text lines of the split, each paragraph wrapped at ``width`` chars."""
    out: List[str] = []
    for para in paragraphs(split):
        out.extend(textwrap.wrap(para, width=width))
        if len(out) >= n:
            break
    return out[:n]


def sentences(split: str, n: int, min_words: int = 5) -> List[str]:
    """The first ``n`` sentences (at least ``min_words`` words) of the split."""
    out: List[str] = []
    for para in paragraphs(split):
        for s in re.split(r"(?<=[.!?])\s+(?=[A-Z])", para):
            if len(s.split()) >= min_words:
                out.append(s)
        if len(out) >= n:
            break
    return out[:n]
