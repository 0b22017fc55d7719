"""The underflow guard and the per-binade counts behind it.

References: the exact fraction of values below a threshold counted with numpy; what
ml_dtypes' float8 casts round to zero; what ``fp8onnx.evaluate`` counts in the compiled
model's own tensors; and, on a real model (Resemblyzer's LSTM speaker encoder), the task
metric of the FP32 model.
"""
from __future__ import annotations

import subprocess
import sys

import ml_dtypes
import numpy as np
import onnx
import pytest
from onnx import TensorProto as T
from onnx import helper, numpy_helper

import fp8onnx
from conftest import entry_or_skip
from fp8onnx import formats
from fp8onnx.api import compile_model
from fp8onnx.calibration import TensorStats, load_stats, save_stats
from fp8onnx.errors import CalibrationError, UserError
from fp8onnx.underflow import flush_rate


def wide(n=20000, seed=0, decades=5.0):
    """|x| log-uniform over ``decades`` decades with random signs, plus exact zeros: the
    shape of a power spectrum, which E3M4 cannot span."""
    rng = np.random.default_rng(seed)
    x = 10.0 ** rng.uniform(-decades, 0.0, n) * rng.choice([-1.0, 1.0], n)
    x[rng.random(n) < 0.1] = 0.0
    return x.astype(np.float32)


def stats_of(*arrays, name="t"):
    s = TensorStats.empty(name)
    for a in arrays:
        s.update(a)
    return s


def binade_share(x, t):
    """Share of the non-zero |x| in the binade holding ``t`` (the interpolation's error bound)."""
    a = np.abs(x[x != 0]).astype(np.float64)
    lo = 2.0 ** np.floor(np.log2(t))
    return float(np.mean((a >= lo) & (a < 2 * lo)))


def test_binades_count_every_finite_value_by_exponent():
    x = np.array([0.0, -0.0, 1e-45, 0.75, 1.0, -1.5, 2.0, 3.9, np.nan, np.inf, -np.inf], np.float32)
    s = stats_of(x[:4], x[4:])  # two batches add up
    expected = np.zeros(256, np.int64)
    for v in (0.0, -0.0, 1e-45):  # zeros and float32 subnormals share field 0
        expected[0] += 1
    expected[126] += 1            # 0.75 in [0.5, 1)
    expected[127] += 2            # 1.0 and 1.5 in [1, 2)
    expected[128] += 2            # 2.0 and 3.9 in [2, 4)
    np.testing.assert_array_equal(s.binades, expected)  # NaN and +-Inf are not counted
    assert s.nonzero_count == 5


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_fraction_below_against_numpy(dtype):
    x = wide().astype(dtype)
    s = stats_of(x[:7000], x[7000:])
    a = np.abs(x[x != 0])
    for k in range(-17, 1):  # power-of-two thresholds fall on binade edges: exact
        assert s.fraction_below(2.0 ** k) == pytest.approx(np.mean(a < 2.0 ** k), abs=1e-12)
    for t in (3e-5, 1.234e-3, 0.07, 0.3):  # inside a binade: within that binade's share
        exact = np.mean(a < t)
        assert abs(s.fraction_below(t) - exact) <= binade_share(x, t) + 1e-12
    assert s.fraction_below(0.0) == 0.0 and s.fraction_below(10.0) == 1.0
    assert stats_of(np.zeros(9, np.float32)).fraction_below(1.0) == 0.0  # no non-zero values


@pytest.mark.parametrize("fmt, ref", [("e3m4", ml_dtypes.float8_e3m4), ("e4m3", ml_dtypes.float8_e4m3fn),
                                      ("e5m2", ml_dtypes.float8_e5m2)])
def test_flush_rate_is_what_the_cast_rounds_to_zero(fmt, ref):
    # ml_dtypes' float8_e3m4 is the IEEE-style E3M4 (max 15.5), but its subnormals, the only
    # part that decides what rounds to zero, are the paper's: steps of 2**-6.
    x = wide(seed=1, decades=7.0)  # E3M4 and E4M3 flush the lowest decades, E5M2 none
    s = stats_of(x)
    f = formats.get(fmt)
    assert ml_dtypes.finfo(ref).smallest_subnormal == f.min_subnormal
    scale = np.float32(s.amax / f.max)
    nz = x != 0
    flushed = (x[nz] / scale).astype(ref).astype(np.float32) == 0
    t = s.amax / f.max * f.min_subnormal / 2
    assert abs(flush_rate(s, fmt) - flushed.mean()) <= binade_share(x, t) + 1e-12
    assert (flushed.mean() > 0.1) == (fmt != "e5m2")


# ---------------------------------------------------------------- compile
def two_branch_model():
    """x (wide range) -> MatMul -> y1 and z (plain) -> MatMul -> y2: only x needs the guard.
    w1 is the identity, exact in every format, so y1 shows x as the FP8 model sees it."""
    rng = np.random.default_rng(0)
    w1 = np.eye(16, dtype=np.float32)
    w2 = rng.standard_normal((16, 8)).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["y1"], name="spectrum_mm"),
             helper.make_node("MatMul", ["z", "w2"], ["y2"], name="plain_mm")]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", T.FLOAT, ["N", 16]),
                                       helper.make_tensor_value_info("z", T.FLOAT, ["N", 16])],
                          [helper.make_tensor_value_info("y1", T.FLOAT, ["N", 16]),
                           helper.make_tensor_value_info("y2", T.FLOAT, ["N", 8])],
                          [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def feeds(n, seed):
    rng = np.random.default_rng(seed)
    return [{"x": np.abs(wide(64, seed=seed + i)).reshape(4, 16),
             "z": rng.standard_normal((4, 16)).astype(np.float32)} for i in range(n)]


def unit(result, node):
    return next(u for u in result.report["units"] if u["node"] == node)


def test_guard_moves_only_the_wide_tensor_and_it_pays():
    model, calib, test = two_branch_model(), feeds(16, 0), feeds(8, 100)
    plain = compile_model(model, calibration=calib, format="e3m4")
    guarded = compile_model(model, calibration=calib, format="e3m4", underflow_guard=0.05)
    assert unit(plain, "spectrum_mm")["activation_format"] == "e3m4"
    assert unit(guarded, "spectrum_mm")["activation_format"] == "e4m3"
    assert unit(guarded, "plain_mm")["activation_format"] == "e3m4"
    assert any("flush to zero in E3M4" in n for n in unit(guarded, "spectrum_mm")["notes"])
    (rec,) = guarded.report["underflow_guard"]["tensors"]
    assert rec["tensor"] == "x" and rec["flush_rate"] - rec["fallback_flush_rate"] >= 0.05
    onnx.checker.check_model(guarded.model, full_check=True)
    assert "underflow_guard" in dict((p.key, p.value) for p in guarded.model.metadata_props)["fp8onnx.recipe"]
    # E4M3 activations have an ONNX type: a standard QuantizeLinear now reads x.
    q_types = {n.input[0]: n for n in guarded.model.graph.node if n.op_type == "QuantizeLinear"}
    assert "x" in q_types
    # Netron shows why: the guard's sentence in the inserted nodes' doc strings and the tensor map.
    why = f"E4M3 by the underflow guard 0.05: E3M4 would flush {100 * rec['flush_rate']:.1f}%"
    assert why in q_types["x"].doc_string
    assert sum(why in n.doc_string for n in guarded.model.graph.node) == 2  # its Q and DQ only
    assert not any("underflow" in n.doc_string for n in plain.model.graph.node)
    # On held-out data the guarded model keeps the quiet values E3M4 zeroes: the share of
    # non-zero inputs it flushes is about the fallback's rate, not E3M4's.
    x = np.concatenate([f["x"] for f in test])
    flushed = []
    for m in (plain, guarded):
        y1 = np.concatenate([fp8onnx.runtime.InferenceSession(m.model.SerializeToString()).run(["y1"], f)[0]
                             for f in test])
        flushed.append(np.mean(y1[x != 0] == 0))
    assert flushed[0] == pytest.approx(rec["flush_rate"], abs=0.05)
    assert flushed[1] == pytest.approx(rec["fallback_flush_rate"], abs=0.05)
    assert flushed[0] - flushed[1] > 0.2
    # Nothing to guard: E4M3 itself, or a limit no tensor reaches.
    for opts in ({"format": "e4m3", "underflow_guard": 0.05}, {"format": "e3m4", "underflow_guard": 0.9}):
        r = compile_model(model, calibration=calib, **opts)
        assert r.report["underflow_guard"]["tensors"] == []
        assert unit(r, "spectrum_mm")["activation_format"] == opts["format"]


def test_bad_guard_values_are_user_errors(tmp_path):
    model = two_branch_model()
    for bad in (-0.1, 1.0, "0.05", True):
        with pytest.raises(UserError, match="underflow guard .* is not a fraction in \\[0, 1\\)"):
            fp8onnx.compile(model, calibration=feeds(2, 0), format="e3m4", underflow_guard=bad)
    with pytest.raises(UserError, match="drop --underflow-guard or --dynamic"):
        fp8onnx.compile(model, format="e3m4", dynamic=True, underflow_guard=0.05)
    src = tmp_path / "m.onnx"
    onnx.save(model, src)
    out = tmp_path / "q.onnx"
    p = subprocess.run([sys.executable, "-m", "fp8onnx.compile", str(src), "-o", str(out), "--calib", "random",
                        "--format", "e3m4", "--underflow-guard", "1.5"], capture_output=True, text=True)
    assert p.returncode == 2 and p.stderr.count("\n") == 1 and "Traceback" not in p.stderr
    assert "underflow guard 1.5 is not a fraction" in p.stderr and not out.exists()


def test_cache_keeps_the_binades_and_refuses_the_old_version(tmp_path):
    model = two_branch_model()
    s = stats_of(wide(), name="x")
    save_stats(tmp_path / "c.npz", {"x": s}, model)
    back = load_stats(tmp_path / "c.npz", model)["x"]
    assert back == s and back.fraction_below(1e-3) == s.fraction_below(1e-3)
    with np.load(tmp_path / "c.npz") as z:  # a version-1 cache, as fp8onnx wrote it before
        arrays = {k: z[k] for k in z.files if not k.startswith("binades_")}
    arrays["header"] = np.array(str(arrays["header"]).replace('"version": 2', '"version": 1'))
    np.savez(tmp_path / "old.npz", **arrays)
    with pytest.raises(CalibrationError, match="has version 1, this fp8onnx writes 2: delete the file"):
        load_stats(tmp_path / "old.npz", model)


# ---------------------------------------------------------------- a real model
def test_resemblyzer_lstm_input_is_guarded_and_the_embedding_recovers():
    """The GE2E encoder's input is a power mel spectrum spanning five decades: E3M4 flushes
    most of its quiet bands, and the embedding moves (11% loss in the coverage study)."""
    entry = entry_or_skip("resemblyzer")
    model, calib = entry.load(), list(entry.calib_feeds(16))
    plain = compile_model(model, calibration=calib, format="e3m4", emit="emulate")
    guarded = compile_model(model, calibration=calib, format="e3m4", emit="emulate", underflow_guard=0.05)
    recs = guarded.report["underflow_guard"]["tensors"]
    assert [r["tensor"] for r in recs] == ["/lstm/Transpose_output_0"]
    # The guard's estimate from the binades against what the E3M4 model itself flushes
    # (fp8onnx.evaluate counts the zeros its kernels make, on the same data).
    ev = fp8onnx.evaluate(model, plain.model, calib, per_layer=True)
    seen = next(L for L in ev.layers if L.tensor == recs[0]["tensor"] and L.kind == "activation")
    assert recs[0]["flush_rate"] == pytest.approx(seen.underflow, abs=0.03)
    assert recs[0]["flush_rate"] > 0.6 and recs[0]["fallback_flush_rate"] < 0.45
    fp32 = entry.evaluate(n=16)
    losses = [fp8onnx.zoo.relative_loss(fp32, entry.evaluate(r.model, n=16, session_factory=fp8onnx.runtime.InferenceSession))
              for r in (plain, guarded)]
    assert losses[0] > 0.05 and losses[1] < 0.01, losses


def test_without_the_guard_the_compiler_says_what_underflows(tmp_path):
    model, calib = two_branch_model(), feeds(16, 0)
    plain = compile_model(model, calibration=calib, format="e3m4")
    guarded = compile_model(model, calibration=calib, format="e3m4", underflow_guard=0.05)
    (adv,) = plain.report["underflow_advice"]["tensors"]
    assert adv == guarded.report["underflow_guard"]["tensors"][0]  # what the guard would move
    assert unit(plain, "spectrum_mm")["activation_format"] == "e3m4"  # advice changes nothing
    assert "underflow_advice" not in compile_model(model, calibration=calib, format="e4m3").report
    # The CLI prints it as one line naming the tensor, both rates and the option.
    src, data = tmp_path / "m.onnx", tmp_path / "calib.npz"
    onnx.save(model, src)
    np.savez(data, x=np.concatenate([f["x"] for f in calib]), z=np.concatenate([f["z"] for f in calib]))
    for extra, want in (([], "--underflow-guard 0.05 quantizes them in E4M3"),
                        (["--underflow-guard", "0.05"], "underflow guard 0.05: 1 activation(s) moved to E4M3")):
        p = subprocess.run([sys.executable, "-m", "fp8onnx.compile", str(src), "-o", str(tmp_path / "q.onnx"),
                            "--calib", str(data), "--batch-size", "4", "--format", "e3m4", *extra],
                           capture_output=True, text=True)
        assert p.returncode == 0, p.stderr
        line = next(ln for ln in p.stdout.splitlines() if want in ln)
        assert "'x'" in line and f"{100 * adv['flush_rate']:.0f}% of its non-zero values in E3M4" in line


def test_each_threshold_is_searched_once(monkeypatch):
    """The guard's thresholds are the scales' thresholds: a kl or mse search (milliseconds per
    tensor) runs once per (tensor, format), and the scales equal a compile that never asked."""
    import fp8onnx.calibration as calib

    calls = []
    real = calib.choose_amax

    def counting(stats, method, fmt, **kw):
        calls.append((stats.name, getattr(fmt, "name", fmt)))
        return real(stats, method, fmt, **kw)

    model, data = two_branch_model(), feeds(16, 0)
    reference = compile_model(model, calibration=data, format="e3m4", calib_method="kl",
                              exclude=["spectrum_mm"]).model
    monkeypatch.setattr(calib, "choose_amax", counting)
    for guard in (0.0, 0.05):  # the advice and the guard alike
        calls.clear()
        result = compile_model(model, calibration=data, format="e3m4", calib_method="kl", underflow_guard=guard)
        assert sorted(calls) == sorted(set(calls)) and ("x", "e4m3") in calls
    scale = {i.name: i for i in reference.graph.initializer}["z_scale"]
    assert {i.name: i for i in result.model.graph.initializer}["z_scale"] == scale
