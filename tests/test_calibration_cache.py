"""The stats cache: exact round trip, model fingerprint, partial caches."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from fp8onnx.calibration import (collect_or_load, collect_stats, load_stats, model_fingerprint,
                                 save_stats)
from fp8onnx.errors import CalibrationError
from test_calibration_stats import MLP_TENSORS, digits_mlp, digits_x, if_model


def same(a, b):
    for k in ("name", "count", "nan_count", "inf_count", "hist_range", "missing"):
        assert getattr(a, k) == getattr(b, k), k
    for k in ("amax", "min", "max"):
        assert getattr(a, k) == getattr(b, k) or (np.isnan(getattr(a, k)) and np.isnan(getattr(b, k)))
    np.testing.assert_array_equal(a.hist, b.hist)
    np.testing.assert_array_equal(a.binades, b.binades)


class CountingFeeds:
    """A re-iterable list of feeds that counts passes, to see whether the model ran."""

    def __init__(self, feeds):
        self.feeds, self.passes = feeds, 0

    def __iter__(self):
        self.passes += 1
        return iter(self.feeds)


def test_round_trip_is_exact(tmp_path):
    model = digits_mlp()
    stats = collect_stats(model, MLP_TENSORS, [{"x": digits_x(50)}], progress=False)
    path = tmp_path / "cache"  # no .npz suffix: the exact path is used
    save_stats(path, stats, model)
    back = load_stats(path, model)
    assert list(back) == list(stats)
    for n in stats:
        same(stats[n], back[n])


def test_missing_and_empty_stats_survive(tmp_path):
    model = if_model()
    stats = collect_stats(model, ["inner_then", "s"], [{"x": np.ones((1, 2), np.float32)}],
                          progress=False)
    save_stats(tmp_path / "c.npz", stats, model)
    back = load_stats(tmp_path / "c.npz", model)
    same(stats["inner_then"], back["inner_then"])  # min=+inf, max=-inf, with its reason
    assert back["inner_then"].missing.startswith("inside the subgraph")


def test_fingerprint_ignores_doc_strings_but_not_weights():
    a = digits_mlp()
    b = digits_mlp()
    b.graph.node[0].doc_string = "exported by someone"
    b.doc_string = "hello"
    b.producer_name = "other"
    assert model_fingerprint(a) == model_fingerprint(b)
    c = digits_mlp()
    w = numpy_helper.to_array(c.graph.initializer[0]).copy()
    w[0, 0] += 1e-3
    c.graph.initializer[0].CopyFrom(numpy_helper.from_array(w, "w1"))
    assert model_fingerprint(a) != model_fingerprint(c)
    assert model_fingerprint(a) != model_fingerprint(digits_mlp(opset=13))


def test_wrong_model_and_bad_files(tmp_path):
    model = digits_mlp()
    stats = collect_stats(model, ["r"], [{"x": digits_x(5)}], progress=False)
    save_stats(tmp_path / "c.npz", stats, model)
    with pytest.raises(CalibrationError, match="different model.*delete the file or pass a "
                                               "different --calib-cache path"):
        load_stats(tmp_path / "c.npz", if_model())
    (tmp_path / "junk.npz").write_bytes(b"junk")
    with pytest.raises(CalibrationError, match="not an fp8onnx calibration cache"):
        load_stats(tmp_path / "junk.npz", model)
    np.savez(tmp_path / "other.npz", a=np.ones(2))
    with pytest.raises(CalibrationError, match="not an fp8onnx calibration cache"):
        load_stats(tmp_path / "other.npz", model)
    with pytest.raises(CalibrationError, match="not found"):
        load_stats(tmp_path / "none.npz", model)
    with pytest.raises(CalibrationError, match="lacks stats for tensors \\['h', 'logits'\\]"):
        load_stats(tmp_path / "c.npz", model, require=["r", "h", "logits"])


def test_collect_or_load_runs_only_what_is_missing(tmp_path):
    model = digits_mlp()
    before = model.SerializeToString()
    feeds = CountingFeeds([{"x": digits_x(40)}])
    cache = str(tmp_path / "calib.npz")
    first = collect_or_load(model, ["h", "r"], feeds, cache=cache, progress=False)
    assert feeds.passes == 1
    again = collect_or_load(model, ["r", "h"], feeds, cache=cache, progress=False)
    assert feeds.passes == 1 and list(again) == ["r", "h"]  # served from the cache
    same(first["r"], again["r"])
    more = collect_or_load(model, ["h", "logits"], feeds, cache=cache, progress=False)
    assert feeds.passes == 2
    assert set(load_stats(cache, model)) == {"h", "r", "logits"}  # merged and written back
    ref = collect_stats(model, ["logits"], [{"x": digits_x(40)}], progress=False)
    same(ref["logits"], more["logits"])
    assert model.SerializeToString() == before
    onnx.checker.check_model(model)
