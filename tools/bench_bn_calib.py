"""Accuracy and cost of BatchNorm calibration, side by side in one run.

For each zoo entry and format, the model is compiled as the compiler does (prepare,
plan, [BatchNormCalibration], calibrate activations, insert Q/DQ) without and with the
pass in several settings, and each result is scored on the entry's held-out data:

    python tools/bench_bn_calib.py                                  # digits, E5M2/E4M3/E3M4
    python tools/bench_bn_calib.py --entries ppocr_cls ppocr_rec --calib-n 64 --eval-n 128

Rows: ``none`` (no BN calibration), ``default`` (layer by layer in one staged run, kept BN
statistics moved by the FP8 error), ``paper`` (the same with kept BN statistics
re-estimated, the paper's BN calibration), ``joint`` (2 passes measuring every layer at
once). Columns: metric, relative loss vs FP32, pass seconds (median of ``--repeat``),
passes over the data (a staged run counts once), mean per-layer output-MSE reduction
(layer by layer: what each layer's own correction removed, the layers above already
corrected; joint: against the uncorrected model).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

# keep tools/ off sys.path: a script here must not shadow an installed package numba imports.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]

from fp8onnx import zoo  # noqa: E402
from fp8onnx.api import compile_model, make_recipe, prepare
from fp8onnx.calibration import open_source
from fp8onnx.passes.bn_calibrate import BatchNormCalibration
from fp8onnx.planner import plan_quantization

SETTINGS = {
    "none": None,
    "default": dict(),                                 # layer by layer (staged), BN statistics matched
    "paper": dict(bn_mode="reestimate"),               # layer by layer, BN statistics re-estimated
    "joint": dict(sequential=False, iterations=2),     # every layer at once, 2 passes
}


def session_factory(fmt):
    if fmt == "e3m4":
        from fp8onnx.runtime import InferenceSession
        return InferenceSession
    return zoo.ort_session


def run(entry, fmt, setting, calib, eval_n, repeat):
    kwargs = SETTINGS[setting]
    seconds, passes, reduction = [], 0, float("nan")
    work = None
    for _ in range(repeat if kwargs is not None else 1):
        work = entry.load()
        work = prepare(work)
        if kwargs is not None:
            plan = plan_quantization(work, make_recipe(format=fmt))
            p = BatchNormCalibration(plan, open_source(calib, work), progress=False, **kwargs)
            t0 = time.perf_counter()
            p(work)
            seconds.append(time.perf_counter() - t0)
            passes = p.passes_run
            red = [c["mse_reduction"] for c in p.corrections]
            reduction = statistics.mean(red) if red else float("nan")
    q = compile_model(work, calibration=calib, format=fmt).model
    metric = entry.evaluate(q, n=eval_n, session_factory=session_factory(fmt))
    return metric, (statistics.median(seconds) if seconds else 0.0), passes, reduction


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--entries", nargs="+", default=["digits_cnn", "digits_cnn_bnfold"])
    ap.add_argument("--formats", nargs="+", default=["e5m2", "e4m3", "e3m4"])
    ap.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    ap.add_argument("--calib-n", type=int, default=256, help="calibration samples (digits: all 256)")
    ap.add_argument("--eval-n", type=int, default=None, help="evaluation samples (entry default)")
    ap.add_argument("--repeat", type=int, default=3, help="timed runs of the pass (median quoted)")
    args = ap.parse_args(argv)
    print(f"{'entry':18} {'fmt':5} {'setting':7} {'metric':>7} {'rel.loss':>9} {'pass s':>7} "
          f"{'passes':>6} {'mse red.':>8}")
    for name in args.entries:
        entry = zoo.get(name)
        try:
            entry.check_available()
        except zoo.ZooSkip as e:
            print(f"{name}: {e}")
            continue
        calib = list(entry.calib_feeds(args.calib_n))
        m32 = entry.evaluate(n=args.eval_n)
        print(f"{name:18} {'fp32':5} {'':7} {m32:7.4f}")
        for fmt in args.formats:
            for setting in args.settings:
                metric, sec, passes, red = run(entry, fmt, setting, calib, args.eval_n, args.repeat)
                print(f"{name:18} {fmt:5} {setting:7} {metric:7.4f} {zoo.relative_loss(m32, metric):9.4f} "
                      f"{sec:7.2f} {passes:6d} {red:8.3f}", flush=True)


if __name__ == "__main__":
    main()
