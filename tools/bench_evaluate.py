"""Benchmark: fp8onnx.evaluate's cost against plain inference, and a tuning run's trial log.

For each model (digits CNN on its 450 test images in batches of 50, PP-OCRv4 rec on 24
rendered text lines), compiled to E4M3, side by side in one run, the median over
``--reps`` runs of:

* plain:      create a session for the FP8 model (fp8onnx.evaluate.session_for) and run it
              on every feed (what "just run the FP8 model" costs);
* fidelity:   ``evaluate(float, fp8, data, per_layer=False)``: both models, output figures;
* per-layer:  ``evaluate(float, fp8, data)``: both models with every quantized tensor
              fetched and accumulated (SQNR, saturation, histograms).

Ratios are to ``plain``. With ``--tune``, also a tuning run on PP-OCRv4 rec with its task
metric (character accuracy against the rendered text), base format E5M2, printing the
trial log. Usage::

    python tools/bench_evaluate.py [--reps 5] [--skip-bench] [--tune] [--tune-target 0.002]
        [--tune-trials 10] [--tune-stages format op_type node] [--tune-sensitivity local]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import numpy as np

# The repository root replaces this folder on the path: a tools/ module named like a
# package would otherwise be shadowed for Numba.
sys.path[0] = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")

import fp8onnx  # noqa: E402
from fp8onnx.evaluation import PerSample, evaluate, session_for  # noqa: E402

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")


def digits():
    z = np.load(os.path.join(ROOT, "models", "data", "digits_test.npz"))
    feeds = [{"input": z["input"][i:i + 50]} for i in range(0, len(z["input"]), 50)]
    model = os.path.join(ROOT, "models", "digits_cnn.onnx")
    q = fp8onnx.compile(model, calibration=os.path.join(ROOT, "models", "data", "digits_calib.npz"))
    import onnx
    return "digits_cnn (450 images, batch 50)", onnx.load(model), q, feeds


def ppocr_rec(n=24):
    from fp8onnx import zoo

    e = zoo.get("ppocr_rec")
    model = e.load()
    q = fp8onnx.compile(model, calibration=list(e.calib_feeds(16)))
    return f"ppocr_rec ({n} text lines)", model, q, list(e.eval_feeds(n))


def plain(q, feeds):
    s = session_for(q)
    for f in feeds:
        s.run(None, f)


def bench(name, model, q, feeds, reps):
    fns = {"plain": lambda: plain(q, feeds),
           "fidelity": lambda: evaluate(model, q, feeds, per_layer=False),
           "per-layer": lambda: evaluate(model, q, feeds)}
    times = {k: [] for k in fns}
    for _ in range(reps):  # interleaved, so load changes on the machine hit every variant alike
        for k, fn in fns.items():
            t = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t)
    base = statistics.median(times["plain"])
    print(f"\n{name}: median of {reps} runs")
    for k, ts in times.items():
        med = statistics.median(ts)
        print(f"  {k:10s} {med:8.3f} s   x{med / base:5.2f}")


def tune_rec(target, trials, stages, sensitivity, n=24):
    from fp8onnx import zoo
    from fp8onnx.tune import tune
    from fp8onnx.zoo.ocr import char_accuracy

    e = zoo.get("ppocr_rec")
    model = e.load()
    decode = e.decoder()
    out = model.graph.output[0].name
    data = [dict(f, text=np.array(t)) for f, t in zip(e.eval_feeds(n), e.eval_texts(n))]
    metric = PerSample(lambda o, t: char_accuracy(decode(o[out]).strip(), str(t["text"])))
    r = tune(model, list(e.calib_feeds(16)), data, target_loss=target, metric=metric, max_trials=trials,
             base_recipe={"format": "e5m2"}, stages=stages, sensitivity=sensitivity)
    print(f"\ntuning ppocr_rec (character accuracy on {n} lines, base e5m2, target {target}, stages {stages}, sensitivity {sensitivity}):")
    print(r.summary_text())


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--tune", action="store_true")
    p.add_argument("--tune-target", type=float, default=0.002)
    p.add_argument("--tune-trials", type=int, default=10)
    p.add_argument("--tune-stages", nargs="+", default=["format", "op_type", "node"])
    p.add_argument("--tune-sensitivity", default="local", choices=["local", "accumulated"])
    p.add_argument("--skip-bench", action="store_true")
    args = p.parse_args()
    if not args.skip_bench:
        for make in (digits, ppocr_rec):
            bench(*make(), args.reps)
    if args.tune:
        tune_rec(args.tune_target, args.tune_trials, tuple(args.tune_stages), args.tune_sensitivity)


if __name__ == "__main__":
    main()
