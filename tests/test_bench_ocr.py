"""The OCR benchmark's page pipeline (tools/ocr_pipeline.py) and its line-by-line comparison.

The benchmark's figures rest on these helpers: the held-out pages must be real prose
disjoint from calibration, the noise-floor pages must be the same pages moved, and a
line must count as equal only when the text is. Checked against the rendered text and
against hand-built results, not against the helpers' own output.
"""
import numpy as np
import pytest

import tool_modules

pipe = tool_modules.load("ocr_pipeline")


def test_eval_pages_are_real_prose_disjoint_from_calibration():
    pytest.importorskip("PIL")
    evals = pipe.render_pages("eval", n_lines=240, height=736, width=1472)
    calib = pipe.render_pages("calib", n_pages=8, height=736, width=1472)
    ev_lines = [t for p in evals for t in p.lines]
    cal_lines = {t for p in calib for t in p.lines}
    assert len(ev_lines) == 240                       # one line = 0.42% of the text goal
    assert len(set(ev_lines)) > 230                   # prose, not one line repeated
    # held out: disjoint paragraphs, so only a paragraph's short last line (one word such as
    # "methods.") can be drawn in both splits
    assert all(len(t.split()) <= 2 for t in cal_lines & set(ev_lines))
    assert all(p.image.shape == (736, 1472, 3) for p in evals)
    # every line fits its band, and the band holds ink (the text was drawn)
    for p in evals[:3]:
        for left, top, right, bottom in p.bands:
            band = p.image[int(top):int(bottom), max(int(left), 0):min(int(right), 1472)]
            assert band.min() < 128


def test_shift_pages_moves_pixels_and_bands():
    img = np.full((64, 96, 3), 255, np.uint8)
    img[10:20, 30:50] = 0
    page = pipe.Page(img, ["x"], [(30, 10, 50, 20)])
    for dx, dy in ((1, 1), (1, 0), (0, 1), (-2, 3)):
        moved = pipe.shift_pages([page], dx, dy)[0]
        ys, xs = np.nonzero(moved.image[..., 0] == 0)
        assert (ys.min(), ys.max(), xs.min(), xs.max()) == (10 + dy, 19 + dy, 30 + dx, 49 + dx)
        assert moved.bands == [(30 + dx, 10 + dy, 50 + dx, 20 + dy)]
        assert moved.image.shape == img.shape


def test_grow_boxes_moves_every_corner_outward():
    box = np.array([[[10, 20], [50, 20], [50, 40], [10, 40]]], np.int32)
    grown = pipe.grow_boxes(box, 1)
    assert grown.tolist() == [[[9, 19], [51, 19], [51, 41], [9, 41]]]


def _result(lines, boxes):
    """PageResult from (rect, line index) pairs."""
    return pipe.PageResult(lines, len(boxes), 0, [""] * len(boxes), [r for r, _ in boxes], [k for _, k in boxes])


def test_compare_lines_classifies_crop_and_segmentation_differences():
    ref = _result(["a b", "c d", "e f"], [((0, 0, 100, 20), 0), ((0, 30, 100, 50), 1), ((0, 60, 100, 80), 2)])
    got = _result(["a b", "cd", "e f"],
                  [((0, 0, 100, 20), 0), ((1, 30, 101, 51), 1), ((0, 60, 40, 80), 2), ((45, 60, 100, 80), 2)])
    rows = pipe.compare_lines([ref], [got])
    assert [r["equal"] for r in rows] == [True, False, True]
    assert [r["equal_nospace"] for r in rows] == [True, True, True]
    assert rows[0]["max_move"] == 0 and rows[0]["min_iou"] == 1.0
    assert rows[1]["boxes"] == (1, 1) and rows[1]["max_move"] == 1          # a crop moved one pixel
    assert rows[1]["min_iou"] == pytest.approx(99 * 20 / (100 * 20 + 100 * 21 - 99 * 20))
    assert rows[2]["boxes"] == (1, 2)                                       # a box split in two
    # a shifted page's boxes are moved back before comparing
    shifted = _result(["a b"], [((2, 3, 102, 23), 0)])
    assert pipe.compare_lines([_result(["a b"], [((0, 0, 100, 20), 0)])], [shifted], (2, 3))[0]["max_move"] == 0


@pytest.mark.slow
def test_fp32_page_ocr_reads_the_rendered_text_and_caches_crops():
    pytest.importorskip("rapidocr_onnxruntime")
    import onnxruntime as ort

    page = pipe.render_pages("eval", n_lines=6, height=736, width=1472)[0]
    sess = ort.InferenceSession(pipe.det_model_path(), providers=["CPUExecutionProvider"])
    ocr = pipe.PageOcr()
    first = ocr.read(sess, page)
    from fp8onnx.zoo.ocr import char_accuracy

    assert first.boxes == 6 and first.stray == 0
    assert np.mean([char_accuracy(a.replace(" ", ""), b.replace(" ", ""))
                    for a, b in zip(first.lines, page.lines)]) > 0.97
    cached = len(ocr._cache)
    again = ocr.read(sess, page)
    assert again.lines == first.lines and len(ocr._cache) == cached     # same boxes, no new rec run
    moved = ocr.read(sess, page, boxes=pipe.grow_boxes(ocr.boxes(sess, page), 1))
    assert len(ocr._cache) == cached + 6 and moved.boxes == 6


@pytest.mark.parametrize("out,says", [("{tmp}", "is a folder"), ("{tmp}/missing/b.md", "does not exist")])
def test_bad_out_path_fails_before_any_work(tmp_path, capsys, out, says):
    """The report path is checked first: a folder or a missing parent used to fail with a
    traceback after minutes of compiling and scoring."""
    bench = tool_modules.load("bench_ocr_calib")
    with pytest.raises(SystemExit) as exc:
        bench.main(["--skip-peer", "--out", out.format(tmp=tmp_path)])
    assert exc.value.code == 2 and says in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []
