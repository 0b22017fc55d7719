"""Streaming stats and collection against numpy over all activations at once."""
from __future__ import annotations

import logging
import subprocess
import sys
import tracemalloc

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto as T
from onnx import helper, numpy_helper
from sklearn.datasets import load_digits

from fp8onnx.calibration import TensorStats, choose_amax, collect_stats, open_source
from fp8onnx.errors import CalibrationError


# ---------------------------------------------------------------- models
def digits_mlp(opset=17):
    """64 -> 32 -> 10 MLP on the digits data (weights fixed by a seed)."""
    rng = np.random.default_rng(0)
    w1 = rng.standard_normal((64, 32)).astype(np.float32) * 0.1
    b1 = rng.standard_normal(32).astype(np.float32)
    w2 = rng.standard_normal((32, 10)).astype(np.float32) * 0.3
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h"]),
        helper.make_node("Add", ["h", "b1"], ["hb"]),
        helper.make_node("Relu", ["hb"], ["r"]),
        helper.make_node("MatMul", ["r", "w2"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probs"], axis=-1),
        helper.make_node("ArgMax", ["probs"], ["label"], axis=1, keepdims=0),
    ]
    inits = [numpy_helper.from_array(a, n) for a, n in ((w1, "w1"), (b1, "b1"), (w2, "w2"))]
    g = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", T.FLOAT, ["N", 64])],
                          [helper.make_tensor_value_info("probs", T.FLOAT, ["N", 10]),
                           helper.make_tensor_value_info("label", T.INT64, ["N"])], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])


MLP_TENSORS = ["x", "h", "hb", "r", "logits", "probs"]


def digits_x(n=None):
    x = (load_digits().data / 16.0).astype(np.float32)
    return x if n is None else x[:n]


def reference(model, names, feeds):
    """Every requested activation of every feed, from one plain ORT run per feed."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    for n in names:
        m.graph.output.append(onnx.ValueInfoProto(name=n))
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    s = ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])
    out = {n: [] for n in names}
    for f in feeds:
        for n, a in zip(names, s.run(names, f)):
            out[n].append(a.ravel())
    return {n: np.concatenate(v) for n, v in out.items()}


def check_against(stats, ref):
    for n, a in ref.items():
        s = stats[n]
        assert s.amax == float(np.abs(a).max()), n
        assert s.min == float(a.min()) and s.max == float(a.max()), n
        assert s.count == a.size and int(s.hist.sum()) == a.size, n
        for q in (50.0, 99.0, 99.99):
            assert abs(s.quantile(q / 100) - np.percentile(np.abs(a), q, method="inverted_cdf")) <= s.bin_width, (n, q)


# ---------------------------------------------------------------- TensorStats
def test_single_batch_histogram_is_exact_bincount():
    x = np.random.default_rng(1).standard_normal(10_000).astype(np.float32)
    s = TensorStats.empty("x", bins=64)
    s.update(x)
    a = np.abs(x).astype(np.float64)
    want = np.bincount(np.minimum((a * (64 / s.hist_range)).astype(int), 63), minlength=64)
    np.testing.assert_array_equal(s.hist, want)
    assert s.hist_range == float(a.max())


def test_growing_range_keeps_counts_and_quantiles():
    rng = np.random.default_rng(2)
    chunks = [rng.standard_normal(5000).astype(np.float32) * scale
              for scale in (0.01, 0.5, 3.0, 3.0, 200.0, 1.0)]
    s = TensorStats.empty("x", bins=256)
    for c in chunks:
        s.update(c)
    a = np.abs(np.concatenate(chunks))
    assert s.amax == float(a.max()) and int(s.hist.sum()) == a.size
    assert s.hist_range >= s.amax and s.hist.size == 256  # memory fixed
    for q in (10, 50, 90, 99.9):
        assert abs(s.quantile(q / 100) - np.percentile(a, q, method="inverted_cdf")) <= s.bin_width


def test_nan_and_inf_are_counted_not_binned():
    s = TensorStats.empty("x", bins=8)
    s.update(np.array([1.0, np.nan, -np.inf, 2.0, np.nan], np.float32))
    assert (s.nan_count, s.inf_count, s.count, int(s.hist.sum())) == (2, 1, 5, 2)
    assert s.amax == np.inf and s.min == -np.inf and s.max == 2.0
    assert s.hist_range == 2.0  # the histogram's range ignores Inf
    with pytest.raises(CalibrationError, match="'x'.*2 NaN and 1 Inf"):
        choose_amax(s, "max", "e4m3")


def test_inf_without_nan():
    s = TensorStats.empty("x", bins=8)
    s.update(np.array([1.0, np.inf, -2.0, np.inf], np.float64))
    assert (s.nan_count, s.inf_count, s.count, int(s.hist.sum())) == (0, 2, 4, 2)
    assert s.amax == np.inf and s.min == -2.0 and s.hist_range == 2.0


def test_float16_and_odd_bins():
    s = TensorStats.empty("h")
    s.update(np.array([0.5, -3.0], np.float16))
    assert s.amax == 3.0
    with pytest.raises(ValueError, match="even"):
        TensorStats.empty("x", bins=7)


def test_importing_calibration_compiles_nothing():
    code = ("import sys, fp8onnx, fp8onnx.calibration; "
            "assert 'fp8onnx.calibration._hist' not in sys.modules; print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.stdout.strip() == "ok", out.stderr


# ---------------------------------------------------------------- collect_stats
def test_digits_stream_equals_full_run(tmp_path):
    model = digits_mlp()
    before = model.SerializeToString()
    path = tmp_path / "digits.npz"
    np.savez(path, x=digits_x(300))
    src = open_source(path, model, batch_size=7)  # 300 is not a multiple of 7: a short last batch
    stats = collect_stats(model, MLP_TENSORS + ["label"], src, progress=False)
    assert model.SerializeToString() == before  # the user's model is untouched
    assert "label" not in stats  # int64: no stats
    check_against(stats, reference(model, MLP_TENSORS, src))
    assert stats["x"].amax == 1.0 and stats["r"].min == 0.0


def test_grouped_collection_equals_single_pass(tmp_path, caplog):
    model = digits_mlp()
    path = tmp_path / "d.npz"
    np.savez(path, x=digits_x(64))
    src = open_source(path, model, batch_size=8)
    one = collect_stats(model, MLP_TENSORS, src, progress=False)
    with caplog.at_level(logging.INFO, logger="fp8onnx.calibration"):
        grouped = collect_stats(model, MLP_TENSORS, src, progress=False,
                                max_bytes_per_run=8 * 64 * 4)  # [x] [h hb] [r logits probs]
    assert any("6 tensors in 3 group(s)" in r.getMessage() for r in caplog.records)
    for n in MLP_TENSORS:
        a, b = one[n], grouped[n]
        assert (a.amax, a.min, a.max, a.count, a.hist_range) == (b.amax, b.min, b.max, b.count,
                                                                  b.hist_range)
        np.testing.assert_array_equal(a.hist, b.hist)


def test_one_shot_source_is_collected_in_one_pass_despite_budget(caplog):
    model = digits_mlp()
    x = digits_x(20)
    gen = ({"x": x[i:i + 1]} for i in range(20))
    stats = collect_stats(model, MLP_TENSORS, gen, progress=False, max_bytes_per_run=64)
    assert "read only once" in caplog.text
    check_against(stats, reference(model, MLP_TENSORS, [{"x": x}]))


def test_bounded_memory_does_not_grow_with_samples():
    """Peak Python-side memory over 1500 feeds is that of 50: nothing accumulates."""
    model = digits_mlp()
    x = digits_x()
    collect_stats(model, MLP_TENSORS, [{"x": x[:1]}], progress=False)  # compile, import
    peaks = []
    for n in (50, 1500):
        feeds = [{"x": x[i:i + 1]} for i in range(n)]
        tracemalloc.start()
        base = tracemalloc.get_traced_memory()[0]
        collect_stats(model, MLP_TENSORS, feeds, progress=False)
        peaks.append(tracemalloc.get_traced_memory()[1] - base)
        tracemalloc.stop()
    # Keeping the activations of 1450 more samples would take 1450 * 180 floats = 1 MB.
    assert peaks[1] < peaks[0] + 1450 * 180 * 4 // 4, peaks


def conv_constant_opset11():
    """Conv whose weight and bias are Constant nodes, opset 11, dynamic H and W."""
    rng = np.random.default_rng(3)
    w = rng.standard_normal((4, 1, 3, 3)).astype(np.float32)
    b = rng.standard_normal(4).astype(np.float32)
    nodes = [
        helper.make_node("Constant", [], ["W"], value=numpy_helper.from_array(w)),
        helper.make_node("Constant", [], ["B"], value=numpy_helper.from_array(b)),
        helper.make_node("Conv", ["img", "W", "B"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["cr"]),
        helper.make_node("GlobalAveragePool", ["cr"], ["gap"]),
        helper.make_node("Flatten", ["gap"], ["out"]),
    ]
    g = helper.make_graph(nodes, "conv", [helper.make_tensor_value_info("img", T.FLOAT, ["N", 1, "H", "W"])],
                          [helper.make_tensor_value_info("out", T.FLOAT, ["N", 4])])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 11)])
    m.ir_version = 6
    return m


def test_constant_weights_opset11_dynamic_shapes(tmp_path):
    model = conv_constant_opset11()
    imgs = load_digits().images.astype(np.float32) / 16.0
    d = tmp_path / "feeds"
    d.mkdir()
    for i in range(6):  # crops of different sizes: the shapes vary across samples
        h, w = 8 - i % 3, 5 + i % 4
        np.savez(d / f"{i:03d}.npz", img=imgs[i, :h, :w][None, None])
    names = ["img", "W", "c", "cr", "gap", "out"]
    stats = collect_stats(model, names, d, progress=False)
    src = open_source(d, model)
    check_against(stats, reference(model, ["img", "c", "cr", "gap", "out"], src))
    w = numpy_helper.to_array(model.graph.node[0].attribute[0].t)
    assert stats["W"].amax == float(np.abs(w).max())


def embedding_model():
    """int64 token ids of any length -> Gather from a Constant table -> mean -> MatMul."""
    rng = np.random.default_rng(4)
    table = rng.standard_normal((8, 6)).astype(np.float32)
    proj = rng.standard_normal((6, 3)).astype(np.float32)
    nodes = [
        helper.make_node("Constant", [], ["E"], value=numpy_helper.from_array(table)),
        helper.make_node("Gather", ["E", "ids"], ["emb"]),
        helper.make_node("ReduceMean", ["emb"], ["pooled"], axes=[1], keepdims=0),
        helper.make_node("MatMul", ["pooled", "P"], ["y"]),
        helper.make_node("Shape", ["ids"], ["shape"]),
    ]
    g = helper.make_graph(nodes, "emb", [helper.make_tensor_value_info("ids", T.INT64, ["N", "T"])],
                          [helper.make_tensor_value_info("y", T.FLOAT, ["N", 3]),
                           helper.make_tensor_value_info("shape", T.INT64, [2])],
                          [numpy_helper.from_array(proj, "P")])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])


def test_int_inputs_and_variable_lengths(tmp_path):
    model = embedding_model()
    d = tmp_path / "sent"
    d.mkdir()
    rng = np.random.default_rng(5)
    for i, t in enumerate((3, 11, 1, 7)):  # sentences of different lengths
        np.savez(d / f"s{i}.npz", ids=rng.integers(0, 8, (1, t)))
    stats = collect_stats(model, ["ids", "emb", "pooled", "y", "shape"], d, progress=False)
    assert set(stats) == {"emb", "pooled", "y"}  # ids and shape are int64
    check_against(stats, reference(model, ["emb", "pooled", "y"], open_source(d, model)))


def test_random_source_runs_through_a_model():
    stats = collect_stats(conv_constant_opset11(), ["c", "out"], "random", progress=False)
    assert stats["c"].count == 8 * 4 * 32 * 32  # 8 samples of 1x1x32x32 -> 4 channels


def test_untyped_tensors_without_shape_inference(monkeypatch):
    def broken(*a, **k):
        raise RuntimeError("no inference today")
    monkeypatch.setattr(onnx.shape_inference, "infer_shapes", broken)
    model = digits_mlp()
    x = digits_x(10)
    stats = collect_stats(model, ["h", "r", "label"], [{"x": x}], progress=False)
    assert set(stats) == {"h", "r"}  # label's int64 type was only found at run time
    check_against(stats, reference(model, ["h", "r"], [{"x": x}]))


def if_model():
    then_g = helper.make_graph([helper.make_node("Relu", ["x"], ["inner_then"]),
                                helper.make_node("Identity", ["inner_then"], ["t_out"])], "then", [],
                               [helper.make_tensor_value_info("t_out", T.FLOAT, ["N", 2])])
    else_g = helper.make_graph([helper.make_node("Neg", ["x"], ["e_out"])], "else", [],
                               [helper.make_tensor_value_info("e_out", T.FLOAT, ["N", 2])])
    nodes = [helper.make_node("ReduceSum", ["x"], ["s"], keepdims=0),
             helper.make_node("Greater", ["s", "zero"], ["cond"]),
             helper.make_node("If", ["cond"], ["y"], name="branch", then_branch=then_g,
                              else_branch=else_g)]
    g = helper.make_graph(nodes, "if", [helper.make_tensor_value_info("x", T.FLOAT, ["N", 2])],
                          [helper.make_tensor_value_info("y", T.FLOAT, ["N", 2])],
                          [numpy_helper.from_array(np.array(0.0, np.float32), "zero")])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])


def test_subgraph_tensors_are_reported_missing(caplog):
    feeds = [{"x": np.array([[1.0, -2.0]], np.float32)}]
    stats = collect_stats(if_model(), ["inner_then", "s", "y"], feeds, progress=False)
    assert stats["s"].amax == 1.0 and stats["y"].amax == 2.0
    assert "If node 'branch'" in stats["inner_then"].missing
    assert "inner_then" in caplog.text
    with pytest.raises(CalibrationError, match="inner_then.*no calibration stats"):
        choose_amax(stats["inner_then"], "max", "e4m3")
    with pytest.raises(ValueError, match="not in the model"):
        collect_stats(if_model(), ["nope"], feeds, progress=False)


def test_progress_bar_counts_samples(capsys, tmp_path):
    path = tmp_path / "d.npz"
    np.savez(path, x=digits_x(30))
    collect_stats(digits_mlp(), ["r"], open_source(path, digits_mlp(), batch_size=4),
                  progress=True)
    err = capsys.readouterr().err
    assert "30/30" in err and "sample/s" in err


def test_model_failure_is_a_calibration_error():
    model = digits_mlp()
    model.graph.input[0].type.tensor_type.shape.dim[1].dim_param = "F"  # no longer fixed at 64
    with pytest.raises(CalibrationError, match="failed to run the float model on calibration feed 0"):
        collect_stats(model, ["r"], [{"x": np.ones((1, 5), np.float32)}], progress=False)
