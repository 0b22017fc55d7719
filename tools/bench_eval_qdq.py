"""Benchmark: evaluating a native FP8 Q/DQ model on onnxruntime's kernels vs fp8onnx's fused ones.

For each zoo entry, the model is compiled once (``--format``, default E4M3, emitted as
native QuantizeLinear/DequantizeLinear), then its task metric is evaluated side by side
in this process, ``--repeats`` rounds in alternating order (tools/_timing.py):

* ort:   ``entry.evaluate(q, session_factory=partial(zoo.ort_session, ort_qdq=True))``,
         onnxruntime's own FP8 Q/DQ kernels (what evaluation cost before);
* fused: ``entry.evaluate(q)``: the default ``zoo.ort_session``, which runs a copy
         rewritten by ``fp8onnx.passes.EmulateQDQ`` on fp8onnx.runtime.

Each evaluation includes creating its session (as every evaluation does). The script
prints the median seconds of each, the median of the per-round ratios ort/fused, and
checks that both give the same metric (the rewrite is bit-identical). Usage::

    python tools/bench_eval_qdq.py [NAMES ...] [--format e4m3] [--repeats 5] [-n N] [--calib-n 32]
"""
from __future__ import annotations

import argparse
import functools
import importlib.util
import statistics
import sys
import time
from pathlib import Path

_TOOLS = Path(__file__).resolve().parent
# The repository root replaces this folder on the path: a tools/ module named like a
# package would otherwise be shadowed for Numba.
sys.path[0] = str(_TOOLS.parent)

import fp8onnx  # noqa: E402
from fp8onnx import zoo  # noqa: E402


def _sibling(name: str):
    key = f"fp8onnx_tools_{name}"
    if key not in sys.modules:
        spec = importlib.util.spec_from_file_location(key, _TOOLS / f"{name}.py")
        sys.modules[key] = module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    return sys.modules[key]


def bench(name: str, fmt: str, repeats: int, n=None, calib_n: int = 32) -> dict:
    """Times of evaluating ``name`` compiled to ``fmt``: {"ort_s", "fused_s", "ratio", ...}."""
    timing = _sibling("_timing")
    entry = zoo.get(name)
    entry.check_available()
    t0 = time.perf_counter()
    q = fp8onnx.compile(entry.load(), calibration=list(entry.calib_feeds(calib_n)), format=fmt,
                        **entry.compile_options)
    compile_s = time.perf_counter() - t0
    data = q.SerializeToString()
    factories = [functools.partial(zoo.ort_session, ort_qdq=True), zoo.ort_session]
    metrics = [entry.evaluate(data, n=n, session_factory=f) for f in factories]  # warm-up (JIT, caches)
    rounds = timing.rotated_rounds([lambda f=f: entry.evaluate(data, n=n, session_factory=f)
                                    for f in factories], repeats, 1)
    ort_s = [r[0][0] for r in rounds]
    fused_s = [r[1][0] for r in rounds]
    return {"entry": name, "format": fmt, "n": n or entry.default_eval_n, "compile_s": compile_s,
            "metric_ort": metrics[0], "metric_fused": metrics[1],
            "ort_s": statistics.median(ort_s), "fused_s": statistics.median(fused_s),
            "ratio": statistics.median(a / b for a, b in zip(ort_s, fused_s)),
            "rounds_s": [[a, b] for a, b in zip(ort_s, fused_s)]}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("names", nargs="*", default=["ppocr_cls", "ddddocr_rec"])
    p.add_argument("--format", default="e4m3")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("-n", type=int, default=None, help="eval samples (default: per entry)")
    p.add_argument("--calib-n", type=int, default=32)
    args = p.parse_args(argv)
    print(f"{'entry':<14} {'fmt':<5} {'n':>4} {'ort s':>8} {'fused s':>8} {'ort/fused':>9}  metric (ort = fused)")
    same = True
    for name in args.names:
        r = bench(name, args.format, args.repeats, args.n, args.calib_n)
        ok = r["metric_ort"] == r["metric_fused"]
        same &= ok
        print(f"{name:<14} {args.format:<5} {r['n']:>4} {r['ort_s']:>8.2f} {r['fused_s']:>8.2f} "
              f"{r['ratio']:>8.2f}x  {r['metric_ort']:.6g} {'=' if ok else '!='} {r['metric_fused']:.6g}", flush=True)
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
