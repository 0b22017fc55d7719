"""The coverage study tool (tools/coverage_study.py): real jobs in real subprocesses.

The default-suite fixture runs one small sweep (digits_mlp: FP32, E4M3, E3M4 weights with
E4M3 activations, a tuned job, the peer and a job with an unknown format that must fail)
and the tests check its rows, the markdown's counts against a recount from the rows, the
PNGs, resuming and skipping. Hand-made rows check the report's counting rules (fixed
recipes apart from best-of selections). The full ``--quick`` sweep is marked slow.
"""
from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest

import tool_modules
from tool_modules import TOOLS

from fp8onnx import zoo



_load = tool_modules.load


cov = _load("coverage_study")
report = _load("coverage_report")

OK_FIELDS = ("model", "config", "kind", "status", "metric", "size_bytes", "run_s", "peak_rss_mb",
             "eval_samples", "domain", "family", "job_s")
COMPILE_FIELDS = ("compile_s", "compile_peak_rss_mb", "base_rss_mb", "relative_loss")


class CountingLauncher:
    """The real launcher, counting the subprocesses it starts."""

    def __init__(self):
        self.calls = []

    def __call__(self, spec, timeout):
        self.calls.append((spec["model"], spec["config"]))
        return cov.launch(spec, timeout)


def _png_ok(path: Path) -> bool:
    """A PNG signature, an IHDR chunk with a sane size and every chunk's CRC correct."""
    data = path.read_bytes()
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        return False
    pos, seen = 8, []
    while pos < len(data):
        length = int.from_bytes(data[pos:pos + 4], "big")
        kind, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + length]
        crc = int.from_bytes(data[pos + 8 + length:pos + 12 + length], "big")
        if zlib.crc32(kind + body) != crc:
            return False
        seen.append(kind)
        pos += 12 + length
    w, h = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    return seen[0] == b"IHDR" and seen[-1] == b"IEND" and b"IDAT" in seen and 100 < w < 5000 and 100 < h < 5000


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    out = tmp_path_factory.mktemp("coverage")
    configs = ["fp32", "e4m3-std", "e3m4w.e4m3a-std", "e9m9-std", "peer", "e5m2-std-tuned"]  # e9m9: must fail
    specs, skipped = cov.plan_jobs([zoo.get("digits_mlp")], configs, calib_samples=8, eval_samples=64)
    launcher = CountingLauncher()
    launched = cov.run_sweep(specs, skipped, out, jobs=2, timeout=600, launcher=launcher, log=lambda *a: None)
    rows = cov.read_rows(out / "results.jsonl")
    text = report.write_report(rows, out)
    return {"out": out, "specs": specs, "launched": launched, "launcher": launcher, "rows": rows, "md": text}


def test_rows_are_complete(sweep):
    rows = {r["config"]: r for r in sweep["rows"]}
    assert set(rows) == {"fp32", "e4m3-std", "e3m4w.e4m3a-std", "e9m9-std", "peer", "e5m2-std-tuned"}
    assert len(sweep["launcher"].calls) == 6
    for cfg in ("fp32", "e4m3-std", "e3m4w.e4m3a-std", "peer", "e5m2-std-tuned"):
        r = rows[cfg]
        assert r["status"] == "ok", r
        for key in OK_FIELDS:
            assert r.get(key) is not None, (cfg, key)
        if cfg != "fp32":
            for key in COMPILE_FIELDS:
                assert r.get(key) is not None, (cfg, key)
            assert r["compile_peak_rss_mb"] >= r["base_rss_mb"] > 10
            # run time beside FP32's, in the same job: the median of the per-round ratios
            rounds = r["run_side_by_side"]["rounds_s"]
            assert len(rounds) >= 3 and all(a > 0 and b > 0 for a, b in rounds)
            assert r["run_ratio"] == pytest.approx(float(np.median([b / a for a, b in rounds])))
            # relative loss written by the worker is the one recomputed from the FP32 row
            fp32 = rows["fp32"]["metric"]
            assert r["relative_loss"] == pytest.approx((fp32 - r["metric"]) / fp32)
    assert rows["fp32"]["eval_samples"] == 64 and rows["e4m3-std"]["calib_samples"] == 8
    # quantized weights are stored as 1-byte codes: the file shrinks about 4x
    assert rows["e4m3-std"]["size_bytes"] < 0.35 * rows["fp32"]["size_bytes"]
    assert "metric_safe" in rows["peer"]
    # formats as the compiled model's stored recipe says, not as the job asked
    assert rows["e3m4w.e4m3a-std"]["recipe_formats"] == ["e3m4", "e4m3"]
    assert rows["e4m3-std"]["recipe_formats"] == ["e4m3", "e4m3"]
    assert rows["e3m4w.e4m3a-std"]["size_bytes"] < 0.35 * rows["fp32"]["size_bytes"]


def test_failed_job_is_recorded_and_the_rest_continue(sweep):
    rows = {r["config"]: r for r in sweep["rows"]}
    bad = rows["e9m9-std"]
    assert bad["status"].startswith("failed: ") and "e9m9" in bad["status"]
    assert sum(r["status"] == "ok" for r in sweep["rows"]) == 5
    assert "e9m9-std" in sweep["md"] and "## Failed jobs" in sweep["md"]


def _table_row(md: str, first_cell: str) -> dict:
    """The markdown table line starting with ``| first_cell |`` as {header: cell}."""
    lines = md.splitlines()
    i = next(i for i, ln in enumerate(lines) if ln.startswith(f"| {first_cell} |"))
    h = i
    while not lines[h - 1].startswith("|---"):
        h -= 1
    split = lambda ln: [c.strip() for c in ln.strip().strip("|").split("|")]  # noqa: E731
    return dict(zip(split(lines[h - 2]), split(lines[i])))


def test_markdown_counts_equal_a_recount(sweep):
    rows = sweep["rows"]
    fp32 = next(r["metric"] for r in rows if r["config"] == "fp32")

    def within(cfg):
        r = next(r for r in rows if r["config"] == cfg)
        return int(r["status"] == "ok" and round((fp32 - r["metric"]) / fp32, 9) <= 0.01)

    std = _table_row(sweep["md"], "standard")  # the fixed-recipe table
    assert list(std) == ["setting", "E5M2", "E4M3", "E3M4", "W E3M4 / A E4M3", "INT8"]  # no column for e9m9
    assert std["E5M2"] == std["E3M4"] == std["INT8"] == "not run"
    assert std["E4M3"].startswith(f"{within('e4m3-std')}/1 ")
    assert std["W E3M4 / A E4M3"].startswith(f"{within('e3m4w.e4m3a-std')}/1 ")
    # best FP8 of the standard scheme chooses among the two FP8 configurations that ran
    best = _table_row(sweep["md"], "standard: best FP8 format per model")
    assert best["among (k configurations)"] == "E4M3, W E3M4 / A E4M3 x standard (2)"
    assert best["FP8"].startswith(f"**{max(within('e4m3-std'), within('e3m4w.e4m3a-std'))}/1 ")
    peer = next(ln for ln in sweep["md"].splitlines() if ln.startswith("| defaults"))
    assert peer.split("|")[2].strip().startswith(f"{within('peer')}/1 ")
    assert _table_row(sweep["md"], "standard + BN calib")["E4M3"] == "not run"
    per_model = _table_row(sweep["md"], "digits_mlp")
    assert per_model["W E3M4 / A E4M3"].strip("*") == f"{100 * (fp32 - next(r['metric'] for r in rows if r['config'] == 'e3m4w.e4m3a-std')) / fp32:.2f}%"


def test_tuned_row_reports_its_search(sweep):
    """The tuned job scores trials on the calibration split and reports what fell back to
    float; its row's metric is still the held-out one."""
    by = {r["config"]: r for r in sweep["rows"]}
    t = by["e5m2-std-tuned"]["tune"]
    gemms = sum(n.op_type == "MatMul" for n in zoo.get("digits_mlp").load().graph.node)
    assert 1 <= t["trials"] <= 24 and t["weights_fp8_untuned"] == gemms == 3
    if not t["op_types"]:  # only node fallbacks: each one is a MatMul whose weight stays float
        assert t["weights_fp8"] == gemms - len(t["nodes_float"])
    assert t["met_on_calib"] == (round(t["calib_loss"], 9) <= 0.01)  # 1% exactly (as counts) meets 1%
    cells = _table_row(sweep["md"], "standard + accuracy-aware tuning")
    fp32 = by["fp32"]["metric"]
    assert cells["E5M2"].startswith(f"{int(round((fp32 - by['e5m2-std-tuned']['metric']) / fp32, 9) <= 0.01)}/1 ")
    best = _table_row(sweep["md"], "best of every setting, tuning included")
    assert best["among (k configurations)"].endswith("E5M2 x standard + accuracy-aware tuning (3)")


def test_pngs_are_valid(sweep):
    for name in ("fig4_loss_per_model.png", "fig5_loss_vs_size.png"):
        assert _png_ok(sweep["out"] / name), name
    broken = sweep["out"] / "broken.png"
    broken.write_bytes((sweep["out"] / "fig4_loss_per_model.png").read_bytes()[:-20])
    assert not _png_ok(broken)  # the checker itself rejects a truncated file


def test_resume_skips_finished_jobs(sweep):
    out = sweep["out"]
    before = (out / "results.jsonl").read_text()
    launcher = CountingLauncher()
    again = cov.run_sweep(sweep["specs"], [], out, resume=True, launcher=launcher, log=lambda *a: None)
    assert launcher.calls == [] and again == []
    assert (out / "results.jsonl").read_text() == before
    # one more configuration: only that job runs, and it gets the FP32 metric from the file
    specs, _ = cov.plan_jobs([zoo.get("digits_mlp")], ["fp32", "peer-sym"], calib_samples=8, eval_samples=64)
    launcher = CountingLauncher()
    new = cov.run_sweep(specs, [], out, resume=True, launcher=launcher, log=lambda *a: None)
    assert launcher.calls == [("digits_mlp", "peer-sym")]
    assert new[0]["status"] == "ok" and new[0].get("relative_loss") is not None
    assert len(cov.read_rows(out / "results.jsonl")) == len(sweep["rows"]) + 1
    # --retry-failed reruns exactly the failed job
    launcher = CountingLauncher()
    cov.run_sweep(sweep["specs"], [], out, resume=True, retry_failed=True, launcher=launcher, log=lambda *a: None)
    assert launcher.calls == [("digits_mlp", "e9m9-std")]


class _Missing(zoo.ZooEntry):
    name, domain, family = "needs_a_package", "cv", "cnn"
    install_hint = "pip install fp8onnx-no-such-package"
    requires = (("fp8onnx_no_such_module", "fp8onnx-no-such-package (pip install fp8onnx-no-such-package)"),)


def test_missing_package_row_says_install(tmp_path):
    specs, skipped = cov.plan_jobs([_Missing(), zoo.get("digits_mlp")], ["fp32", "e4m3-std"])
    assert {s["model"] for s in specs} == {"digits_mlp"}
    assert [r["config"] for r in skipped] == ["fp32", "e4m3-std"]
    for r in skipped:
        assert r["status"].startswith("skipped: install fp8onnx-no-such-package")
    launcher = CountingLauncher()
    cov.run_sweep([], skipped, tmp_path, launcher=launcher, log=lambda *a: None)
    rows = cov.read_rows(tmp_path / "results.jsonl")
    assert launcher.calls == [] and len(rows) == 2
    md = report.render_markdown(report.summarize(rows))
    assert "| needs_a_package | | | skipped: install fp8onnx-no-such-package" in md


def test_timeout_is_a_failed_row():
    spec = cov.plan_jobs([zoo.get("digits_mlp")], ["e4m3-std"])[0][0]
    row = cov.launch(spec, timeout=0.05)
    assert row["status"].startswith("failed: timeout") and row["config"] == "e4m3-std"


def test_config_names_round_trip():
    names = cov.config_names()
    assert len(names) == (1 + 4 * 2 * 2 + 2 * 2 + len(cov.WMSE) + len(cov.KF) + len(cov.UG) + len(cov.GQ)
                          + len(cov.BA) + len(cov.POW2_FORMATS) + 3 + 1 + 2)
    assert names[0] == "fp32"
    assert cov.config_spec("e3m4-std-bn-wmse-ug") == {"kind": "ours", "format": "e3m4", "scheme": "standard",
                                                      "bn_calib": True, "weight_calib_method": "mse",
                                                      "underflow_guard": cov.UNDERFLOW_GUARD}
    for name in ("e3m4-std-ug", "e3m4-std-wmse-kf-ug", "e3m4-std-bn-wmse-ug"):
        assert name in names and report.split_config(name)[2] in report.UG_SETTINGS
    assert cov.config_spec("e3m4-std-wmse-gq-kf-ug") == {"kind": "ours", "format": "e3m4", "scheme": "standard",
                                                         "bn_calib": False, "weight_calib_method": "mse",
                                                         "weight_rounding": "gptq", "keep_first": True,
                                                         "underflow_guard": cov.UNDERFLOW_GUARD}
    for name in ("e4m3-std-gq", "int8-std-gq", "e3m4-std-wmse-gq-kf-ug", "e3m4-std-bn-wmse-gq-ug"):
        assert name in names and report.split_config(name)[2] in report.GQ_SETTINGS
    assert cov.config_spec("e3m4-std-ba-wmse-ug") == {"kind": "ours", "format": "e3m4", "scheme": "standard",
                                                      "bn_calib": True, "bn_activations": True,
                                                      "weight_calib_method": "mse",
                                                      "underflow_guard": cov.UNDERFLOW_GUARD}
    for name in ("e4m3-std-ba", "e3m4-std-ba", "e3m4-std-ba-wmse", "e3m4-std-ba-wmse-ug"):
        assert name in names and report.split_config(name)[2] in report.BA_SETTINGS
    assert cov.config_spec("e3m4-std-pow2") == {"kind": "ours", "format": "e3m4", "scheme": "standard",
                                                "bn_calib": False, "pow2_scales": True}
    assert cov.config_spec("e3m4-std-wmse-kf") == {"kind": "ours", "format": "e3m4", "scheme": "standard",
                                                   "bn_calib": False, "weight_calib_method": "mse",
                                                   "keep_first": True}
    assert {"e3m4w.e4m3a-std", "e4m3w.e3m4a-std", "e3m4w.e4m3a-std-bn", "e4m3w.e3m4a-std-bn"} <= set(names)
    assert cov.config_spec("e3m4w.e4m3a-std-bn") == {"kind": "ours", "weight_format": "e3m4",
                                                     "activation_format": "e4m3", "scheme": "standard",
                                                     "bn_calib": True}
    assert cov.format_token("e4m3", "e4m3") == "e4m3" and cov.format_token("e4m3", "e3m4") == "e4m3w.e3m4a"
    for w in ("e4m3", "e3m4", "e5m2"):
        for a in ("e4m3", "e3m4"):  # the name says back what it was made from
            assert cov.parse_format(cov.format_token(w, a)) == (w, a)
            assert report.split_config(f"{cov.format_token(w, a)}-ext-bn") == (cov.format_token(w, a), (w, a),
                                                                               ("ext", "-bn"))
    for bad in ("e3m4.e4m3-std", "e4m3a.e3m4w-std", "e3m4w.-std", "e3m4w.e4m3a-std-tuned"):
        with pytest.raises(ValueError):
            cov.config_spec(bad)
    assert [report.split_config(c) for c in ("fp32", "peer-sym", "e4m3-wide")] == [None, None, None]
    assert cov.config_spec("e3m4-ext-bn") == {"kind": "ours", "format": "e3m4", "scheme": "extended",
                                              "bn_calib": True}
    assert cov.config_spec("int8-std-tuned")["kind"] == "tuned"
    assert "stages" not in cov.config_spec("e4m3-std-tuned")  # the worker's INC-style stages
    assert cov.config_spec("e4m3-std-tuned-recipes")["stages"] == ["recipe", "format", "node"]
    assert report.split_config("e4m3-std-tuned-recipes") == ("e4m3", ("e4m3", "e4m3"), report.TUNED_RECIPES)
    assert report.split_config("e3m4-std-pow2") == ("e3m4", ("e3m4", "e3m4"), report.POW2)
    assert {cov.config_spec(n)["kind"] for n in names} == {"fp32", "ours", "tuned", "peer"}
    with pytest.raises(ValueError, match="unknown configuration"):
        cov.config_spec("e4m3-wide")


def _rows(losses: dict) -> list:
    """Hand-made results rows: FP32 metric 1.0 per model, ``metric = 1 - loss`` (None = failed)."""
    rows = []
    for model, (domain, cfgs) in losses.items():
        rows.append({"model": model, "config": "fp32", "kind": "fp32", "status": "ok", "metric": 1.0,
                     "domain": domain, "family": "cnn", "eval_samples": 100, "fp32_size_bytes": 1e6})
        for cfg, loss in cfgs.items():
            rows.append({"model": model, "config": cfg, "kind": "ours", "status": "ok" if loss is not None
                         else "failed: RuntimeError: boom", "metric": None if loss is None else 1.0 - loss})
    return rows


def test_report_counts_fixed_recipes_apart_from_selections(tmp_path):
    """Three models, single and mixed formats: each fixed cell, each best-of row and the
    default-recipe line recounted by hand; a failed mixed job counts as not within."""
    rows = _rows({
        "a": ("cv", {"e4m3-std": 0.005, "e3m4-std": 0.02, "e3m4w.e4m3a-std": 0.02, "int8-std": 0.0,
                     "e4m3-std-bn": 0.03}),
        "b": ("nlp", {"e4m3-std": 0.02, "e3m4-std": 0.02, "e3m4w.e4m3a-std": 0.008, "int8-std": 0.05,
                      "e4m3-std-bn": 0.03}),
        "c": ("cv", {"e4m3-std": 0.05, "e3m4-std": 0.05, "e3m4w.e4m3a-std": None, "int8-std": 0.05,
                     "e4m3-std-bn": 0.05}),
    })
    s = report.summarize(rows)
    assert s["formats"] == ["e5m2", "e4m3", "e3m4", "e3m4w.e4m3a", "int8"]
    std = s["within"][("std", "")]
    assert (std["e4m3"], std["e3m4"], std["e3m4w.e4m3a"], std["int8"], std["e5m2"]) == ((1, 3), (0, 3), (1, 3),
                                                                                         (1, 3), None)
    assert std["best_fp8"] == (2, 3) and s["best_over"][("std", "")] == ["e4m3", "e3m4", "e3m4w.e4m3a"]
    sel = {x["label"]: x for x in s["selections"]}
    assert sel["best of every untuned setting, single formats only"]["fp8"] == (1, 3)  # a only
    assert sel["best of every untuned setting, mixed formats included"]["fp8"] == (2, 3)  # a, b
    assert sel["best of every untuned setting, mixed formats included"]["int8"] is None  # one INT8 recipe
    md = report.render_markdown(s)
    fixed = _table_row(md, "standard")
    assert fixed == {"setting": "standard", "E5M2": "not run", "E4M3": "1/3 (33%)", "E3M4": "0/3 (0%)",
                     "W E3M4 / A E4M3": "1/3 (33%)", "INT8": "1/3 (33%)"}
    assert "- The library's default recipe (E4M3, standard scheme): **1/3 (33%)**." in md
    assert "The 4 untuned FP8 recipes range from 0/3 (0%) to 1/3 (33%)" in md
    best = _table_row(md, "best of every untuned setting, mixed formats included")
    assert best["among (k configurations)"] == ("E4M3, E3M4, W E3M4 / A E4M3 x standard; "
                                                "E4M3 x standard + BN calib (4)")
    assert best["FP8"] == "**2/3 (67%)**" and best["INT8"] == "—"
    assert "selection on the test set" in md
    c = _table_row(md, "c")
    assert c["W E3M4 / A E4M3"] == "failed" and c["E4M3"] == "5.00%" and c["best FP8"] == "E4M3"
    assert _table_row(md, "b")["W E3M4 / A E4M3"] == "**0.80%**" and _table_row(md, "b")["best FP8"] == "W E3M4 / A E4M3"
    trend = _table_row(md, "cv")
    assert trend["mean loss E4M3"] == "2.75%" and trend["mean loss W E3M4 / A E4M3"] == "n/a"
    report.write_report(rows, tmp_path)
    assert _png_ok(tmp_path / "fig4_loss_per_model.png") and _png_ok(tmp_path / "fig5_loss_vs_size.png")


def test_pow2_scales_get_a_row_but_no_chance_in_the_best_of_counts():
    """Power-of-two scales are a hardware constraint: their row is counted like any fixed
    recipe, but a model that only they keep within 1% does not enter a best-of count."""
    rows = _rows({
        "a": ("cv", {"e4m3-std": 0.005, "e3m4-std": 0.02, "e4m3-std-pow2": 0.006, "e3m4-std-pow2": 0.03}),
        "b": ("cv", {"e4m3-std": 0.02, "e3m4-std": 0.03, "e4m3-std-pow2": 0.004, "e3m4-std-pow2": 0.02}),
    })
    s = report.summarize(rows)
    assert (s["within"][report.POW2]["e4m3"], s["within"][report.POW2]["e3m4"]) == ((2, 2), (0, 2))
    sel = {x["label"]: x for x in s["selections"]}
    assert sel["best of every untuned setting, single formats only"]["fp8"] == (1, 2)  # a only
    md = report.render_markdown(s)
    assert _table_row(md, "standard, power-of-two scales")["E4M3"] == "2/2 (100%)"
    assert "The 2 untuned FP8 recipes range" in md  # pow2 is not one of the recipes compared


def test_cli_errors_and_report_only(tmp_path, sweep):
    run = lambda *a: subprocess.run([sys.executable, str(TOOLS / "coverage_study.py"), *a],  # noqa: E731
                                    capture_output=True, text=True, timeout=300)
    bad = run("--models", "no_such_model", "--out", str(tmp_path))
    assert bad.returncode == 2 and "unknown zoo entry" in bad.stderr
    bad = run("--configs", "e4m3-wide", "--out", str(tmp_path))
    assert bad.returncode == 2 and "unknown configuration" in bad.stderr
    if importlib.util.find_spec("ray") is None:
        bad = run("--ray-address", "auto", "--models", "digits_mlp", "--out", str(tmp_path))
        assert bad.returncode == 2 and "install ray" in bad.stderr
    ok = run("--report-only", "--out", str(sweep["out"]))
    assert ok.returncode == 0, ok.stderr
    assert (sweep["out"] / "coverage.md").read_text().startswith("# Coverage study")


@pytest.mark.slow
def test_quick_sweep_end_to_end(tmp_path):
    proc = subprocess.run([sys.executable, str(TOOLS / "coverage_study.py"), "--quick", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=3600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = cov.read_rows(tmp_path / "results.jsonl")
    assert {(r["model"], r["config"]) for r in rows} == {
        (m, c) for m in cov.QUICK_MODELS for c in cov.config_names()}
    s = report.summarize(rows)
    for st in report.SETTINGS:
        for f in report.FORMATS:
            if f"{f}-{st[0]}{st[1]}" not in cov.config_names():
                assert s["within"][st][f] is None  # not part of the sweep: no count at all
                continue
            recount = sum(1 for m in cov.QUICK_MODELS for r in rows
                          if r["model"] == m and r["config"] == f"{f}-{st[0]}{st[1]}" and r["status"] == "ok"
                          and r.get("relative_loss") is not None and round(r["relative_loss"], 9) <= 0.01)
            assert s["within"][st][f] == (recount, len(cov.QUICK_MODELS))
    for name in ("fig4_loss_per_model.png", "fig5_loss_vs_size.png"):
        assert _png_ok(tmp_path / name)
    assert json.loads((tmp_path / "results.jsonl").read_text().splitlines()[0])["config"] == "fp32"


def test_peer_feeds_made_uniform_keep_every_sample():
    peer = _load("peer_ort")
    rng = np.random.default_rng(0)
    feeds = [{"ids": rng.integers(1, 99, (3, 5)), "mask": np.ones((3, 5), np.int64)},
             {"ids": rng.integers(1, 99, (2, 7)), "mask": np.ones((2, 7), np.int64)}]
    out, note = peer.uniform_feeds(feeds)
    assert len(out) == 5 and {f["ids"].shape for f in out} == {(1, 7)}
    assert "split" in note and "padded" in note
    originals = [f["ids"][i] for f in feeds for i in range(f["ids"].shape[0])]
    for o, f in zip(originals, out):
        assert np.array_equal(f["ids"][0, :o.size], o) and not f["ids"][0, o.size:].any()
        assert f["mask"][0].sum() == o.size  # padding is masked out
    same = [{"x": np.zeros((1, 3))}, {"x": np.ones((1, 3))}]
    assert peer.uniform_feeds(same) == (same, "")
    # A streaming model's feeds (silero_vad): chunks [B, 576], state [2, B, 128], scalar sr.
    rec = [{"input": rng.normal(size=(b, 576)), "state": rng.normal(size=(2, b, 128)), "sr": np.array(16000)}
           for b in (3, 4)]
    out, note = peer.uniform_feeds(rec)
    assert len(out) == 7 and "split" in note
    assert {(f["input"].shape, f["state"].shape, f["sr"].shape) for f in out} == {((1, 576), (2, 1, 128), ())}
    assert np.array_equal(out[4]["state"][:, 0], rec[1]["state"][:, 1]) and np.array_equal(out[4]["input"][0], rec[1]["input"][1])


@pytest.mark.slow
def test_ray_runner_gives_the_rows_the_local_pool_gives(tmp_path):
    """The same jobs on a local Ray cluster (``ray.init(address="local")``) and on the
    process pool: same rows, same metrics (each job is the same worker process)."""
    pytest.importorskip("ray", reason="Ray is optional (pip install ray); the local pool is the default")
    specs, skipped = cov.plan_jobs([zoo.get("digits_mlp")], ["fp32", "e4m3-std"], calib_samples=8, eval_samples=64)
    cov.run_sweep(specs, skipped, tmp_path / "ray", ray_address="local", timeout=900, log=lambda *a: None)
    cov.run_sweep(specs, skipped, tmp_path / "pool", jobs=2, timeout=900, log=lambda *a: None)
    got = {job_key: r for r in cov.read_rows(tmp_path / "ray" / "results.jsonl") for job_key in [cov.job_key(r)]}
    want = {cov.job_key(r): r for r in cov.read_rows(tmp_path / "pool" / "results.jsonl")}
    assert set(got) == set(want) == {("digits_mlp", "fp32"), ("digits_mlp", "e4m3-std")}
    for key in want:
        assert got[key]["status"] == want[key]["status"] == "ok"
        assert got[key]["metric"] == want[key]["metric"]


def test_report_marks_rows_scored_on_another_held_out_size():
    """A row scored on fewer held-out samples than its model's FP32 row (written before the
    entry's evaluation set grew) is marked with its n; rows on the same n are not; a tuned
    row that searched whole recipes names the recipe it chose."""
    rows = _rows({"a": ("cv", {"e4m3-std": 0.005, "e3m4-std": 0.02})})
    for r in rows:
        if r["config"] != "fp32":
            r["eval_samples"] = 100
    rows[1]["eval_samples"] = 4  # e4m3-std: an older row
    rows.append({"model": "a", "config": "e4m3-std-tuned-recipes", "kind": "tuned", "status": "ok",
                 "metric": 0.995, "eval_samples": 100,
                 "tune": {"weights_fp8": 4, "weights_fp8_untuned": 5,
                          "recipe": {"weight_format": "e3m4", "activation_format": "e4m3",
                                     "weight_calib_method": "mse", "keep_first": True, "bn_calib": False}}})
    md = report.render_markdown(report.summarize(rows))
    a = _table_row(md, "a")
    assert a["E4M3"] == "**0.50%** †n=4" and a["E3M4"] == "2.00%"
    assert ("**0.50%** (W E3M4 / A E4M3 + MSE weight scales, first layer float; 1/5 w float)"
            in md.split("standard + tuning from whole recipes |", 2)[2])
