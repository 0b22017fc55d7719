"""BatchNorm calibration then activation statistics: one staged run, or a second pass.

    python tools/bench_bn_stats.py [ppocr_det] [--samples 16] [--repeats 3] [--format e3m4]

With ``--bn-calib`` the compiler runs BatchNorm calibration's staged run over the
calibration data and then needs activation statistics of the corrected model. The staged
run can keep them as it goes (``BatchNormCalibration(probes=...)``, what the compiler
does) or a separate collection can run the data through the corrected model once more
(what it did before). This times both flows side by side on a zoo entry, alternating
their order, and prints the median seconds, their ratio and the largest relative
difference between the two flows' activation ranges (amax).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _HERE]


def flow(model, calib, fmt: str, staged: bool):
    """(seconds, stats) of BatchNorm calibration plus the activation statistics."""
    import onnx

    from fp8onnx import api, calibration
    from fp8onnx.passes import BatchNormCalibration
    from fp8onnx.planner import plan_quantization

    work = onnx.ModelProto()
    work.CopyFrom(model)  # prepare and the pass edit in place; the marker would skip every layer
    work = api.prepare(work)
    plan = plan_quantization(work, api.make_recipe(format=fmt))
    tensors = plan.activation_tensors()
    src = calibration.open_source(calib, work)
    t = time.perf_counter()
    bn = BatchNormCalibration(plan, src, progress=False, probes=tensors if staged else ())
    work = bn(work).model
    stats = calibration.collect_or_load(work, tensors, src, known=bn.stats, progress=False)
    return time.perf_counter() - t, stats


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("entry", nargs="?", default="ppocr_det")
    ap.add_argument("--samples", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--format", default="e3m4")
    a = ap.parse_args(argv)
    from fp8onnx import zoo

    e = zoo.get(a.entry)
    model, calib = e.load(), list(e.calib_feeds(a.samples))
    times = {True: [], False: []}
    stats = {}
    for r in range(a.repeats):
        for staged in ((True, False) if r % 2 else (False, True)):
            s, stats[staged] = flow(model, calib, a.format, staged)
            times[staged].append(s)
    worst = max(abs(stats[True][n].amax - st.amax) / max(st.amax, 1e-30) for n, st in stats[False].items())
    sep, stg = statistics.median(times[False]), statistics.median(times[True])
    print(f"{a.entry}, {len(calib)} feeds, {a.format}, median of {a.repeats}: separate pass {sep:.2f} s, "
          f"staged run {stg:.2f} s ({stg / sep:.2f}x); {len(stats[True])} tensors, "
          f"amax differs by {worst:.1e} at most (relative)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
