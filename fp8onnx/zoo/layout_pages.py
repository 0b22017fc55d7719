"""Document pages for the rapid_layout zoo entry (``layout.py``), composed from prose,
photos and tables by a seeded plan, each page twice the detector's input size.

Pages are 1216 x 1600 (``PAGE``; the detector's 608 x 800 input is a halving) of CPython's
documentation prose (``prose.py``; disjoint paragraphs for calibration and evaluation) in
DejaVu Sans, laid out by a plan seeded per split and page: on most pages a running header,
a page footer and a bold title, paragraphs in one of four body sizes, on some a
scikit-image photo (``photos.py``, disjoint per split) as a figure with a "Figure k."
caption under it and a ruled table of prose words under a "Table k." caption. Each
paragraph is shown once, in order; one cut at the foot of a page goes on at the top of the
next. 65 eval pages, 63 calibration pages.

``page_plan(split)`` gives every page as layout elements ``(kind, y, payload)`` (the kinds
are the CDLA classes the detector knows: header, footer, title, text, figure,
figure_caption, table, table_caption), ``render(plan)`` draws one, ``pages(split, n)``
yields the first ``n`` drawn pages.
"""
from __future__ import annotations

import importlib.util
import zlib
from functools import lru_cache
from pathlib import Path
from typing import Iterator, List

import numpy as np

from . import prose
from .base import check_split
from .ocr import _font
from .photos import skimage_photo

__all__ = ["pages", "page_plan", "render", "PAGE", "MARGIN", "PHOTOS", "HEADERS"]

PAGE = (1216, 1600)             # width, height: twice the input, so the resize is a halving
MARGIN = 96
# Photos in the scikit-image wheel (no text in them), split disjointly.
PHOTOS = {"eval": ("astronaut.png", "camera.png", "chelsea.png", "coffee.png", "rocket.jpg",
                   "moon.png", "horse.png"),
          "calib": ("motorcycle_left.png", "ihc.png", "retina.jpg", "hubble_deep_field.jpg",
                    "coins.png", "cell.png", "clock_motion.png", "brick.png")}
HEADERS = ("The Python Language Reference", "Python documentation", "CPython reference manual",
           "Language Reference: Data model and execution")


@lru_cache(maxsize=4)
def _bold(size: int):
    from PIL import ImageFont

    spec = importlib.util.find_spec("matplotlib")
    if spec is not None and spec.submodule_search_locations:
        ttf = Path(list(spec.submodule_search_locations)[0], "mpl-data", "fonts", "ttf",
                   "DejaVuSans-Bold.ttf")
        if ttf.exists():
            return ImageFont.truetype(str(ttf), size)
    return _font(size)


def _wrap(words: List[str], font, width: int) -> List[str]:
    """Greedy line filling of ``words`` to ``width`` pixels in ``font``."""
    lines, line = [], ""
    for w in words:
        cand = f"{line} {w}" if line else w
        if line and font.getlength(cand) > width:
            lines.append(line)
            cand = w
        line = cand
    return lines + ([line] if line else [])


@lru_cache(maxsize=2)
def page_plan(split: str) -> tuple:
    """Every page the split's prose fills, as a tuple of layout elements
    ``(kind, y, payload)``; each paragraph is shown once, in order, a paragraph cut at
    the foot of a page going on at the top of the next."""
    check_split(split)
    paras = prose.paragraphs(split)
    plans, pos, d, carry = [], 0, 0, []
    width = PAGE[0] - 2 * MARGIN
    while pos < len(paras) or carry:
        rng = np.random.default_rng(zlib.crc32(f"{split}/{d}".encode()))
        body = int(rng.choice((24, 26, 28, 30)))
        lead = round(body * 1.45)
        elements, y = [], MARGIN
        footer = rng.random() < 0.75
        bottom = PAGE[1] - MARGIN - 60 * footer     # the body keeps clear of the footer
        if rng.random() < 0.75:
            elements.append(("header", MARGIN // 2, (HEADERS[d % len(HEADERS)], 18)))
            y += 24
        if footer:
            elements.append(("footer", PAGE[1] - MARGIN // 2 - 18, (f"- {d + 1} -", 18)))
        if rng.random() < 0.85 and not carry and pos < len(paras):   # a page going on has none
            words = paras[pos].split()[: int(rng.integers(2, 7))]
            size = int(rng.choice((36, 40, 46)))
            title = f"{d % 9 + 1}.{int(rng.integers(1, 9))} " + " ".join(words).rstrip(".,:;")
            elements.append(("title", y, (title, size)))
            y += round(size * 1.3) + lead
        slots = ["text"] * 4
        if rng.random() < 0.6:
            slots.insert(int(rng.integers(1, 4)), "figure")
        if rng.random() < 0.5:
            slots.insert(int(rng.integers(1, 5)), "table")
        for slot in slots + ["text"] * 20:
            if pos >= len(paras) and not carry:
                break
            if slot == "text":
                words = carry or paras[pos].split()
                lines = _wrap(words, _font(body), width)
                fit = min(len(lines), (bottom - y) // lead)
                if fit < min(2, len(lines)):
                    break               # no room for two lines: the paragraph opens the next page
                elements.append(("text", y, (tuple(lines[:fit]), body, lead)))
                pos += not carry
                # a paragraph cut at the page foot goes on at the top of the next page
                carry = words[sum(len(ln.split()) for ln in lines[:fit]):]
                y += fit * lead + round(lead * 0.8)
            elif pos >= len(paras):
                continue                # figures and tables borrow the next paragraph's words
            elif slot == "figure":
                photo = PHOTOS[split][d % len(PHOTOS[split])]
                fw = int(rng.integers(380, 720))
                cap = "Figure %d. " % (d + 1) + " ".join(paras[pos].split()[:int(rng.integers(4, 10))])
                h = _photo_height(photo, fw)
                if y + h + 60 > bottom:
                    continue
                elements.append(("figure", y, (photo, fw)))
                elements.append(("figure_caption", y + h + 16, (cap.rstrip(".,:;") + ".", 20)))
                y += h + 16 + 28 + lead
            else:
                rows, cols = int(rng.integers(3, 7)), int(rng.integers(3, 6))
                row_h = 40
                if y + 40 + rows * row_h > bottom:
                    continue
                words = paras[pos].split()
                cells = tuple(tuple(words[(r * cols + c) % len(words)].strip(".,:;()\"'")[:14]
                                    for c in range(cols)) for r in range(rows))
                cap = "Table %d. " % (d + 1) + " ".join(words[-int(rng.integers(3, 8)):])
                elements.append(("table_caption", y, (cap.rstrip(".,:;") + ".", 20)))
                elements.append(("table", y + 40, (cells, row_h, 20)))
                y += 40 + rows * row_h + lead
        if any(e[0] == "text" for e in elements):
            plans.append(tuple(elements))
        d += 1
    return tuple(plans)


@lru_cache(maxsize=None)
def _photo_height(photo: str, width: int) -> int:
    h, w = skimage_photo(photo).shape[:2]
    return round(h * width / w)


def render(plan: tuple) -> np.ndarray:
    """One page plan drawn as an RGB uint8 PAGE image (black text on white)."""
    from PIL import Image, ImageDraw

    img = Image.new("RGB", PAGE, "white")
    draw = ImageDraw.Draw(img)
    for kind, y, payload in plan:
        if kind == "header":
            text, size = payload
            draw.text((MARGIN, y), text, font=_font(size), fill=(60, 60, 60))
            draw.line((MARGIN, y + size + 8, PAGE[0] - MARGIN, y + size + 8), fill=(90, 90, 90), width=2)
        elif kind in ("footer", "figure_caption", "table_caption"):     # centred lines
            text, size = payload
            draw.text((PAGE[0] // 2, y), text, font=_font(size), anchor="mt",
                      fill=(60, 60, 60) if kind == "footer" else "black")
        elif kind == "title":
            text, size = payload
            draw.text((MARGIN, y), text, font=_bold(size), fill="black")
        elif kind == "text":
            lines, size, lead = payload
            for i, line in enumerate(lines):
                draw.text((MARGIN, y + i * lead), line, font=_font(size), fill="black")
        elif kind == "figure":
            photo, fw = payload
            pic = Image.fromarray(skimage_photo(photo)).resize((fw, _photo_height(photo, fw)),
                                                               Image.BILINEAR)
            img.paste(pic, ((PAGE[0] - fw) // 2, y))
        elif kind == "table":
            cells, row_h, size = payload
            cols = len(cells[0])
            col_w = min(200, (PAGE[0] - 2 * MARGIN) // cols)
            x0 = (PAGE[0] - cols * col_w) // 2
            for r, row in enumerate(cells):
                for c, word in enumerate(row):
                    draw.text((x0 + c * col_w + 10, y + r * row_h + row_h // 2), word,
                              font=_bold(size) if r == 0 else _font(size), fill="black", anchor="lm")
            for r in range(len(cells) + 1):
                draw.line((x0, y + r * row_h, x0 + cols * col_w, y + r * row_h), fill="black",
                          width=3 if r in (0, 1, len(cells)) else 1)
            for c in (0, cols):
                draw.line((x0 + c * col_w, y, x0 + c * col_w, y + len(cells) * row_h), fill="black", width=1)
    return np.asarray(img)


def pages(split: str, n: int) -> Iterator[np.ndarray]:
    """The first ``n`` rendered pages of ``split`` (RGB uint8, 1600 x 1216 x 3)."""
    for plan in page_plan(split)[:n]:
        yield render(plan)
