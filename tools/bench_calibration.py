"""Calibration benchmark: collection time vs plain inference, grouped passes, peak RSS.

    python tools/bench_calibration.py [--model ppocr_det] [--feeds 8] [--repeat 3]

Prints medians of --repeat runs and ratios, all measured side by side in one process.
Peak RSS: fresh subprocesses, one per (mode, sample count); the peak (VmHWM) is reset
via /proc/self/clear_refs after imports and one warm-up feed, so the figure is what the
collection itself adds. Modes: stream (one pass), grouped4 (max_bytes_per_run = a
quarter of one feed's fetched bytes), keep_all (every activation of every sample kept,
as a collect-then-reduce calibrator does).
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time


def _median_time(fn, repeat):
    out = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return statistics.median(out)


def _rss_child(model_name, n, mode):
    """Peak RSS (MB) of a fresh process collecting stats over n feeds."""
    import onnx
    import onnxruntime as ort

    from fp8onnx import zoo
    from fp8onnx.calibration import collect_stats

    e = zoo.get(model_name)
    m = e.load()
    feeds = list(e.calib_feeds(1)) * n
    names = [o for nd in m.graph.node if nd.op_type != "Constant" for o in nd.output]
    def status(key):
        with open("/proc/self/status") as f:
            return next(int(l.split()[1]) for l in f if l.startswith(key)) / 1024

    if mode == "stream":  # one-time costs (Numba, threads) before the peak is reset
        collect_stats(m, names, feeds[:1], progress=False)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # Linux: reset the peak RSS (VmHWM) to the current RSS
    base = status("VmRSS:")
    if mode == "stream":
        collect_stats(m, names, feeds, progress=False)
    elif mode == "grouped4":  # budget: a quarter of one feed's fetched bytes
        per_feed = sum(s.count for s in collect_stats(m, names, feeds[:1], progress=False).values()) * 4
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        base = status("VmRSS:")
        collect_stats(m, names, feeds, progress=False, max_bytes_per_run=per_feed // 4)
    else:  # what a keep-every-activation calibrator holds: all outputs of all samples
        mm = onnx.ModelProto()
        mm.CopyFrom(m)
        for nm in names:
            mm.graph.output.append(onnx.ValueInfoProto(name=nm))
        s = ort.InferenceSession(mm.SerializeToString(), providers=["CPUExecutionProvider"])
        kept = [s.run(names, f) for f in feeds]
        assert len(kept) == n
    print(status("VmHWM:") - base)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="ppocr_det")
    ap.add_argument("--feeds", type=int, default=8)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--rss-child", nargs=2, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.rss_child:
        return _rss_child(a.model, int(a.rss_child[0]), a.rss_child[1])

    import onnxruntime as ort

    from fp8onnx import zoo
    from fp8onnx.calibration import choose_amax, collect_stats

    e = zoo.get(a.model)
    m = e.load()
    feeds = list(e.calib_feeds(a.feeds))
    names = [o for nd in m.graph.node if nd.op_type != "Constant" for o in nd.output]
    res = {"model": a.model, "feeds": len(feeds), "tensors": len(names)}

    sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    res["plain_inference_s"] = _median_time(lambda: [sess.run(None, f) for f in feeds], a.repeat)
    stats = collect_stats(m, names, feeds, progress=False)
    res["collect_s"] = _median_time(lambda: collect_stats(m, names, feeds, progress=False), a.repeat)
    one_feed = sum(s.count for s in stats.values()) * 4 / len(feeds)
    res["fetched_MB_per_feed"] = one_feed / 2**20
    res["collect_grouped_4_s"] = _median_time(
        lambda: collect_stats(m, names, feeds, progress=False, max_bytes_per_run=int(one_feed / 4)),
        a.repeat)
    # ORT_ENABLE_BASIC instead of optimizations off, for the record of that choice.
    orig = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    try:
        collect_mod_ort = ort.GraphOptimizationLevel
        ort.GraphOptimizationLevel = type("G", (), {"ORT_DISABLE_ALL": collect_mod_ort.ORT_ENABLE_BASIC})
        res["collect_basic_opt_s"] = _median_time(
            lambda: collect_stats(m, names, feeds, progress=False), a.repeat)
    finally:
        ort.GraphOptimizationLevel = collect_mod_ort
    assert ort.GraphOptimizationLevel.ORT_DISABLE_ALL == orig
    for meth in ("max", "percentile", "mse", "kl"):
        t = _median_time(lambda: [choose_amax(s, meth, "e4m3") for s in stats.values()], a.repeat)
        res[f"{meth}_ms_per_tensor"] = 1e3 * t / len(stats)
    res["collect_over_inference"] = res["collect_s"] / res["plain_inference_s"]
    res["grouped4_over_single"] = res["collect_grouped_4_s"] / res["collect_s"]
    res["basic_over_disabled"] = res["collect_basic_opt_s"] / res["collect_s"]
    # keep_all at 8 feeds already takes ~3 GB on PP-OCR det: kept small on shared machines
    for mode, counts in (("stream", (4, 32, 128)), ("grouped4", (4, 32)), ("keep_all", (4, 8))):
        for n in counts:
            out = subprocess.run([sys.executable, __file__, "--model", a.model, "--rss-child",
                                  str(n), mode], capture_output=True, text=True, check=True)
            res[f"peak_rss_over_baseline_MB_{mode}_{n}"] = float(out.stdout.strip().splitlines()[-1])
    print(json.dumps({k: (round(v, 3) if isinstance(v, float) else v) for k, v in res.items()},
                     indent=1))


if __name__ == "__main__":
    main()
