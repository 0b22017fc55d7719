"""Calibration sources: every accepted form, re-iteration, sample caps and each validation error."""
from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto as T
from onnx import helper, numpy_helper
from onnxruntime.quantization import CalibrationDataReader

from fp8onnx.calibration import CalibrationSource, open_source
from fp8onnx.errors import CalibrationError


def model(fixed_channels=3, extra_init_input=False):
    """img [N, 3, H, W] float, ids [N, T] int64, mask [N, T] bool -> two outputs."""
    inputs = [helper.make_tensor_value_info("img", T.FLOAT, ["N", fixed_channels, "H", "W"]),
              helper.make_tensor_value_info("ids", T.INT64, ["N", "T"]),
              helper.make_tensor_value_info("mask", T.BOOL, ["N", "T"])]
    inits = []
    nodes = [helper.make_node("Relu", ["img"], ["a"]), helper.make_node("Not", ["mask"], ["nm"]),
             helper.make_node("Identity", ["ids"], ["i2"])]
    if extra_init_input:  # old exporters list initializers among the graph inputs
        inputs.append(helper.make_tensor_value_info("w", T.FLOAT, [1]))
        inits.append(numpy_helper.from_array(np.ones(1, np.float32), "w"))
    g = helper.make_graph(nodes, "m", inputs,
                          [helper.make_tensor_value_info("a", T.FLOAT, None),
                           helper.make_tensor_value_info("nm", T.BOOL, None),
                           helper.make_tensor_value_info("i2", T.INT64, None)], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])


def feed(n=1, h=4, w=5, t=6, seed=0):
    rng = np.random.default_rng(seed)
    return {"img": rng.standard_normal((n, 3, h, w)).astype(np.float32),
            "ids": rng.integers(0, 9, (n, t)), "mask": rng.random((n, t)) < 0.5}


# ---------------------------------------------------------------- forms
def test_npz_batches_along_leading_axis(tmp_path):
    p = tmp_path / "c.npz"
    f = feed(10)
    np.savez(p, **f)
    src = open_source(p, model(), batch_size=4)
    assert isinstance(src, CalibrationSource) and len(src) == 3 and src.num_samples == 10
    got = list(src)
    assert [g["img"].shape[0] for g in got] == [4, 4, 2]
    assert [src.samples_in(g) for g in got] == [4, 4, 2]
    np.testing.assert_array_equal(np.concatenate([g["img"] for g in got]), f["img"])
    assert len(list(src)) == 3  # a second pass gives the same feeds
    capped = open_source(p, model(), samples=5, batch_size=4)
    assert [g["ids"].shape[0] for g in capped] == [4, 1]


def test_samples_cap_warns_when_fewer_exist(tmp_path, caplog):
    p = tmp_path / "c.npz"
    np.savez(p, **feed(3))
    src = open_source(p, model(), samples=10)
    assert src.num_samples == 3 and len(list(src)) == 3
    assert "asked for 10 samples but the .npz file source holds only 3" in caplog.text
    caplog.clear()
    gen = (feed() for _ in range(2))
    assert len(list(open_source(gen, model(), samples=5))) == 2
    assert "asked for 5 samples but the iterable source gave only 2" in caplog.text


def test_directory_of_variable_shapes_sorted_by_name(tmp_path):
    shapes = {"b.npz": (6, 3), "a.npz": (8, 9), "c.npz": (2, 1)}
    for name, (h, t) in shapes.items():
        np.savez(tmp_path / name, **feed(h=h, t=t))
    (tmp_path / "notes.txt").write_text("ignored")
    src = open_source(tmp_path, model())
    assert len(src) == 3
    got = [(f["img"].shape[2], f["ids"].shape[1]) for f in src]
    assert got == [shapes["a.npz"], shapes["b.npz"], shapes["c.npz"]]
    assert len(open_source(tmp_path, model(), samples=2)) == 2


def test_random_source_shapes_dtypes_and_repeatability(caplog):
    src = open_source("random", model(), samples=3, batch_size=2)
    assert "RANDOM data" in caplog.text and "accuracy needs real data" in caplog.text
    feeds = list(src)
    f = feeds[0]
    assert f["img"].shape == (2, 3, 32, 32) and f["img"].dtype == np.float32
    assert f["ids"].shape == (2, 32) and f["ids"].dtype == np.int64
    assert set(np.unique(f["ids"])) == {0, 1}  # valid ids, token types and masks alike
    assert f["mask"].dtype == np.bool_ and f["mask"].any() and not f["mask"].all()
    assert abs(f["img"].mean()) < 0.2 and 0.8 < f["img"].std() < 1.2  # N(0, 1)
    assert [src.samples_in(g) for g in feeds] == [2, 1] and len(src) == 2  # the last is cut
    again = list(src)
    np.testing.assert_array_equal(again[1]["img"], feeds[1]["img"])  # same data each pass
    assert len(list(open_source("random", model()))) == 8  # the default sample count


def test_list_reiterates_generator_does_not():
    lst = [feed(seed=i) for i in range(3)]
    src = open_source(lst, model())
    assert len(src) == 3 and len(list(src)) == 3 and len(list(src)) == 3
    gen = open_source((feed(seed=i) for i in range(3)), model())
    assert len(list(gen)) == 3
    with pytest.raises(CalibrationError, match="can be read only once"):
        list(gen)
    with pytest.raises(TypeError, match="not known"):
        len(gen)


class Reader(CalibrationDataReader):
    """An onnxruntime CalibrationDataReader, as users of ORT quantization already have."""

    def __init__(self, n):
        self.data = iter([feed(seed=i) for i in range(n)])
        self.calls = 0

    def get_next(self):
        self.calls += 1
        return next(self.data, None)


class RewindingReader(Reader):
    def __init__(self, n):
        self.n = n
        super().__init__(n)

    def rewind(self):
        self.data = iter([feed(seed=i) for i in range(self.n)])


def test_calibration_data_reader_is_consumed_once():
    r = Reader(4)
    src = open_source(r, model())
    got = list(src)
    assert len(got) == 4 and r.calls == 5  # four feeds, then None
    np.testing.assert_array_equal(got[2]["img"], feed(seed=2)["img"])
    with pytest.raises(CalibrationError, match="read only once.*rewind"):
        list(src)
    rr = open_source(RewindingReader(2), model())
    assert len(list(rr)) == 2 and len(list(rr)) == 2


def test_initializer_inputs_are_not_required():
    src = open_source([feed()], model(extra_init_input=True))
    assert set(next(iter(src))) == {"img", "ids", "mask"}


def test_conversions_float64_and_int_to_float():
    f = feed()
    f["img"] = f["img"].astype(np.float64)
    got = next(iter(open_source([f], model())))
    assert got["img"].dtype == np.float32
    f["img"] = np.ones((1, 3, 2, 2), np.int32)
    assert next(iter(open_source([f], model())))["img"].dtype == np.float32
    f["ids"] = f["ids"].astype(np.int32)
    assert next(iter(open_source([f], model())))["ids"].dtype == np.int64


# ---------------------------------------------------------------- validation errors
def first(spec, m=None, **kw):
    return next(iter(open_source(spec, m or model(), **kw)))


def test_file_not_found_and_not_npz(tmp_path):
    with pytest.raises(CalibrationError, match="nope.npz not found: pass a .npz file, a directory"):
        open_source(tmp_path / "nope.npz", model())
    bad = tmp_path / "bad.npz"
    bad.write_text("not a zip")
    with pytest.raises(CalibrationError, match="not a readable .npz.*np.savez"):
        open_source(bad, model())
    npy = tmp_path / "one.npy"
    np.save(npy, np.ones(3))
    with pytest.raises(CalibrationError, match="single .npy array, not an .npz"):
        open_source(npy, model())


def test_names_mismatch_lists_missing_unknown_and_model_inputs(tmp_path):
    f = feed()
    f["image"] = f.pop("img")
    with pytest.raises(CalibrationError) as e:
        first([f])
    msg = str(e.value)
    assert "missing ['img']" in msg and "unknown ['image']" in msg
    assert "the model's inputs are ['img', 'ids', 'mask']" in msg
    np.savez(tmp_path / "c.npz", **f)
    with pytest.raises(CalibrationError, match="file .*c.npz does not match.*missing \\['img'\\]"):
        open_source(tmp_path / "c.npz", model())


def test_float_data_for_int_input_is_an_error():
    f = feed()
    f["ids"] = f["ids"].astype(np.float32)
    with pytest.raises(CalibrationError, match="'ids' of the model is int64 but .* holds float32: "
                                               "pass integer arrays"):
        first([f])
    f = feed()
    f["mask"] = f["mask"].astype(np.int64)
    with pytest.raises(CalibrationError, match="'mask' of the model is bool .*convert the data to bool"):
        first([f])


def test_rank_and_fixed_dim_contradictions():
    f = feed()
    f["img"] = f["img"][0]
    with pytest.raises(CalibrationError, match="rank 3.*expects rank 4.*add the batch axis"):
        first([f])
    f = feed()
    f["img"] = np.ones((1, 4, 5, 3), np.float32)  # NHWC given to an NCHW model
    with pytest.raises(CalibrationError, match="fixes dim 1 at 3 .*NCHW vs NHWC"):
        first([f])


def test_nan_and_inf_name_input_and_sample(tmp_path):
    f = feed(10)
    f["img"][6, 1, 2, 3] = np.nan
    np.savez(tmp_path / "c.npz", **f)
    src = open_source(tmp_path / "c.npz", model(), batch_size=4)
    with pytest.raises(CalibrationError, match="input 'img' of calibration sample 6 .*contains NaN"):
        list(src)
    g = [feed(seed=i) for i in range(3)]
    g[2]["img"][0, 0, 0, 0] = -np.inf
    with pytest.raises(CalibrationError, match="'img' of calibration sample 2 \\(feed 2\\) contains Inf"):
        list(open_source(g, model()))


def test_empty_sources(tmp_path):
    np.savez(tmp_path / "zero.npz", **feed(0))
    with pytest.raises(CalibrationError, match="zero samples"):
        open_source(tmp_path / "zero.npz", model())
    with pytest.raises(CalibrationError, match="list is empty"):
        open_source([], model())
    with pytest.raises(CalibrationError, match="yielded no samples"):
        list(open_source(iter([]), model()))
    (tmp_path / "d").mkdir()
    with pytest.raises(CalibrationError, match="holds no .npz files"):
        open_source(tmp_path / "d", model())
    with pytest.raises(CalibrationError, match="yielded no samples"):
        list(open_source(Reader(0), model()))


def test_other_bad_specs():
    with pytest.raises(CalibrationError, match="cannot use a int as calibration data"):
        open_source(3, model())
    with pytest.raises(CalibrationError, match="is a str, not a dict"):
        list(open_source(["img"], model()))
    with pytest.raises(CalibrationError, match="samples must be >= 1"):
        open_source([feed()], model(), samples=0)
