"""Accuracy-aware tuning of PP-OCRv4 detection with the OCR benchmark's own line metric.

``fp8onnx.tune`` from a base recipe, scoring each trial by the share of lines that the OCR
pipeline (tools/ocr_pipeline.py: the detector under test, rapidocr's DB post-processing,
FP32 PP-OCRv4 rec) reads exactly as with the FP32 detector, on *tuning* pages: calibration
split pages that ``tools/bench_ocr_calib.py`` does not use for statistics (its statistics
come from the first ``--calib-images`` pages; these are the next ``--tune-pages``). The
chosen model is then read on the benchmark's 240 held-out lines, the figure its 95% goal is
about, together with the base recipe and every single-node fallback the tuner kept.

    python tools/bench_ocr_tune.py [--target 0.03] [--trials 30] [--format e3m4 --weight-calib mse]

Prints each trial and the held-out line counts; writes nothing but a temporary folder.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

_TOOLS = Path(__file__).resolve().parent
# tools/ must not be on sys.path (a script here must not shadow an installed package):
# siblings are loaded by file path, as the other tools load them.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _TOOLS]


def _sibling(name: str):
    key = f"fp8onnx_tools_{name}"
    if key not in sys.modules:
        spec = importlib.util.spec_from_file_location(key, _TOOLS / f"{name}.py")
        sys.modules[key] = module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    return sys.modules[key]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--target", type=float, default=0.03,
                    help="relative loss on the tuning lines (0.03: 97%% of lines read as FP32)")
    ap.add_argument("--trials", type=int, default=30)
    ap.add_argument("--calib-images", type=int, default=8, help="statistics pages (the benchmark's)")
    ap.add_argument("--tune-pages", type=int, default=8, help="pages after them that score the trials")
    ap.add_argument("--eval-lines", type=int, default=240)
    ap.add_argument("--format", default="e3m4")
    ap.add_argument("--weight-calib", default="mse")
    a = ap.parse_args(argv)

    import onnx
    import onnxruntime as ort

    import fp8onnx
    from fp8onnx.runtime import InferenceSession

    pipe, scoring = _sibling("ocr_pipeline"), _sibling("bench_ocr_scoring")
    det = pipe.det_model_path()
    pages = pipe.render_pages("calib", n_pages=a.calib_images + a.tune_pages)
    stats_pages, tune_pages = pages[:a.calib_images], pages[a.calib_images:]
    inp = onnx.load(det).graph.input[0].name
    calib = [{inp: pipe.det_feed(p)} for p in stats_pages]
    ocr = pipe.PageOcr()
    fp32_session = ort.InferenceSession(det, providers=["CPUExecutionProvider"])
    ref = [line for p in tune_pages for line in ocr.read(fp32_session, p).lines]
    print(f"{len(ref)} tuning lines on {len(tune_pages)} pages", flush=True)

    def score(model) -> float:
        got = [line for p in tune_pages for line in ocr.read(InferenceSession(model), p).lines]
        return float(np.mean([g == r for g, r in zip(got, ref)]))

    base = {"format": a.format, "weight_calib_method": a.weight_calib}
    t0 = time.perf_counter()
    r = fp8onnx.tune(det, calib, [calib[0]], target_loss=a.target, score=score, max_trials=a.trials,
                     base_recipe=base)
    print(f"tuning: {time.perf_counter() - t0:.0f} s, target met: {r.met_target}", flush=True)
    for t in r.history:
        print(f"  trial {t.index:2d} {t.stage:13s} lines {100 * t.metric:5.1f}%  kept={t.kept}  "
              f"{json.dumps(t.delta)}", flush=True)

    eval_pages = pipe.render_pages("eval", n_lines=a.eval_lines)
    fp32 = scoring.evaluate(det, eval_pages, ocr, safe=False)
    chosen = r.history[min(range(len(r.history)), key=lambda i: r.history[i].loss)]
    kept_nodes = [t.delta.get("nodes", {}) for t in r.history if t.kept and t.stage == "node float"]
    candidates = [("base recipe", {})] + [(f"node fallbacks kept ({len(n)})", {"exclude": sorted(
        k.strip("^$").replace("\\.", ".") for k in n)}) for n in kept_nodes]
    with tempfile.TemporaryDirectory(prefix="bench_ocr_tune_") as work:
        out = os.path.join(work, "tuned.onnx")
        onnx.save(r.model, out)
        ev = scoring.evaluate(out, eval_pages, ocr, safe=True)
        print(f"held out, tuner's choice (trial {chosen.index}, {json.dumps(chosen.delta)}): "
              f"{sum(g == f for g, f in zip(ev['lines'], fp32['lines']))}/{len(fp32['lines'])}", flush=True)
        for label, extra in candidates:
            m = fp8onnx.compile_model(det, calibration=calib, **base, **extra).model
            path = os.path.join(work, "candidate.onnx")
            onnx.save(m, path)
            ev = scoring.evaluate(path, eval_pages, ocr, safe=True)
            print(f"held out, {label} {extra.get('exclude', '')}: "
                  f"{sum(g == f for g, f in zip(ev['lines'], fp32['lines']))}/{len(fp32['lines'])}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
