"""Full-page OCR for benchmarks: prose pages of any size, det -> crop -> rec, per-line text.

Builds on ``fp8onnx.zoo.ocr`` (font, rapidocr's crop and normalisation, CTC decoding,
FP32 recogniser) and ``fp8onnx.zoo.prose`` (CPython's documentation, disjoint splits).
What it adds: pages of a given size (e.g. 736 x 1472, what rapidocr feeds its detector)
filled with lines word-wrapped to the page width in pixels, and the OCR result read back
per rendered line, so a detector under test can be scored line by line against FP32::

    >>> pages = render_pages("eval", n_lines=40, height=736, width=1472)   # doctest: +SKIP
    >>> ocr = PageOcr()                                                     # doctest: +SKIP
    >>> result = ocr.read(det_session, pages[0])                            # doctest: +SKIP
    >>> result.lines[:2], result.boxes                                      # doctest: +SKIP
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from typing import Iterator, List

import numpy as np

__all__ = ["Page", "PageResult", "PageOcr", "render_pages", "det_feed", "det_model_path", "box_iou",
           "shift_pages", "grow_boxes", "compare_lines"]

FONT_SIZES = (24, 28, 32)   # cycled page by page: the detector sees several text heights
MARGIN = 40                 # pixels around the text block
LINE_PITCH = 1.75           # line spacing, in font sizes
GUTTER = 48                 # pixels between columns


@dataclass
class Page:
    """One rendered page: RGB uint8 image, the lines drawn, each line's box (left, top, right, bottom)."""

    image: np.ndarray
    lines: List[str]
    bands: List[tuple]


@dataclass
class PageResult:
    """What the pipeline read: one string per rendered line ('' when nothing was found there)."""

    lines: List[str]
    boxes: int                 # text boxes the detector found on the page
    stray: int = 0             # boxes whose centre falls in no line's band
    box_texts: List[str] = field(default_factory=list)
    rects: List[tuple] = field(default_factory=list)   # each box's bounding rectangle x0, y0, x1, y1
    line_of: List[int] = field(default_factory=list)   # each box's rendered line (-1: stray)


def det_model_path() -> str:
    """Path of rapidocr-onnxruntime's PP-OCRv4 detection model."""
    from fp8onnx.zoo.ocr import model_path

    return str(model_path("ch_PP-OCRv4_det_infer.onnx"))


def _wrap_px(words: List[str], font, max_px: float) -> Iterator[str]:
    """Greedy word wrap by rendered width (not characters): every line fits the page."""
    line: List[str] = []
    for w in words:
        if line and font.getlength(" ".join(line + [w])) > max_px:
            yield " ".join(line)
            line = []
        line.append(w)
    if line:
        yield " ".join(line)


def render_pages(split: str, *, n_pages: int = 0, n_lines: int = 0, height: int = 736,
                 width: int = 1472, columns: int = 1) -> List[Page]:
    """Pages of prose from ``split`` ("calib" or "eval"), black DejaVu Sans on white.

    Give ``n_pages`` (every page full) or ``n_lines`` (as many pages as needed, the last
    one cut so exactly ``n_lines`` lines are drawn). ``columns`` splits the page into
    newspaper columns (shorter lines), filled left to right. Each paragraph starts a new
    line; font sizes cycle through FONT_SIZES page by page.
    """
    from PIL import Image, ImageDraw

    from fp8onnx.zoo import prose
    from fp8onnx.zoo.ocr import _font

    if (n_pages > 0) == (n_lines > 0):
        raise ValueError("give exactly one of n_pages or n_lines, a positive count")
    words = iter([w for p in prose.paragraphs(split) for w in [*p.split(), None]])  # None: paragraph end
    pages: List[Page] = []
    drawn = 0
    while (n_pages and len(pages) < n_pages) or (n_lines and drawn < n_lines):
        size = FONT_SIZES[len(pages) % len(FONT_SIZES)]
        font = _font(size)
        pitch = int(size * LINE_PITCH)
        per_column = (height - 2 * MARGIN) // pitch
        col_w = (width - 2 * MARGIN - (columns - 1) * GUTTER) / columns
        room = per_column * columns
        if n_lines:
            room = min(room, n_lines - drawn)
        lines: List[str] = []
        while len(lines) < room:
            para = []
            for w in words:
                if w is None:
                    break
                para.append(w)
            if not para:
                raise ValueError(f"the {split!r} split ran out of prose after {drawn + len(lines)} lines")
            lines.extend(_wrap_px(para, font, col_w))
        lines = lines[:room]
        img = Image.new("RGB", (width, height), "white")
        draw = ImageDraw.Draw(img)
        bands = []
        for i, text in enumerate(lines):
            col, row = divmod(i, per_column)
            left, top = MARGIN + col * (col_w + GUTTER), MARGIN + row * pitch
            draw.text((left, top + (pitch - size) // 2), text, font=font, fill="black")
            bands.append((left - GUTTER / 2, top, left + col_w + GUTTER / 2, top + pitch))
        pages.append(Page(np.asarray(img), lines, bands))
        drawn += len(lines)
    return pages


def box_iou(ref: List[tuple], got: List[tuple]) -> List[float]:
    """For each rectangle in ``ref``, its best intersection-over-union with one in ``got``."""
    out = []
    for ax0, ay0, ax1, ay1 in ref:
        best = 0.0
        for bx0, by0, bx1, by1 in got:
            iw, ih = min(ax1, bx1) - max(ax0, bx0), min(ay1, by1) - max(ay0, by0)
            if iw > 0 and ih > 0:
                inter = iw * ih
                best = max(best, inter / ((ax1 - ax0) * (ay1 - ay0) + (bx1 - bx0) * (by1 - by0) - inter))
        out.append(best)
    return out


def det_feed(page: Page) -> np.ndarray:
    """The detector's input for ``page``: 1 x 3 x H x W float32 in [-1, 1] (rapidocr's norm)."""
    x = (page.image.astype(np.float32) / 255 - 0.5) / 0.5
    return np.ascontiguousarray(x.transpose(2, 0, 1)[None])


class PageOcr:
    """det (any session) -> rapidocr's DB post-processing -> crop -> FP32 PP-OCRv4 rec.

    The post-processing settings are the zoo's (``OcrDetEntry.read_pages``); the
    recogniser runs in onnxruntime in FP32, so only the detector differs between runs.
    """

    def __init__(self):
        from rapidocr_onnxruntime.ch_ppocr_det.utils import DBPostProcess

        from fp8onnx.zoo import model_bytes, ort_session
        from fp8onnx.zoo.ocr import OcrRecEntry

        self._post = DBPostProcess(thresh=0.3, box_thresh=0.5, max_candidates=1000,
                                   unclip_ratio=1.6, use_dilation=True, score_mode="fast")
        self._rec = OcrRecEntry()
        self._rec_session = ort_session(model_bytes(self._rec.load()))
        self._rec_in = self._rec.io_names()[0]
        self._cache: dict = {}   # (page checksum, box corners) -> text

    def boxes(self, det_session, page: Page) -> np.ndarray:
        """The detector's text boxes on ``page``: n x 4 x 2 int32 corners (DB post-processing)."""
        inp = det_session.get_inputs()[0].name
        prob = det_session.run(None, {inp: det_feed(page)})[0]
        boxes, _ = self._post(prob, page.image.shape[:2])
        return np.asarray(boxes, np.int32).reshape(-1, 4, 2)

    def read(self, det_session, page: Page, *, boxes=None) -> PageResult:
        """OCR of one page; box texts are assigned to the line whose box holds their centre.

        ``boxes`` (optional) replaces the detector's boxes, e.g. FP32's boxes moved a pixel, to
        measure what the recogniser alone makes of a change of crop geometry.
        """
        from fp8onnx.zoo.ocr import _crop, rec_input

        if boxes is None:
            boxes = self.boxes(det_session, page)
        key = zlib.crc32(page.image.tobytes())
        per_line: List[list] = [[] for _ in page.lines]
        stray, texts, rects, line_of = 0, [], [], []
        for b in boxes:
            b = np.asarray(b, np.float32)
            # The same corners give the same crop and so the same text: detectors that agree on
            # a box (most of them, on most boxes) share one recogniser run.
            ck = (key, b.tobytes())
            if ck not in self._cache:
                self._cache[ck] = self._rec.recognize(
                    self._rec_session, {self._rec_in: rec_input(_crop(page.image, b))}).strip()
            text = self._cache[ck]
            texts.append(text)
            rects.append((*b.min(axis=0).tolist(), *b.max(axis=0).tolist()))
            cx, cy = float(b[:, 0].mean()), float(b[:, 1].mean())
            hit = [i for i, (left, top, right, bottom) in enumerate(page.bands)
                   if top <= cy < bottom and left <= cx < right]
            line_of.append(hit[0] if hit else -1)
            if hit:
                per_line[hit[0]].append((float(b[:, 0].min()), text))
            else:
                stray += 1
        lines = [" ".join(t for _, t in sorted(parts) if t) for parts in per_line]
        return PageResult(lines, len(boxes), stray, texts, rects, line_of)


def shift_pages(pages: List[Page], dx: int = 1, dy: int = 1) -> List[Page]:
    """The pages moved right by ``dx`` and down by ``dy`` pixels (white fill, negative moves
    left/up): a change no reader would notice, so FP32 against itself on these pages is the
    noise floor of exact text agreement."""
    out = []
    h, w = pages[0].image.shape[:2] if pages else (0, 0)
    for p in pages:
        img = np.full_like(p.image, 255)
        img[max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = \
            p.image[max(-dy, 0):h - max(dy, 0), max(-dx, 0):w - max(dx, 0)]
        out.append(Page(img, p.lines, [(l + dx, t + dy, r + dx, b + dy) for l, t, r, b in p.bands]))
    return out


def grow_boxes(boxes: np.ndarray, px: int = 1) -> np.ndarray:
    """Each box's corners moved ``px`` pixels outward (away from the box centre)."""
    b = np.asarray(boxes, np.int32).reshape(-1, 4, 2)
    centre = b.mean(axis=1, keepdims=True)
    return (b + np.sign(b - centre).astype(np.int32) * px).astype(np.int32)


def compare_lines(ref: List[PageResult], got: List[PageResult], offset=(0, 0)) -> List[dict]:
    """Line by line, why ``got`` reads a line differently from ``ref`` (FP32).

    For every rendered line: whether the text is equal, equal once spaces are removed, the
    number of boxes on the line in each run, the lowest IoU of a ``ref`` box with its best
    match in ``got`` and the largest corner move in pixels between them. ``offset`` is the
    (dx, dy) by which ``got``'s page was shifted; it is taken off before comparing boxes.
    A line read differently with the same number of boxes is a crop difference (the same
    FP32 recogniser saw slightly different crops); a different number is a segmentation
    difference (a box split, merged, lost or added).
    """
    dx, dy = offset
    rows = []
    for r, g in zip(ref, got):
        for i, (a, b) in enumerate(zip(r.lines, g.lines)):
            ra = [x for x, k in zip(r.rects, r.line_of) if k == i]
            gb = [(x0 - dx, y0 - dy, x1 - dx, y1 - dy) for (x0, y0, x1, y1), k in zip(g.rects, g.line_of) if k == i]
            ious = box_iou(ra, gb)
            move = [min((max(abs(p - q) for p, q in zip(x, y)) for y in gb), default=float("inf")) for x in ra]
            rows.append({"equal": a == b, "equal_nospace": a.replace(" ", "") == b.replace(" ", ""),
                         "boxes": (len(ra), len(gb)), "min_iou": min(ious, default=1.0),
                         "max_move": max(move, default=0.0), "ref": a, "got": b})
    return rows
