"""tools/bench_ocr_calib.py's report: the markdown tables, goals and notes of one run.

``report`` turns the run's rows (one per detector: timing cells and, when it was scored,
its evaluation from bench_ocr_scoring.py) into the document the script writes to
``--out`` and prints: the main table (``table``), where the differences from FP32 come
from (``why``), the first configuration against the goals, the notes and the raw runs.
"""
from __future__ import annotations

import importlib.util
import json
import os
import platform
import shlex
import statistics
import sys
from pathlib import Path

import numpy as np

__all__ = ["med", "fmt", "table", "why", "report"]

_TOOLS = Path(__file__).resolve().parent


def _sibling(name: str):
    """tools/<name>.py, loaded by file path (once) as ``fp8onnx_tools_<name>``, the way the
    tools load each other (tools/ is never on sys.path)."""
    key = f"fp8onnx_tools_{name}"
    if key not in sys.modules:
        spec = importlib.util.spec_from_file_location(key, _TOOLS / f"{name}.py")
        sys.modules[key] = module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    return sys.modules[key]


_pipe = _sibling("ocr_pipeline")
_scoring = _sibling("bench_ocr_scoring")


def med(runs, key):
    """Median of ``key`` over the runs that exited 0 (nan when none did)."""
    vals = [r[key] for r in runs if key in r and r.get("rc") == 0]
    return statistics.median(vals) if vals else float("nan")


def fmt(x, nd=1):
    """``x`` with ``nd`` decimals, "n/a" for nan."""
    return "n/a" if x != x else f"{x:.{nd}f}"


def table(rows, truth, fp32) -> str:
    """The main table: per row its timing cells and, when scored, boxes, line agreement with
    FP32, character accuracy against the rendered text and the >= 95% text goal."""
    n = len(fp32["lines"])
    out = ["| detector | quantized by | runs | wall s (median) | peak RSS MB | time / ORT | boxes | "
           "median line IoU vs FP32 | lines = FP32 | ignoring spaces | char acc vs truth | goal >= 95% |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ev = r.get("eval")
        if ev is None:
            cells = ["n/a"] * 6
        else:
            cmp = _pipe.compare_lines(fp32["results"], ev["results"], ev["offset"])
            eq = sum(c["equal"] for c in cmp)
            cells = [str(ev["boxes"]), f"{np.median([c['min_iou'] for c in cmp]):.3f}",
                     f"{eq}/{n} ({100 * eq / n:.1f}%)", f"{sum(c['equal_nospace'] for c in cmp)}/{n}",
                     f"{100 * _scoring.char_acc(ev['lines'], truth):.2f}%",
                     r.get("goal", "met" if eq / n >= 0.95 else "missed")]
        out.append(f"| {r['name']} | {r['by']} | {r.get('runs', '')} | {r.get('wall', '')} | "
                   f"{r.get('peak', '')} | {r.get('ratio', '')} | " + " | ".join(cells) + " |")
    return "\n".join(out)


def why(rows, fp32) -> str:
    """Where the differences come from: segmentation vs crop, and text equality by box move."""
    out = ["| detector | lines differing | spaces only | segmentation (box count differs) | "
           "crop (same boxes, moved) | equal when boxes moved 0 px | 1 px | 2 px | >= 3 px |",
           "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ev = r.get("eval")
        if ev is None or ev is fp32:
            continue
        cmp = _pipe.compare_lines(fp32["results"], ev["results"], ev["offset"])
        diff = [c for c in cmp if not c["equal"]]
        seg = sum(c["boxes"][0] != c["boxes"][1] for c in diff)
        bins = []
        for lo, hi in ((0, 0), (1, 1), (2, 2), (3, float("inf"))):
            sel = [c for c in cmp if lo <= c["max_move"] <= hi and c["boxes"][0] == c["boxes"][1]]
            bins.append(f"{sum(c['equal'] for c in sel)}/{len(sel)}" if sel else "-")
        out.append(f"| {r['name']} | {len(diff)} | {sum(c['equal_nospace'] for c in diff)} | {seg} | "
                   f"{len(diff) - seg} | " + " | ".join(bins) + " |")
    return "\n".join(out)


def report(a, argv, rows, truth, fp32, ours, peer, parent_mb, mem_limit, peer_time, n_pages) -> str:
    """The whole markdown document of one run (``a``: the parsed options, ``argv`` as given)."""
    import onnxruntime

    import fp8onnx

    n = len(fp32["lines"])
    head = ours[0]
    floor = rows[1]["eval"]
    lines = [
        "# PP-OCRv4 detection: fp8onnx vs onnxruntime quantize_static (FP8 E4M3)",
        "",
        "Command: `python tools/bench_ocr_calib.py " + shlex.join(argv) + "`",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, "
        f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GB, shared (load average "
        f"{os.getloadavg()[0]:.1f} at the end); Python {platform.python_version()}, onnxruntime "
        f"{onnxruntime.__version__}, fp8onnx {getattr(fp8onnx, '__version__', '?')}.",
        f"Data: {a.calib_images} calibration pages (calib split) and {n} held-out lines on {n_pages} pages "
        f"(eval split, disjoint paragraphs), {a.height}x{a.width}, {a.columns} column(s) (CPython "
        "`pydoc_data.topics` prose, DejaVu Sans 24/28/32 px). One line = "
        f"{100 / n:.2f}% of the text goal.",
        "",
        table(rows, truth, fp32),
        "",
        "Where the differences from FP32 come from (lines with the same number of boxes as FP32, by the "
        "largest move of a box edge in pixels against FP32's):",
        "",
        why(rows, fp32),
        "",
    ]
    hw = med(head["runs"], "wall_s")
    hp = max((r["peak_mb"] for r in head["runs"]), default=float("nan"))
    lines += [f"Goals, first configuration ({head['label']}: `{head['flags']}`):", ""]
    if peer_time == peer_time:
        lines.append(f"- time <= 1/3 of onnxruntime's: {hw:.1f} s vs {peer_time:.1f} s = "
                     f"{hw / peer_time:.2f} -> {'met' if hw <= peer_time / 3 else 'MISSED'}")
    else:
        lines.append("- time <= 1/3 of onnxruntime's: " + ("not measured (--no-peer)" if a.skip_peer
                                                           else "onnxruntime did not finish (see below)"))
    lines.append(f"- peak memory <= 2 GB: {hp:.0f} MB -> {'met' if hp <= 2048 else 'MISSED'}")
    if head["row"].get("eval"):
        ag = _scoring.agree(head["row"]["eval"], fp32)
        lines.append(f"- OCR text equal to FP32's on >= 95% of {n} lines: {100 * ag:.1f}% -> "
                     f"{'met' if ag >= 0.95 else 'MISSED'} (FP32 against itself, pages shifted one pixel: "
                     f"{100 * _scoring.agree(floor, fp32):.1f}%)")
    met = [o["label"] for o in ours if o["row"].get("eval") and _scoring.agree(o["row"]["eval"], fp32) >= 0.95]
    lines.append(f"- configurations meeting the text goal: {', '.join(met) if met else 'none'}")
    lines += ["", "Configurations (fp8onnx.compile flags):", ""]
    lines += [f"- {o['label']}: `{o['flags'] or '(defaults)'}`" for o in ours]
    lines += ["", "Notes:", "",
              "- wall s: the child process from start to exit (imports, model load and save included), "
              "median of the runs; only the first configuration is timed --repeat times. onnxruntime's "
              "time is quant_pre_process + quantize_static, the two steps its documentation has a user run.",
              "- peak RSS: the child's VmHWM read just before it exits (the parent, "
              f"{parent_mb:.0f} MB when it started the children, is not counted); max over runs.",
              f"- the onnxruntime children ran under RLIMIT_AS = {mem_limit / 2**30:.1f} GB "
              f"(min of --peer-mem-gb {a.peer_mem_gb:g} and MemAvailable) and a {a.timeout:g} s timeout.",
              "- ours: `python -m fp8onnx.compile det.onnx -o q.onnx --calib DIR FLAGS` (DIR holds one .npz "
              "feed per page); E4M3/E5M2 output is native ONNX Q/DQ, run by onnxruntime with "
              "ReluQuantRewrite, WeightBiasQuantization and ClipQuantRewrite disabled; E3M4 (no ONNX "
              "type) runs through fp8onnx.runtime.InferenceSession with the same rewrites disabled.",
              "- theirs: `quant_pre_process(det.onnx, pre.onnx, skip_symbolic_shape=True)` then "
              "`quantize_static(pre.onnx, out.onnx, reader, quant_format=QuantFormat.QDQ, "
              "activation_type=QuantType.QFLOAT8E4M3FN, weight_type=QuantType.QFLOAT8E4M3FN, "
              "calibrate_method=CalibrationMethod.Distribution)` (the only method onnxruntime accepts "
              "for FP8); the reader loads the same .npz files one per get_next().",
              "- OCR: the detector under test, rapidocr's DBPostProcess (thresh 0.3, box_thresh 0.5, "
              "unclip 1.6, dilation), perspective crops, FP32 PP-OCRv4 rec with CTC greedy decoding. Box "
              "texts go to the rendered line whose area holds the box centre, joined left to right. "
              "'lines = FP32': read exactly as with the FP32 detector; 'ignoring spaces': equal once "
              "spaces are removed; 'char acc vs truth': 1 - edit distance / length against the rendered "
              "line; 'median line IoU': per line, the lowest IoU of an FP32 box with its best match.",
              "- noise floor rows: the FP32 detector on the same pages moved by (dx, dy) pixels (white "
              "fill; boxes compared after moving them back), and FP32's own boxes grown by one pixel "
              "on every side, read by the recogniser with no detector in the loop. The recogniser is "
              "FP32 in every row, so every difference is a difference of box geometry: a box split, "
              "merged, lost or added (segmentation), or the same boxes a pixel or two apart (crop)."]
    for o in ours:
        ev = o["row"].get("eval")
        diff = [] if ev is None else [(f, g) for f, g in zip(fp32["lines"], ev["lines"]) if f != g]
        for f, g in diff[:2]:
            lines.append(f"- {o['label']} differs from FP32: `{f}` -> `{g}`")
        for r in o["runs"]:
            if r["rc"] != 0:
                lines.append(f"- fp8onnx {o['label']} failed: {r.get('error', '')}")
    for r in peer["pre"] + peer["q"]:
        if r["rc"] != 0:
            cause = (" = SIGKILL, not sent by this script: the kernel's OOM killer (the machine is shared)"
                     if r["rc"] == -9 and not r["timed_out"] else "")
            lines.append(f"- onnxruntime run failed (exit {r['rc']}{cause}; timed out: {r['timed_out']}, "
                         f"peak {r['peak_mb']:.0f} MB, {r['wall_s']:.0f} s); its stderr ends: {r.get('error', '')}")
    lines += ["", "Raw runs (JSON): " + json.dumps({
        "ours": {o["label"]: o["runs"] for o in ours},
        "ort_pre_process": peer["pre"], "ort_quantize_static": peer["q"]}, default=str)]
    return "\n".join(lines) + "\n"
