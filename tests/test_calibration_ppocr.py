"""Calibration on a real model: PP-OCR's direction classifier (rapidocr-onnxruntime) fed
real rendered text lines (CPython's documentation prose, via fp8onnx.zoo).

The classifier is opset 11 with every weight in a Constant node and a batch dim of -1:
the stats must equal those of a direct full-output run, grouped or not, and memory must
not grow with the number of samples.
"""
from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

from fp8onnx.calibration import choose_amax, collect_stats
from test_calibration_stats import check_against, reference

zoo = pytest.importorskip("fp8onnx.zoo")


@pytest.fixture(scope="module")
def cls():
    entry = zoo.get("ppocr_cls")
    try:
        model = entry.load()
        feeds = list(entry.calib_feeds(12))
    except zoo.ZooSkip as e:
        pytest.skip(str(e))
    names = [o for n in model.graph.node if n.op_type != "Constant" for o in n.output]
    return model, feeds, names


def test_stats_equal_a_direct_full_output_run(cls):
    model, feeds, names = cls
    stats = collect_stats(model, names, feeds, progress=False)
    floats = [n for n in names if n in stats]
    assert len(floats) > 200 and len(floats) < len(names)  # Shape & co. are int64: no stats
    check_against(stats, reference(model, floats, feeds))
    for n in floats:  # every method gives a usable threshold on real activations
        for m in ("max", "percentile", "mse", "kl"):
            t = choose_amax(stats[n], m, "e4m3")
            assert 0 < t <= max(stats[n].amax, 1.0), (n, m)


def test_grouped_equals_single_pass_on_real_model(cls):
    model, feeds, names = cls
    one = collect_stats(model, names, feeds[:4], progress=False)
    grouped = collect_stats(model, names, feeds[:4], progress=False, max_bytes_per_run=1 << 20)
    assert one.keys() == grouped.keys()
    for n in one:
        assert one[n].amax == grouped[n].amax and one[n].count == grouped[n].count, n
        np.testing.assert_array_equal(one[n].hist, grouped[n].hist)


def test_memory_does_not_grow_with_samples(cls):
    model, feeds, names = cls
    stats = collect_stats(model, names, feeds[:1], progress=False)  # warm up
    one_feed = sum(a.nbytes for a in reference(model, list(stats), feeds[:1]).values())
    peaks = []
    for n in (2, 12):
        tracemalloc.start()
        base = tracemalloc.get_traced_memory()[0]
        collect_stats(model, names, feeds[:n], progress=False)
        peaks.append(tracemalloc.get_traced_memory()[1] - base)
        tracemalloc.stop()
    # Holding the activations of the 10 extra samples would add 10 * one_feed (~130 MB).
    assert peaks[1] < peaks[0] + one_feed / 2, (peaks, one_feed)
    assert peaks[0] < 3 * one_feed, (peaks, one_feed)  # about one feed's fetched tensors


@pytest.mark.slow
def test_recognizer_directory_of_variable_widths(tmp_path):
    """PP-OCRv4 rec: one .npz per rendered line, each its own width (dynamic W)."""
    entry = zoo.get("ppocr_rec")
    try:
        model = entry.load()
        feeds = list(entry.calib_feeds(6))
    except zoo.ZooSkip as e:
        pytest.skip(str(e))
    widths = {f["x"].shape[-1] for f in feeds}
    assert len(widths) > 1  # the point of the test: shapes differ between samples
    for i, f in enumerate(feeds):
        np.savez(tmp_path / f"line{i:02d}.npz", **f)
    names = [o for n in model.graph.node if n.op_type != "Constant" for o in n.output]
    stats = collect_stats(model, names, tmp_path, progress=False)
    floats = [n for n in names if n in stats]
    ref = reference(model, floats, feeds)
    for n in floats:
        assert stats[n].amax == float(np.abs(ref[n]).max()), n
        assert stats[n].count == ref[n].size and int(stats[n].hist.sum()) == ref[n].size, n
