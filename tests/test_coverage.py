"""The coverage study tool (tools/coverage_study.py): real jobs in real subprocesses.

The default-suite fixture runs one small sweep (digits_mlp: FP32, E4M3, INT8, the peer
and a job with an unknown format that must fail) and the tests check its rows, the
markdown's counts against a recount from the rows, the PNGs, resuming and skipping.
The full ``--quick`` sweep (3 models x 19 configurations) is marked slow.
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
    configs = ["fp32", "e4m3-std", "e9m9-std", "peer", "e5m2-std-tuned"]  # e9m9: not a format, must fail
    specs, skipped = cov.plan_jobs([zoo.get("digits_mlp")], configs, calib_samples=8, eval_samples=64)
    launcher = CountingLauncher()
    launched = cov.run_sweep(specs, skipped, out, jobs=2, timeout=600, launcher=launcher, log=lambda *a: None)
    rows = cov.read_rows(out / "results.jsonl")
    text = report.write_report(rows, out)
    return {"out": out, "specs": specs, "launched": launched, "launcher": launcher, "rows": rows, "md": text}


def test_rows_are_complete(sweep):
    rows = {r["config"]: r for r in sweep["rows"]}
    assert set(rows) == {"fp32", "e4m3-std", "e9m9-std", "peer", "e5m2-std-tuned"}
    assert len(sweep["launcher"].calls) == 5
    for cfg in ("fp32", "e4m3-std", "peer", "e5m2-std-tuned"):
        r = rows[cfg]
        assert r["status"] == "ok", r
        for key in OK_FIELDS:
            assert r.get(key) is not None, (cfg, key)
        if cfg != "fp32":
            for key in COMPILE_FIELDS:
                assert r.get(key) is not None, (cfg, key)
            assert r["compile_peak_rss_mb"] >= r["base_rss_mb"] > 10
            # relative loss written by the worker is the one recomputed from the FP32 row
            fp32 = rows["fp32"]["metric"]
            assert r["relative_loss"] == pytest.approx((fp32 - r["metric"]) / fp32)
    assert rows["fp32"]["eval_samples"] == 64 and rows["e4m3-std"]["calib_samples"] == 8
    # quantized weights are stored as 1-byte codes: the file shrinks about 4x
    assert rows["e4m3-std"]["size_bytes"] < 0.35 * rows["fp32"]["size_bytes"]
    assert "metric_safe" in rows["peer"]


def test_failed_job_is_recorded_and_the_rest_continue(sweep):
    rows = {r["config"]: r for r in sweep["rows"]}
    bad = rows["e9m9-std"]
    assert bad["status"].startswith("failed: ") and "e9m9" in bad["status"]
    assert sum(r["status"] == "ok" for r in sweep["rows"]) == 4
    assert "e9m9-std" in sweep["md"] and "## Failed jobs" in sweep["md"]


def test_markdown_counts_equal_a_recount(sweep):
    rows = sweep["rows"]
    fp32 = next(r["metric"] for r in rows if r["config"] == "fp32")

    def within(cfg):
        r = next(r for r in rows if r["config"] == cfg)
        return int(r["status"] == "ok" and (fp32 - r["metric"]) / fp32 <= 0.01)

    line = next(ln for ln in sweep["md"].splitlines() if ln.startswith("| standard |"))
    cells = [c.strip() for c in line.strip("|").split("|")]
    # | standard | E5M2 | E4M3 | E3M4 | best FP8 | INT8 |
    assert cells[1] == "not run" and cells[3] == "not run"
    assert cells[2].startswith(f"{within('e4m3-std')}/1 ")
    assert cells[4] == f"**{cells[2]}**"  # E4M3 is the only FP8 format run
    assert cells[5] == "not run"
    peer = next(ln for ln in sweep["md"].splitlines() if ln.startswith("| defaults"))
    assert peer.split("|")[2].strip().startswith(f"{within('peer')}/1 ")
    assert "| standard + BN calib | not run |" in sweep["md"]


def test_tuned_row_reports_its_search(sweep):
    """The tuned job scores trials on the calibration split and reports what fell back to
    float; its row's metric is still the held-out one."""
    by = {r["config"]: r for r in sweep["rows"]}
    t = by["e5m2-std-tuned"]["tune"]
    gemms = sum(n.op_type == "MatMul" for n in zoo.get("digits_mlp").load().graph.node)
    assert 1 <= t["trials"] <= 24 and t["weights_fp8_untuned"] == gemms == 3
    if not t["op_types"]:  # only node fallbacks: each one is a MatMul whose weight stays float
        assert t["weights_fp8"] == gemms - len(t["nodes_float"])
    assert t["met_on_calib"] == (t["calib_loss"] <= 0.01)
    line = next(ln for ln in sweep["md"].splitlines() if ln.startswith("| standard + accuracy-aware tuning |"))
    cells = [c.strip() for c in line.strip("|").split("|")]
    fp32 = by["fp32"]["metric"]
    assert cells[1].startswith(f"{int((fp32 - by['e5m2-std-tuned']['metric']) / fp32 <= 0.01)}/1 ")
    assert "best of all five settings" in sweep["md"]


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
    assert len(names) == 1 + 4 * 2 * 2 + 3 + 2 and names[0] == "fp32"
    assert cov.config_spec("e3m4-ext-bn") == {"kind": "ours", "format": "e3m4", "scheme": "extended",
                                              "bn_calib": True}
    assert cov.config_spec("int8-std-tuned")["kind"] == "tuned"
    assert {cov.config_spec(n)["kind"] for n in names} == {"fp32", "ours", "tuned", "peer"}
    with pytest.raises(ValueError, match="unknown configuration"):
        cov.config_spec("e4m3-wide")


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
            recount = sum(1 for m in cov.QUICK_MODELS for r in rows
                          if r["model"] == m and r["config"] == f"{f}-{st[0]}{st[1]}" and r["status"] == "ok"
                          and r.get("relative_loss") is not None and r["relative_loss"] <= 0.01)
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
