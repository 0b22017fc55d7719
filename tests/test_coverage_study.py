"""Coverage-study settings and cost figures added after tests/test_coverage.py's sweep:
least-error weight scales (``-wmse`` configurations) and run time measured side by side.

A ``--quick`` run of one ``-wmse`` configuration must compile with MSE weight scales: the
row reads the method back from the compiled model's stored recipe, and the worker's own
compile gives per-channel scales below max scaling's ``amax / 448`` (computed here from the
FP32 weights) on some channels and never above it. The report counts ``-wmse`` recipes as
fixed recipes and among the best-of choices; results without them read as before.
"""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from onnx import numpy_helper

import tool_modules
from tool_modules import TOOLS

from fp8onnx import zoo

cov = tool_modules.load("coverage_study")
report = tool_modules.load("coverage_report")
worker = tool_modules.load("coverage_worker")

E4M3_MAX = 448.0


def test_wmse_names_parse_and_round_trip():
    names = cov.config_names()
    wmse = [n for n in names if n.endswith("-wmse")]
    assert {"e4m3-std-wmse", "e3m4-std-wmse", "int8-std-wmse", "e3m4w.e4m3a-std-wmse",
            "e3m4-std-bn-wmse", "e3m4-std-ba-wmse"} == set(wmse)
    assert names.index("e3m4w.e4m3a-std-bn") < names.index("e4m3-std-wmse") < names.index("e4m3-std-tuned")
    assert cov.config_spec("e3m4-std-bn-wmse") == {"kind": "ours", "format": "e3m4", "scheme": "standard",
                                                   "bn_calib": True, "weight_calib_method": "mse"}
    assert cov.config_spec("e3m4w.e4m3a-std-wmse") == {"kind": "ours", "weight_format": "e3m4",
                                                       "activation_format": "e4m3", "scheme": "standard",
                                                       "bn_calib": False, "weight_calib_method": "mse"}
    assert cov.config_spec("int8-ext-wmse")["weight_calib_method"] == "mse"
    # max scaling is the compiler's default: the spec leaves it out, as before -wmse existed
    assert "weight_calib_method" not in cov.config_spec("e4m3-std-bn")
    for n in wmse + ["e4m3-ext-bn-wmse"]:
        token, pair, (scheme, suffix) = report.split_config(n)
        spec = cov.config_spec(n)
        assert cov.format_token(*pair) == token and suffix.endswith("-wmse")
        assert spec["bn_calib"] == ("-bn" in suffix or "-ba" in suffix) and report.SETTING_NAMES[(scheme, suffix)]
        assert spec.get("bn_activations", False) == ("-ba" in suffix)
    for bad in ("e4m3-std-wmse-bn", "e4m3-std-wmse-tuned", "e4m3-std-tuned-wmse", "e4m3-std-mse",
                "e4m3-wmse", "e4m3-std-wmse-wmse"):
        with pytest.raises(ValueError, match="unknown configuration"):
            cov.config_spec(bad)
    assert report.split_config("e4m3-std-wmse-bn") is None


def _weight_scales(model) -> dict:
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    return {n[:-len("_scale")]: v for n, v in inits.items() if n.endswith(".weight_scale")}


def test_worker_compiles_wmse_with_mse_weight_scales():
    """Independent reference: max scaling's per-channel scale is amax / 448 of the FP32
    weight (MatMul W[K, N], channel axis 1); MSE thresholds lie in 0.5..1.0 x amax."""
    entry = zoo.get("digits_mlp")
    calib = list(entry.calib_feeds(8))
    fp32 = {t.name: numpy_helper.to_array(t) for t in entry.load().graph.initializer}
    q_max, _, _ = worker._compile_ours(entry, calib, cov.config_spec("e4m3-std"))
    q_mse, _, _ = worker._compile_ours(entry, calib, cov.config_spec("e4m3-std-wmse"))
    assert worker._stored_recipe(q_mse)["weight_calib_method"] == "mse"
    assert worker._stored_recipe(q_max)["weight_calib_method"] == "max"
    s_max, s_mse = _weight_scales(q_max), _weight_scales(q_mse)
    assert set(s_max) == set(s_mse) == {"fc1.weight", "fc2.weight", "fc3.weight"}
    lowered = 0
    for name, scale in s_mse.items():
        ref = np.abs(fp32[name]).max(axis=0) / E4M3_MAX
        np.testing.assert_allclose(s_max[name], ref, rtol=1e-6)
        live = ref > 1e-6  # channels with real weights (a dead channel's tiny scale is moot)
        assert np.all(scale[live] <= ref[live] * (1 + 1e-6))
        assert np.all(scale[live] >= 0.5 * ref[live] * (1 - 1e-6))
        lowered += int(np.sum(scale[live] < ref[live] * (1 - 1e-4)))
    assert lowered >= 3  # the search really moved thresholds below amax


def test_quick_run_of_a_wmse_config(tmp_path):
    proc = subprocess.run([sys.executable, str(TOOLS / "coverage_study.py"), "--quick", "--models", "digits_mlp",
                           "--configs", "e4m3-std-wmse", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = {r["config"]: r for r in cov.read_rows(tmp_path / "results.jsonl")}
    assert set(rows) == {"fp32", "e4m3-std-wmse"}
    r = rows["e4m3-std-wmse"]
    assert r["status"] == "ok" and r["calib_samples"] == cov.QUICK_SAMPLES[0]
    # read back from the compiled model's metadata_props, not from the job spec
    assert r["recipe_weight_calib"] == "mse" and r["recipe_formats"] == ["e4m3", "e4m3"]
    rounds = r["run_side_by_side"]["rounds_s"]
    assert r["run_side_by_side"]["threads"] == 1 and len(rounds) >= 3
    assert r["run_ratio"] == pytest.approx(float(np.median([b / a for a, b in rounds])))
    fp32 = rows["fp32"]["metric"]
    within = int(round((fp32 - r["metric"]) / fp32, 9) <= 0.01)
    md = (tmp_path / "coverage.md").read_text()
    row = next(ln for ln in md.splitlines() if ln.startswith("| standard + MSE weight scales |"))
    assert row.split("|")[3].strip().startswith(f"{within}/1 ")  # the E4M3 column
    assert 'weight_calib_method="mse"' in md  # the notes say what the setting is


def _rows(losses: dict) -> list:
    rows = []
    for model, cfgs in losses.items():
        rows.append({"model": model, "config": "fp32", "kind": "fp32", "status": "ok", "metric": 1.0,
                     "domain": "cv", "family": "cnn", "eval_samples": 100, "fp32_size_bytes": 1e6})
        for cfg, loss in cfgs.items():
            rows.append({"model": model, "config": cfg, "kind": "ours", "status": "ok", "metric": 1.0 - loss})
    return rows


def _split(line: str) -> list:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def _cells(md: str, first: str) -> list:
    """The first markdown table line starting with ``| first |``, as cells."""
    return _split(next(ln for ln in md.splitlines() if ln.startswith(f"| {first} |")))


def _model_row(md: str, model: str, setting: str) -> list:
    """A per-model table line: the model's first line, or a later one of the same model."""
    lines = md.splitlines()
    i = next(i for i, ln in enumerate(lines) if ln.startswith(f"| {model} |"))
    while True:
        cells = _split(lines[i])
        if cells[3] == setting:
            return cells
        i += 1
        assert _split(lines[i])[0] == "", f"no {setting!r} line for {model}"


def test_report_counts_wmse_as_a_fixed_recipe_and_a_choice():
    """Model b is within 1% only with MSE weight scales: the fixed-recipe row counts it, so
    does the best-of over every untuned setting; the old rows read as before."""
    base = {"a": {"e4m3-std": 0.005, "e3m4-std": 0.02, "int8-std": 0.0},
            "b": {"e4m3-std": 0.03, "e3m4-std": 0.02, "int8-std": 0.05}}
    old_md = report.render_markdown(report.summarize(_rows(base)))
    assert "MSE weight scales" not in old_md
    with_wmse = {"a": {**base["a"], "e4m3-std-wmse": 0.02, "e3m4-std-wmse": 0.02, "int8-std-wmse": 0.0},
                 "b": {**base["b"], "e4m3-std-wmse": 0.004, "e3m4-std-wmse": 0.03, "int8-std-wmse": 0.02}}
    s = report.summarize(_rows(with_wmse))
    assert s["within"][("std", "-wmse")]["e4m3"] == (1, 2) and s["within"][("std", "-wmse")]["int8"] == (1, 2)
    assert s["within"][("std", "-bn-wmse")]["e4m3"] is None
    md = report.render_markdown(s)
    assert _cells(md, "standard + MSE weight scales") == ["standard + MSE weight scales", "not run", "1/2 (50%)",
                                                         "0/2 (0%)", "1/2 (50%)"]
    assert not any(ln.startswith("| standard + BN calib + MSE weight scales |") for ln in md.splitlines())
    # 4 FP8 fixed recipes ran (E4M3, E3M4 x with/without MSE weights), 1/2 the best of them
    assert "The 4 untuned FP8 recipes range from 0/2 (0%) to 1/2 (50%)" in md
    best = _cells(md, "best of every untuned setting, single formats only")
    assert best[1] == "E4M3, E3M4 x (standard, standard + MSE weight scales) (4)"
    assert best[2] == "**2/2 (100%)**"  # b counts through e4m3-std-wmse alone
    assert best[3] == "1/2 (50%) among 2"  # INT8 chooses among int8-std and int8-std-wmse: a only
    assert _model_row(md, "b", "standard + MSE weight scales")[4:] == ["—", "**0.40%**", "3.00%", "2.00%",
                                                                     "E4M3"]
    assert _model_row(md, "b", "standard")[4:] == ["—", "3.00%", "2.00%", "5.00%", "E3M4"]
    assert 'weight_calib_method="mse"' in md


class _Clock:
    """perf_counter's stand-in: time moves only when a fake session runs."""

    def __init__(self):
        self.now, self.calls = 0.0, []

    def __call__(self):
        return self.now


class _Session:
    """Costs ``cost`` seconds of the fake clock per run and logs its name."""

    def __init__(self, name, cost, clock, inputs=("x",)):
        self.name, self.cost, self.clock, self.inputs = name, cost, clock, inputs

    def get_inputs(self):
        return [type("Arg", (), {"name": n})() for n in self.inputs]

    def run(self, names, feed):
        assert set(feed) == set(self.inputs)  # each session gets only its own inputs
        self.clock.now += self.cost
        self.clock.calls.append(self.name)


def test_side_by_side_alternates_and_takes_the_median_of_ratios():
    """A fake clock that only the sessions advance: the ratio, the number of runs per
    sample and of rounds, and the alternating order are exactly what the docstring says."""
    clock = _Clock()
    fp32 = _Session("fp32", 2 ** -7, clock, inputs=("x", "sr"))     # 7.8 ms, exact in binary
    ours = _Session("ours", 1.25 * 2 ** -7, clock)                  # a model without the sr input
    r = worker.side_by_side([fp32, ours], {"x": 1, "sr": 2}, budget_s=0.15, max_rounds=9, clock=clock)
    assert r["ratio"] == 1.25 and r["inner"] == 2  # samples of >= 20 ms: 2 runs of 7.8 ms
    # 0.15 s budget / (2 x 17.6 ms) per round -> 4 rounds, after one warm-up and one timed run each
    assert r["rounds_s"] == [[2 ** -7, 1.25 * 2 ** -7]] * 4
    assert clock.calls[:4] == ["fp32", "fp32", "ours", "ours"]
    order = clock.calls[4::2]
    assert order == ["fp32", "ours", "ours", "fp32", "fp32", "ours", "ours", "fp32"]
    clock.calls.clear()
    slow = _Session("fp32", 1.0, clock, inputs=("x", "sr"))
    r = worker.side_by_side([slow, _Session("ours", 2.0, clock)], {"x": 1, "sr": 2}, clock=clock)
    assert r["inner"] == 1 and len(r["rounds_s"]) == 3 and r["ratio"] == 2.0  # never fewer than 3 rounds


def test_cost_table_shows_side_by_side_ratios_and_marks_old_rows():
    rows = _rows({"a": {"e4m3-std": 0.0}, "b": {"e4m3-std": 0.0}})
    for r in rows:
        r["run_s"] = 0.01
    by = {(r["model"], r["config"]): r for r in rows}
    by[("a", "e4m3-std")]["run_ratio"] = 1.04
    md = report.render_markdown(report.summarize(rows)).split("## Cost")[1]
    assert _cells(md, "a")[-3:] == ["10.00", "1.04", "—"]
    assert _cells(md, "b")[-3:] == ["10.00", "n/s", "—"]
    assert _cells(md, "**median ratio**")[-2:] == ["**1.04**", "**—**"]
    assert "n/s: the row is from before side-by-side timing" in md
    by[("b", "e4m3-std")]["run_ratio"] = 1.10
    md = report.render_markdown(report.summarize(rows)).split("## Cost")[1]
    assert _cells(md, "**median ratio**")[-2:] == ["**1.07**", "**—**"] and "n/s" not in md


def test_rerun_runs_those_configurations_again_and_the_newer_row_counts(tmp_path):
    """--resume --rerun C: only C's jobs run again (FP32 first if asked), the file keeps
    both rows and the report reads the newer one."""
    calls, every = [], []

    def launcher(spec, timeout):
        calls.append(spec["config"])
        every.append(spec["config"])
        n = every.count(spec["config"])
        metric = 1.0 if spec["kind"] == "fp32" else 1.0 - 0.02 / n  # the rerun is within 1%
        return {"model": spec["model"], "config": spec["config"], "kind": spec["kind"], "status": "ok",
                "metric": metric, "run_ratio": None if n == 1 else 1.1}

    specs, _ = cov.plan_jobs([zoo.get("digits_mlp")], ["fp32", "e4m3-std", "e3m4-std"])
    cov.run_sweep(specs, [], tmp_path, jobs=1, launcher=launcher, log=lambda *a: None)
    assert sorted(calls) == ["e3m4-std", "e4m3-std", "fp32"]
    calls.clear()
    cov.run_sweep(specs, [], tmp_path, resume=True, rerun=["e4m3-std"], jobs=1, launcher=launcher,
                  log=lambda *a: None)
    assert calls == ["e4m3-std"]
    rows = cov.read_rows(tmp_path / "results.jsonl")
    assert [r["config"] for r in rows].count("e4m3-std") == 2
    s = report.summarize(rows)
    assert s["loss"][("digits_mlp", "e4m3-std")] == pytest.approx(0.01)
    assert s["rows"][("digits_mlp", "e4m3-std")]["run_ratio"] == 1.1
    run = lambda *a: subprocess.run([sys.executable, str(TOOLS / "coverage_study.py"), *a],  # noqa: E731
                                    capture_output=True, text=True, timeout=300)
    bad = run("--models", "digits_mlp", "--rerun", "e4m3-std", "--out", str(tmp_path))
    assert bad.returncode == 2 and "needs --resume" in bad.stderr
    bad = run("--models", "digits_mlp", "--configs", "e3m4-std", "--resume", "--rerun", "e4m3-std",
              "--out", str(tmp_path))
    assert bad.returncode == 2 and "not among the configurations" in bad.stderr
    assert [r["config"] for r in cov.read_rows(tmp_path / "results.jsonl")] == [r["config"] for r in rows]
